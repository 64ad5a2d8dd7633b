"""`--checkpoint=best|latest|<step>`: evaluation, export and generation restore the checkpoint asked for (by default
the one with the best validation loss), say which one, and refuse a step that does not exist or a best that was
never recorded."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from devstral_jax.checkpoint import Checkpointer
from devstral_jax.errors import CheckpointError
from devstral_jax.train.trainer import restore_trained_model, train
from tests.test_checkpoint_integrity import _config as integrity_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSSES = {1: 2.0, 2: 1.0, 3: 1.5}  # step 2 is the best, step 3 the latest


def _saved(directory, losses=LOSSES) -> Checkpointer:
    checkpointer = Checkpointer(directory, async_save=False, keep_last=len(losses))
    for step, loss in losses.items():
        checkpointer.save(step, {"w": jax.numpy.full((8,), float(step))}, {"pos": step}, {"step": step},
                          eval_loss=loss)
    return checkpointer


def test_best_latest_and_a_step_number_choose_their_checkpoint(tmp_path):
    with _saved(tmp_path / "checkpoints") as checkpointer:
        assert checkpointer.chosen_step("best") == (2, "step 2, the best validation loss (1.0000)")
        assert checkpointer.chosen_step("latest") == (3, "step 3, the latest")
        assert checkpointer.chosen_step("1") == (1, "step 1 (asked for)")


def test_a_damaged_best_checkpoint_gives_way_to_the_next_best(tmp_path):
    _saved(tmp_path / "checkpoints").close()
    data = max((p for p in (tmp_path / "checkpoints" / "2").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:-1])
    with Checkpointer(tmp_path / "checkpoints", read_only=True) as checkpointer:
        assert checkpointer.chosen_step("best")[0] == 3  # loss 1.5, then step 1's 2.0


@pytest.mark.parametrize("asked, message", [("7", "There is no checkpoint step 7"), ("newest", "Unknown checkpoint"),
                                            ("best", "no best one")])
def test_user_mistakes_are_checkpoint_errors(tmp_path, asked, message):
    losses = {1: None, 2: None} if asked == "best" else LOSSES  # saved without evaluating
    with _saved(tmp_path / "checkpoints", losses) as checkpointer, pytest.raises(CheckpointError, match=message):
        checkpointer.chosen_step(asked)


def _config(root):
    """The smallest demo run of test_checkpoint_integrity, evaluated at every step, with a learning rate that
    overshoots so that the validation loss rises after its first step."""
    config = integrity_config(root, steps=3, eval_every=1, keep_checkpoints=3)
    config.optim.learning_rate = 50.0
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("choice")
    shutil.copy(os.path.join(ROOT, "devstral_jax", "data", "sample", "sample.jsonl"), root / "shard.jsonl")
    result = train(_config(root), str(root / "run"))
    return root / "run", result.eval_losses


def _lora(model) -> list[np.ndarray]:
    from flax import nnx

    from devstral_jax.lora import LoRAParam
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, LoRAParam))]


def test_a_trained_run_restores_its_best_step_by_default(workdir):
    run, eval_losses = workdir
    best = min(eval_losses, key=eval_losses.get)
    assert best != max(eval_losses), eval_losses  # the run overshot: its best step is not its last
    model, _, meta = restore_trained_model(str(run))
    assert meta["checkpoint"]["step"] == best and meta["checkpoint"]["eval_loss"] == pytest.approx(eval_losses[best])
    latest, _, latest_meta = restore_trained_model(str(run), "latest")
    assert latest_meta["checkpoint"]["step"] == max(eval_losses)
    assert any(not np.array_equal(a, b) for a, b in zip(_lora(model), _lora(latest)))


def _generate(run, *flags):
    return subprocess.run([sys.executable, "launch/generate.py", "--config=configs/tiny_cpu.py", f"--workdir={run}",
                           "--config.generate.max_new_tokens=2", *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_generate_says_which_checkpoint_it_used_and_refuses_an_unknown_step(workdir):
    run, eval_losses = workdir
    best = min(eval_losses, key=eval_losses.get)
    result = _generate(run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint step {best}, the best validation loss ({eval_losses[best]:.4f}) of {run}" in result.stdout
    result = _generate(run, "--checkpoint=99")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "There is no checkpoint step 99" in result.stderr
