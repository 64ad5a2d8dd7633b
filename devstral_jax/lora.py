"""LoRA adapters: y = x W + (alpha / r) * dropout(x) A B, with A random, B zero, both float32.

Only `LoRAParam`s (Flax's `nnx.LoRAParam`) are trained: pass `LoRAParam` as the filter to
`nnx.Optimizer(..., wrt=LoRAParam)` and to `nnx.grad`/`nnx.DiffState`, and the frozen base (dense or
quantized) gets neither gradients nor optimizer state. `merge` folds the adapters into the base for export;
`unmerge` takes them out again. `delta` is the one computation of what an adapter adds to its kernel.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import LoRAParam

Array = TypeVar("Array", jax.Array, np.ndarray)

from devstral_jax.config import LORA_TARGETS, ModelConfig


def delta(a: Array, b: Array, scale: float) -> Array:
    """scale * A B: what an adapter (A `[..., in, r]`, B `[..., r, out]`) adds to its `[..., in, out]` kernel.

    The same on JAX and NumPy arrays, so a model in memory and a PEFT adapter on disk merge alike.
    """
    return a @ b * scale


class LoRA(nnx.Module):
    """The low-rank update of one `[in, out]` projection: A `[in, r]`, B `[r, out]` (PEFT's lora_A/B transposed)."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, alpha: float, dropout: float,
                 axes: tuple[str, str], rngs: nnx.Rngs):
        # PEFT's default: kaiming_uniform(a=sqrt(5)) on lora_A, i.e. U(-1/sqrt(in), 1/sqrt(in)).
        bound = 1.0 / math.sqrt(in_features)
        self.a = LoRAParam(jax.random.uniform(rngs.params(), (in_features, rank), jnp.float32, -bound, bound),
                           logical_axes=(axes[0], "lora"))
        self.b = LoRAParam(jnp.zeros((rank, out_features), jnp.float32), logical_axes=("lora", axes[1]))
        self.scale = alpha / rank
        self.dropout = dropout

    def __call__(self, x: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        x = x.astype(jnp.float32)
        if dropout_rng is not None and self.dropout > 0:
            keep = jax.random.bernoulli(dropout_rng, 1.0 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - self.dropout), 0.0)
        return (x @ self.a[...]) @ self.b[...] * self.scale

    def delta(self, layer: int | None = None) -> jax.Array:
        """What the adapter adds to the `[..., in, out]` kernel; with `layer`, to that row of a stacked one only."""
        a, b = (self.a[...], self.b[...]) if layer is None else (self.a[...][layer], self.b[...][layer])
        return delta(a, b, self.scale)


def adapter_settings(config: ModelConfig, projection: str) -> dict[str, Any] | None:
    """The LoRA settings (rank, alpha, dropout) of `projection` (e.g. "q_proj") under a ModelConfig, or None
    when that projection has no adapter."""
    if config.lora_rank == 0 or projection not in config.lora_targets:
        return None
    return dict(rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout)


def dropout_key(rng: jax.Array | None, projection: str) -> jax.Array | None:
    """The dropout key of `projection` (one of `LORA_TARGETS`), folded from a block's key by the projection's
    place in `LORA_TARGETS`, so each projection draws its own mask. None stays None: no dropout."""
    return None if rng is None else jax.random.fold_in(rng, LORA_TARGETS.index(projection))


def _adapted_linears(model: nnx.Module) -> list[nnx.Module]:
    return [m for _, m in nnx.iter_graph(model) if getattr(m, "lora", None) is not None]


def merge(model: nnx.Module, requantize: bool = False) -> None:
    """Folds every adapter into its base kernel, in place: W <- W + scale A B.

    A dense base stays dense. A quantized base becomes a dense `param_dtype` kernel, or, with
    `requantize=True`, is quantized again in its own format (smaller, but lossy and not unmergeable).
    """
    for linear in _adapted_linears(model):
        linear.merge_lora(requantize)


def unmerge(model: nnx.Module) -> None:
    """Undoes `merge` on dense kernels: W <- W - scale A B."""
    for linear in _adapted_linears(model):
        linear.unmerge_lora()
