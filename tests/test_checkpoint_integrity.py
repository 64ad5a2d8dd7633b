"""Verified checkpoints: a corrupted step is passed over for the newest step that verifies, retention never
deletes the newest verified step, a resume with other settings is refused by name, and a dead run stops."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers

from devstral_jax.checkpoint import MANIFEST, Checkpointer, write_manifest
from devstral_jax.config import preset, to_hf_config
from devstral_jax.errors import CheckpointError, ConfigError, TrainingError
from devstral_jax.train.config import sibling_config
from devstral_jax.train.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSTRACT = {"w": jax.ShapeDtypeStruct((64,), np.float32)}


def _saved(directory, steps=(1, 2, 3), **kwargs) -> Checkpointer:
    """Steps whose `w` is the step number everywhere and whose data position is the step."""
    checkpointer = Checkpointer(directory, async_save=False, **kwargs)
    for step in steps:
        checkpointer.save(step, {"w": jax.numpy.full((64,), float(step))}, {"pos": step}, {"step": step})
    return checkpointer


def _files(step_dir):
    return sorted(os.path.relpath(os.path.join(root, name), step_dir)
                  for root, _, names in os.walk(step_dir) for name in names if name != MANIFEST)


def _flip_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-1])


CORRUPTIONS = {"bit-flipped": _flip_bit, "truncated": _truncate, "deleted": os.remove}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_any_damaged_file_of_the_latest_step_falls_back_to_the_previous_one(tmp_path, kind, caplog):
    _saved(tmp_path / "good").close()
    names = _files(tmp_path / "good" / "3")
    assert len(names) > 10 and any("ocdbt" in name for name in names)  # the array data, its index, Orbax's metadata
    for name in names:
        directory = tmp_path / kind / name.replace("/", "_")
        shutil.copytree(tmp_path / "good", directory)
        if (directory / "3" / name).stat().st_size == 0 and kind != "deleted":
            continue  # an empty file has no byte to damage
        CORRUPTIONS[kind](directory / "3" / name)
        caplog.clear()
        with caplog.at_level(logging.WARNING), Checkpointer(directory, read_only=True) as checkpointer:
            state, data, meta = checkpointer.restore(ABSTRACT)
        np.testing.assert_array_equal(state["w"], np.full(64, 2.0))
        assert (data, meta) == ({"pos": 2}, {"step": 2}), name
        [line] = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
        assert f"step 3 of {directory} is unusable: {name}" in line and "trying step 2" in line, line


def test_a_missing_or_damaged_manifest_is_not_verified(tmp_path, caplog):
    _saved(tmp_path).close()
    (tmp_path / "3" / MANIFEST).unlink()  # killed between Orbax's commit and the manifest
    (tmp_path / "2" / MANIFEST).write_text("{not json")
    with caplog.at_level(logging.WARNING), Checkpointer(tmp_path, read_only=True) as checkpointer:
        assert checkpointer.restore(ABSTRACT)[1] == {"pos": 1}
    text = caplog.text
    assert "step 3" in text and "it has no integrity manifest" in text
    assert "step 2" in text and "its integrity manifest is unreadable" in text


def test_an_unreadable_step_whose_manifest_matches_falls_back_too(tmp_path, caplog):
    """Damage that happened before the manifest was written: the hashes agree, TensorStore's read fails."""
    _saved(tmp_path).close()
    for name in _files(tmp_path / "3"):
        if "/d/" in name:
            _truncate(tmp_path / "3" / name)
    write_manifest(str(tmp_path / "3"))
    with caplog.at_level(logging.WARNING), Checkpointer(tmp_path, read_only=True) as checkpointer:
        assert checkpointer.restore(ABSTRACT)[1] == {"pos": 2}
    assert "step 3" in caplog.text and "it cannot be read" in caplog.text


def test_nothing_usable_or_a_damaged_step_asked_for_is_one_clear_error(tmp_path):
    _saved(tmp_path, steps=(1, 2)).close()
    _flip_bit(next((tmp_path / "2").rglob("manifest.ocdbt")))
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        with pytest.raises(CheckpointError, match=r"No usable checkpoint in .*\(step 2: state/.*manifest.ocdbt does "
                                                  r"not match its recorded hash"):
            checkpointer.restore(ABSTRACT, step=2)  # asked for by number: no fallback
        (tmp_path / "1" / "meta" / "metadata").unlink()
        with pytest.raises(CheckpointError, match=r"step 2: .*; step 1: meta/metadata is missing\)"):
            checkpointer.restore(ABSTRACT)


def test_retention_keeps_the_newest_verified_step_until_a_newer_one_verifies(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep_last=1, async_save=True)
    checkpointer.save(1, {"w": jax.numpy.ones(64)}, {}, {})
    checkpointer.wait()
    assert checkpointer.all_steps() == [1] and (tmp_path / "1" / MANIFEST).exists()
    checkpointer.save(2, {"w": jax.numpy.ones(64)}, {}, {})
    assert 1 in checkpointer.all_steps()  # step 2 may still be committing: step 1 stays until it has verified
    checkpointer.wait()
    assert checkpointer.all_steps() == [2] and (tmp_path / "2" / MANIFEST).exists()
    checkpointer.close()


def test_a_step_passed_over_at_resume_is_set_aside_and_saved_anew(tmp_path):
    checkpointer = _saved(tmp_path)
    checkpointer.set_aside_after(1)
    assert checkpointer.all_steps() == [1]
    aside = sorted(os.listdir(tmp_path / "rejected"))  # nothing deleted: the unusable steps are kept for a look
    assert [name.split("-")[0] for name in aside] == ["2", "3"]
    checkpointer.save(2, {"w": jax.numpy.full((64,), 7.0)}, {"pos": 7}, {})  # Orbax would skip an existing step
    checkpointer.close()
    with Checkpointer(tmp_path, read_only=True) as reopened:
        assert reopened.all_steps() == [1, 2] and reopened.restore(ABSTRACT)[1] == {"pos": 7}


# --- the trainer ---------------------------------------------------------------------------------------------

def _config(root, **train):
    """The demo config at its smallest (1 layer, 8 rows of 32 tokens, a checkpoint every step), trained on the
    shard in `root`."""
    config = sibling_config(os.path.join(ROOT, "configs", "x.py"), "tiny_cpu")
    config.model.num_layers = 1
    config.data.seq_len, config.data.batch_size = 32, 8  # a row for each of the 8 test devices
    config.data.train_paths = (str(root / "shard.jsonl"),)
    config.train.update(dict(steps=4, loss_chunk=32, log_every=1, eval_every=100, eval_batches=1,
                             checkpoint_every=1, keep_checkpoints=2))
    config.optim.warmup_steps = 1
    config.train.update(train)
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 4-step run, and one stopped at step 3 (checkpoints 2 and 3), on a shard of their own."""
    root = tmp_path_factory.mktemp("runs")
    shutil.copy(os.path.join(ROOT, "devstral_jax", "data", "sample", "sample.jsonl"), root / "shard.jsonl")
    straight = train(_config(root), str(root / "straight"))
    train(_config(root, stop_at=3), str(root / "stopped"))
    return root, straight.losses[4]


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_run_resumed_over_a_damaged_latest_step_ends_bitwise_like_an_uninterrupted_one(runs, tmp_path, kind,
                                                                                       caplog):
    root, final_loss = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "stopped", workdir)
    data = max((p for p in (workdir / "checkpoints" / "3").rglob("*") if "/d/" in str(p)), key=lambda p: p.stat().st_size)
    CORRUPTIONS[kind](data)
    with caplog.at_level(logging.WARNING):
        result = train(_config(root), str(workdir))
    assert "Checkpoint step 3 of" in caplog.text and "trying step 2" in caplog.text
    assert sorted(result.losses) == [3, 4]  # step 3 redone from step 2
    assert result.losses[4] == final_loss  # bitwise
    assert os.listdir(workdir / "checkpoints" / "rejected")


def test_resuming_with_settings_that_change_the_run_is_refused_by_name(runs, tmp_path):
    root, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "stopped", workdir)
    changed = _config(root, steps=6)
    changed.data.seq_len = 64
    changed.train.loss_chunk = 64  # never fingerprinted: how the loss is chunked, not what it is
    changed.model.lora_rank = 8
    with pytest.raises(CheckpointError) as refused:
        train(changed, str(workdir))
    message = str(refused.value)
    assert "\n" not in message and f"Cannot resume {workdir} from step 3" in message
    assert "data.seq_len (32 -> 64); model.lora_rank (16 -> 8); train.steps (4 -> 6)" in message
    assert "--config.train.allow_changes=data.seq_len,model.lora_rank,train.steps" in message
    assert "loss_chunk" not in message

    shard = root / "shard.jsonl"  # the same path, other contents
    original = shard.read_bytes()
    lines = original.splitlines(keepends=True)
    try:
        shard.write_bytes(b"".join(lines[1:] + lines[:1]))
        with pytest.raises(CheckpointError, match=r"from step 3: data.train_shards \(other file contents\) differ"):
            train(_config(root), str(workdir))
    finally:
        shard.write_bytes(original)

    with pytest.raises(ConfigError, match=r"train.allow_changes names \['train.stepz'\]"):
        train(_config(root, allow_changes="train.stepz"), str(workdir))
    assert train(_config(root, steps=5, allow_changes="train.steps"), str(workdir)).last_step == 5


def test_a_model_stuck_at_the_uniform_loss_with_no_gradient_stops_with_an_explanation(tmp_path):
    """A base whose final norm is zeroed outputs the same logits for every input: nothing can be learnt."""
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(transformers.MistralConfig(
        **to_hf_config(preset("tiny", num_layers=1), torch_dtype="float32")))
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(tmp_path / "base")
    shutil.copy(os.path.join(ROOT, "devstral_jax", "data", "sample", "sample.jsonl"), tmp_path / "shard.jsonl")
    config = _config(tmp_path, steps=10, dead_steps=3, checkpoint_every=100)
    config.base = str(tmp_path / "base")
    with pytest.raises(TrainingError, match=r"The loss has been 11\.7835 = log\(vocab_size\), the uniform "
                                            r"distribution, with a zero gradient for 3 steps \(to step 3\)"):
        train(config, str(tmp_path / "run"))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
