"""Shared by the training tests: a tiny QLoRA config, its model pieces, and deterministic packed batches."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from devstral_jax import sharding
from devstral_jax.config import from_config_dict, preset, to_config_dict
from devstral_jax.train.config import default_config
from devstral_jax.train.optim import make_optimizer
from devstral_jax.train.step import init_state, jit_train_step, make_train_step
from devstral_jax.train.trainer import build_model

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

