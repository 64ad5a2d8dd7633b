"""Workdirs and data in a bucket: a run whose workdir and shards are `gs://` URLs trains, checkpoints, resumes
and is restored for evaluation exactly as a local one, with nothing written to a local folder. The bucket is the
local fake in fake_gcs.py, reached through the same APIs as the real GCS (etils.epath, TensorStore, Orbax)."""

import os
import shutil

import numpy as np
import pytest

from devstral_jax.train.config import sibling_config
from devstral_jax.train.metrics_log import read_metrics
from devstral_jax.train.trainer import restore_trained_model, train
from tests.fake_gcs import fake_gcs
from tests.test_checkpoint_choice import _lora

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data, **train_settings):
    config = sibling_config(os.path.join(ROOT, "configs", "x.py"), "tiny_cpu")
    config.model.num_layers = 1
    config.data.seq_len, config.data.batch_size = 32, 8
    config.data.train_paths = config.data.validation_paths = (data,)
    config.train.update(dict(steps=4, loss_chunk=32, log_every=1, eval_every=2, eval_batches=1, checkpoint_every=2,
                             async_checkpoint=False))
    config.optim.warmup_steps = 1
    config.train.update(train_settings)
    return config


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """The fake GCS serving tmp_path/gcs, with the sample shard at gs://bucket/data/shard.jsonl; the working
    directory is an empty folder, where a URL mistaken for a local path would land."""
    os.makedirs(tmp_path / "gcs" / "bucket" / "data")
    shutil.copy(os.path.join(ROOT, "devstral_jax", "data", "sample", "sample.jsonl"),
                tmp_path / "gcs" / "bucket" / "data" / "shard.jsonl")
    os.makedirs(tmp_path / "cwd")
    monkeypatch.chdir(tmp_path / "cwd")
    with fake_gcs(str(tmp_path / "gcs")):
        yield tmp_path / "gcs" / "bucket"


def test_a_run_in_a_bucket_trains_resumes_and_restores_like_a_local_run(bucket, tmp_path):
    local = train(_config(str(bucket / "data" / "shard.jsonl")), str(tmp_path / "local"))

    data = "gs://bucket/data/shard.jsonl"
    train(_config(data, stop_at=2), "gs://bucket/run")
    resumed = train(_config(data), "gs://bucket/run")

    assert os.listdir(".") == []  # nothing under the working directory (os.path.abspath("gs://...") would)
    assert sorted(resumed.losses) == [3, 4] and resumed.losses[4] == local.losses[4]  # resumed, bitwise
    run = bucket / "run"
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
    assert (run / "checkpoints" / "4" / "integrity.json").is_file()
    assert [r["step"] for r in read_metrics("gs://bucket/run/metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    model, _, meta = restore_trained_model("gs://bucket/run", "latest")
    local_model, _, _ = restore_trained_model(str(tmp_path / "local"), "latest")
    assert meta["checkpoint"]["step"] == 4
    assert all(np.array_equal(a, b) for a, b in zip(_lora(model), _lora(local_model)))
