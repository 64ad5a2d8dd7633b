"""The optimizer: AdamW with masked weight decay, global-norm clipping, a warmup + decay schedule and
per-layer learning-rate multipliers (discriminative fine-tuning: lower layers move less)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from devstral_jax.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `cfg.learning_rate` over `cfg.warmup_steps`, then `cfg.schedule`:
    cosine or linear decay to `cfg.end_learning_rate_ratio` of the peak at `total_steps`, or constant."""
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={cfg.schedule!r} is not one of {SCHEDULES}.")
    peak, warmup = cfg.learning_rate, min(cfg.warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    end = peak * cfg.end_learning_rate_ratio
    after = {
        "cosine": optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_learning_rate_ratio),
        "linear": optax.linear_schedule(peak, end, decay_steps),
        "constant": optax.constant_schedule(peak),
    }[cfg.schedule]
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def layer_multipliers(params: nnx.State, num_layers: int, decay: float) -> Any:
    """Per-parameter learning-rate multipliers `decay ** (num_layers - 1 - layer)`: the top layer trains at the
    full rate, each layer below at `decay` times the one above. Stacked (scanned) parameters get a
    `[num_layers, 1, ...]` array; parameters outside the layers get 1."""
    scale = decay ** (num_layers - 1 - jnp.arange(num_layers, dtype=jnp.float32))

    def multiplier(path: tuple, leaf: jax.Array) -> jax.Array:
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        if "layers" not in keys:
            return jnp.ones((), jnp.float32)
        following = keys[keys.index("layers") + 1]
        if isinstance(following, int):  # unrolled: layers/<i>/...
            return scale[following]
        return scale.reshape(num_layers, *([1] * (leaf.ndim - 1)))  # stacked: leading layer axis

    return jax.tree_util.tree_map_with_path(multiplier, params)


def _scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
    return optax.stateless(lambda updates, params=None: jax.tree.map(lambda u, m: u * m, updates, multipliers))


def make_optimizer(cfg: ml_collections.ConfigDict, params: nnx.State, num_layers: int,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, learning-rate schedule) for the trainable `params`."""
    schedule = learning_rate_schedule(cfg, total_steps)
    decay_mask = jax.tree.map(lambda p: p.ndim >= 2, params)  # matrices decay; norms and scalars do not
    parts = [
        optax.clip_by_global_norm(cfg.max_grad_norm),
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask),
    ]
    if cfg.layer_lr_decay != 1.0:
        parts.append(_scale_by_tree(layer_multipliers(params, num_layers, cfg.layer_lr_decay)))
    return optax.chain(*parts), schedule


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        learning_rate=2e-4, warmup_steps=10, schedule="cosine", end_learning_rate_ratio=0.1,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, max_grad_norm=1.0, layer_lr_decay=1.0,
    ))
