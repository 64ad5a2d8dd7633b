"""launch/train.py end to end: exact resume after SIGKILL, SIGTERM, interrupted saves, stages, bad input."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from devstral_jax.checkpoint import Checkpointer
from devstral_jax.errors import CheckpointError
from devstral_jax.train.metrics_log import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo config, shrunk: 1 layer, 4 rows of 64 tokens, every step logged.
SMALL = ["--config.model.num_layers=1", "--config.data.seq_len=64", "--config.data.batch_size=4",
         "--config.train.loss_chunk=64", "--config.train.log_every=1", "--config.train.eval_every=4",
         "--config.train.eval_batches=1", "--config.train.checkpoint_every=2", "--config.optim.warmup_steps=2"]


ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's run


def _train_cmd(workdir, *flags):
    return [sys.executable, os.path.join(ROOT, "launch", "train.py"), "--config=configs/tiny_cpu.py",
            f"--workdir={workdir}", *SMALL, *flags]


def _run(workdir, *flags, check=True):
    result = subprocess.run(_train_cmd(workdir, *flags), cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=ENV)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _per_step(workdir, key):
    values = {}
    for record in read_metrics(os.path.join(workdir, "metrics.jsonl")):
        if key in record:
            values[record["step"]] = record[key]  # a resumed run's re-done steps overwrite
    return values


def test_sigkill_then_resume_repeats_the_uninterrupted_run_bit_for_bit(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = _run(straight, "--config.train.steps=8")
    # Orbax's per-checkpoint INFO chatter (thread, rename and throughput lines) stays out of the log.
    assert not re.search(r"^I\d{4} .*(checkpoint_manager|atomicity|async_io_engine)\.py:\d+\]", result.stderr, re.M)
    # The outputs a user looks at: per-step metrics, validation loss, TensorBoard events, the loss curve.
    records = read_metrics(str(straight / "metrics.jsonl"))
    assert {"loss", "grad_norm", "learning_rate", "tokens_per_s", "batch_crc32"} <= set(records[0])
    assert any("eval_loss" in r and "eval_perplexity" in r for r in records)
    assert list((straight / "tensorboard").glob("events.out.tfevents.*"))
    assert (straight / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    process = subprocess.Popen(_train_cmd(killed, "--config.train.steps=8"), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and max((r["step"] for r in read_metrics(str(metrics))), default=0) >= 5:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed_from = Checkpointer(killed / "checkpoints").latest_step()
    assert resumed_from is not None and resumed_from < 8
    _run(killed, "--config.train.steps=8")

    expected_loss, got_loss = _per_step(straight, "loss"), _per_step(killed, "loss")
    expected_data, got_data = _per_step(straight, "batch_crc32"), _per_step(killed, "batch_crc32")
    for step in range(5, 9):
        assert got_loss[step] == expected_loss[step], step  # bitwise
        assert got_data[step] == expected_data[step], step  # the same batch: none skipped or repeated
    assert sorted(got_data) == list(range(1, 9))


def test_sigterm_saves_and_stops_cleanly_then_resumes(tmp_path):
    workdir = tmp_path / "run"
    process = subprocess.Popen(_train_cmd(workdir, "--config.train.steps=16", "--config.train.checkpoint_every=100"),
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = workdir / "metrics.jsonl"
    while process.poll() is None and not (metrics.exists() and read_metrics(str(metrics))):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM" in out
    saved = Checkpointer(workdir / "checkpoints").latest_step()
    assert saved is not None and 0 < saved < 16  # saved although checkpoint_every=100
    result = _run(workdir, "--config.train.steps=16", "--config.train.checkpoint_every=100")
    assert "trained to step 16" in result.stdout


def test_interrupted_save_restores_the_previous_complete_step(tmp_path):
    checkpointer = Checkpointer(tmp_path, async_save=False)
    state = {"w": jax.numpy.arange(4.0)}
    checkpointer.save(1, state, {"pos": 1}, {"run": "x"})
    checkpointer.save(2, {"w": state["w"] + 1}, {"pos": 2}, {"run": "x"})
    checkpointer.close()
    # A save that died midway leaves only Orbax's temporary directory behind.
    partial = tmp_path / "3.orbax-checkpoint-tmp-1732000000000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 100)
    reopened = Checkpointer(tmp_path, async_save=False)
    assert reopened.latest_step() == 2
    restored, data, _ = reopened.restore({"w": jax.ShapeDtypeStruct((4,), np.float32)})
    np.testing.assert_array_equal(restored["w"], np.arange(4.0) + 1)
    assert data == {"pos": 2}


def test_keeps_the_last_n_and_the_best_eval_checkpoint(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep_last=2, async_save=False)
    for step, eval_loss in [(1, 3.0), (2, 1.0), (3, 2.5), (4, 2.0), (5, 2.2)]:
        checkpointer.save(step, {"w": jax.numpy.zeros(2)}, {}, {}, eval_loss=eval_loss)
    checkpointer.wait()
    assert checkpointer.all_steps() == [2, 4, 5]
    assert checkpointer.best_step() == 2


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def test_a_checkpoint_of_other_settings_is_a_clear_error_and_its_adapters_restore_alone(tmp_path):
    """Restoring into a state of other shapes or another optimizer chain is a CheckpointError naming the difference;
    the adapters alone (what evaluation, export and the next stage read) restore whatever optimizer sat beside them."""
    lora = {"a": jax.numpy.arange(6.0).reshape(2, 3)}
    adamw = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    with Checkpointer(tmp_path, async_save=False) as checkpointer:
        checkpointer.save(1, {"lora": lora, "opt_state": adamw.init(lora)}, {"pos": 1}, {"run": "x"})
    wider = {"a": jax.numpy.zeros((2, 4))}
    scaled = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3), optax.stateless(lambda u, p: u))
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        with pytest.raises(CheckpointError, match=r"step 1 .*\(lora/a: saved \(2, 3\), this run \(2, 4\); and 2 more"):
            checkpointer.restore(_abstract({"lora": wider, "opt_state": adamw.init(wider)}))
        with pytest.raises(CheckpointError, match=r"does not hold the state this run builds \(the same arrays in an"):
            checkpointer.restore(_abstract({"lora": lora, "opt_state": scaled.init(lora)}))
        part, meta = checkpointer.restore_part({"lora": _abstract(lora)})
    np.testing.assert_array_equal(part["lora"]["a"], np.arange(6.0).reshape(2, 3))
    assert meta == {"run": "x"}
    with pytest.raises(CheckpointError, match="No checkpoint directory at"):
        Checkpointer(tmp_path / "absent", read_only=True)
    assert not (tmp_path / "absent").exists()  # reading never creates


def test_a_stage_starts_from_the_previous_stages_adapters(tmp_path):
    config = tmp_path / "two_stages.py"
    config.write_text(f'''
import ml_collections
from devstral_jax.train.config import sibling_config
def get_config():
    config = sibling_config("{ROOT}/configs/x.py", "tiny_cpu")
    # Stage two's optimizer is another chain (layer_lr_decay adds a stateless scale): only the adapters carry over.
    config.stages = (ml_collections.ConfigDict(dict(name="one", train=dict(steps=2))),
                     ml_collections.ConfigDict(dict(name="two", train=dict(steps=4),
                                                    optim=dict(learning_rate=0.0, layer_lr_decay=0.5))))
    return config
''')
    result = subprocess.run([sys.executable, "launch/train.py", f"--config={config}", f"--workdir={tmp_path / 'run'}",
                             *SMALL], cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    from devstral_jax.train.trainer import restore_trained_model
    one, _, _ = restore_trained_model(str(tmp_path / "run" / "one"))
    two, _, _ = restore_trained_model(str(tmp_path / "run" / "two"))
    from flax import nnx

    from devstral_jax.lora import LoRAParam
    first, second = jax.tree.leaves(nnx.state(one, LoRAParam)), jax.tree.leaves(nnx.state(two, LoRAParam))
    assert any(np.any(np.asarray(b) != 0) for b in first)  # stage one trained its adapters ...
    for a, b in zip(first, second):  # ... and stage two (learning rate 0) carried them over unchanged
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("flag, message", [
    ("--config.train.stepz=3", 'Did you mean "steps"'),
    ("--config.mesh.data=3", "does not divide the 1 devices"),
    ("--config.data.microbatches=3", "batch_size 4 must divide into 3 microbatches"),
    ("--config.train.loss_chunk=48", "not a multiple of train.loss_chunk=48"),
    ("--config.data.train_paths=('/nonexistent/shards',)", "No training shards at '/nonexistent/shards'"),
])
def test_bad_input_is_a_one_line_error_and_leaves_no_state(tmp_path, flag, message):
    workdir = tmp_path / "run"
    result = _run(workdir, "--config.train.steps=2", flag, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")


def test_empty_shard_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = _run(tmp_path / "run", f"--config.data.train_paths=('{empty}',)", check=False)
    assert result.returncode != 0 and f"Training shard {empty} is empty" in result.stderr
    assert "Traceback" not in result.stderr
