"""Shared by the training tests: a tiny QLoRA config, its model pieces, and deterministic packed batches."""

from __future__ import annotations

import json
import os
from typing import Callable

import grain
import jax
import ml_collections
import numpy as np

from devstral_jax import sharding
from devstral_jax.config import from_config_dict, preset, to_config_dict
from devstral_jax.train.config import default_config, sibling_config
from devstral_jax.train.metrics_log import read_metrics
from devstral_jax.train.optim import make_optimizer
from devstral_jax.train.step import init_state, jit_train_step, make_train_step
from devstral_jax.train.trainer import build_model, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "devstral_jax", "data", "sample", "sample.jsonl")

VOCAB = 512


def tiny_config(**train) -> ml_collections.ConfigDict:
    config = default_config()
    config.model = to_config_dict(preset(
        "tiny", vocab_size=VOCAB, dtype="float32", remat_policy="none", head_dim=32, attn_storage="nf4",
        mlp_storage="nf4", lora_rank=4, lora_alpha=8.0))
    config.data.seq_len = 32
    config.data.batch_size = 8
    config.train.loss_chunk = 16
    config.optim.learning_rate = 1e-2
    config.optim.warmup_steps = 1
    config.train.update(train)
    return config


def straight_and_resumed(workdir: str,
                         data: Callable[[ml_collections.ConfigDict], None]) -> dict[str, dict[int, dict]]:
    """Trains configs/tiny_cpu.py (one layer) 6 steps on the shipped sample with `data` applied to its config,
    straight through, and again stopped at step 3 and resumed from its checkpoint: {"straight" | "resumed":
    {step: that step's metrics record}}."""
    def config(**train_overrides) -> ml_collections.ConfigDict:
        c = sibling_config(os.path.join(ROOT, "configs", "x.py"), "tiny_cpu")
        c.model.num_layers = 1
        c.data.update(seq_len=64, batch_size=8, train_paths=(SAMPLE,), validation_paths=(SAMPLE,))
        data(c)
        c.train.update(steps=6, loss_chunk=64, log_every=1, eval_every=6, eval_batches=1, checkpoint_every=3,
                       async_checkpoint=False, **train_overrides)
        return c

    train(config(), os.path.join(workdir, "straight"))
    train(config(stop_at=3), os.path.join(workdir, "resumed"))
    train(config(), os.path.join(workdir, "resumed"))
    return {run: {r["step"]: r for r in read_metrics(os.path.join(workdir, run, "metrics.jsonl")) if "loss" in r}
            for run in ("straight", "resumed")}


def assert_resumes_exactly(dataset: Callable[[], grain.IterDataset], straight: list[dict], cut: int) -> None:
    """An iterator of `dataset()` moved `cut` batches, its state saved as a checkpoint stores it (JSON) and restored
    into a fresh iterator, gives the rest of `straight` (the batches of an uninterrupted one) exactly."""
    first = iter(dataset())
    for _ in range(cut):
        next(first)
    resumed = iter(dataset())
    resumed.set_state(json.loads(json.dumps(first.get_state())))
    for expected in straight[cut:]:
        got = next(resumed)
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


def packed_batch(seed: int, rows: int, seq: int, microbatches: int = 1) -> dict[str, np.ndarray]:
    """Random rows each holding two documents (segment ids 1, 2, positions restarting) and a padded tail."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(3, VOCAB, (rows, seq), dtype=np.int32)
    targets = rng.integers(3, VOCAB, (rows, seq), dtype=np.int32)
    cut, end = seq // 3, seq - 3
    segment_ids = np.zeros((rows, seq), np.int32)
    segment_ids[:, :cut], segment_ids[:, cut:end] = 1, 2
    positions = np.where(segment_ids == 2, np.arange(seq) - cut, np.arange(seq)) * (segment_ids > 0)
    batch = dict(inputs=inputs, targets=targets, loss_mask=(segment_ids > 0).astype(np.int32),
                 segment_ids=segment_ids, positions=positions.astype(np.int32))
    return {k: v.reshape(microbatches, rows // microbatches, seq) for k, v in batch.items()}


def step_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, initial state, frozen base, graphdef) for `config` on `mesh`."""
    model_config = from_config_dict(config.model)
    graphdef, lora, frozen, _ = build_model(config, model_config, mesh)
    tx, schedule = make_optimizer(config.optim, lora, model_config.num_layers, config.train.steps)
    state = init_state(lora, tx, config.seed)
    step, state_shardings = jit_train_step(
        make_train_step(graphdef, tx, schedule, config.train.loss_chunk, model_config.lora_dropout > 0),
        state, frozen, mesh)
    return step, jax.device_put(state, state_shardings), frozen, graphdef


place = sharding.place_batch


def lora_arrays(state) -> list[np.ndarray]:
    return [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(state.lora)]

