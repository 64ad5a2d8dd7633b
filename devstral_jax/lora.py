"""LoRA adapters: y = x W + (alpha / r) * dropout(x) A B, with A random, B zero, both float32.

Only `LoRAParam`s (Flax's `nnx.LoRAParam`) are trained: pass `LoRAParam` as the filter to
`nnx.Optimizer(..., wrt=LoRAParam)` and to `nnx.grad`/`nnx.DiffState`, and the frozen base (dense or
quantized) gets neither gradients nor optimizer state. `merge` folds the adapters into the base for export;
`unmerge` takes them out again. `delta` is the one computation of what an adapter adds to its kernel.
"""

from __future__ import annotations

import functools
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


def _bf16_terms(w: jax.Array) -> jax.Array:
    """float32 `w` as three bfloat16 arrays `[3, ...]` whose float32 sum is `w` (8 significant bits each)."""
    high = w.astype(jnp.bfloat16)
    rest = w - high.astype(jnp.float32)
    middle = rest.astype(jnp.bfloat16)
    return jnp.stack([high, middle, (rest - middle.astype(jnp.float32)).astype(jnp.bfloat16)])


def _wide_narrow(spec: str, wide: jax.Array, narrow: jax.Array) -> jax.Array:
    """einsum(spec) of a bfloat16 `wide` operand and a float32 `narrow` one whose free axis (last) is the rank:
    one bfloat16 GEMM against narrow's three terms, accumulated in float32. Exact products (8 x 8 bits), so
    float32 accuracy without a float32 copy of `wide`."""
    terms = jnp.moveaxis(_bf16_terms(narrow), 0, -2)  # [..., 3, r]
    out = jnp.einsum(spec, wide, terms.reshape(*terms.shape[:-2], -1), preferred_element_type=jnp.float32)
    return out.reshape(*out.shape[:-1], 3, -1).sum(-2)


def _narrow_narrow(h: jax.Array, w: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """h `[M, r]` @ w `[r, N]` (both float32) rounded once to `dtype`: one bfloat16 GEMM over the nine products
    of their terms (K = 9r), accumulated in float32."""
    rows, rank = h.shape
    lhs = jnp.broadcast_to(jnp.moveaxis(_bf16_terms(h), 0, 1)[:, :, None], (rows, 3, 3, rank))
    rhs = jnp.broadcast_to(_bf16_terms(w)[None], (3, 3, rank, w.shape[1]))
    return jnp.dot(lhs.reshape(rows, -1), rhs.reshape(-1, w.shape[1]), preferred_element_type=dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def bf16_product(x: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """scale * x A B for bfloat16 x `[..., in]` and float32 A `[in, r]`, B `[r, out]`, returned in bfloat16, with
    float32 accuracy (more than a float32 GEMM at the GPU's default TF32 precision) and, forward or backward,
    no float32 tensor larger than `[..., r]`: every product runs on bfloat16 terms of the float32 factors."""
    h = _wide_narrow("mk,kq->mq", x.reshape(-1, x.shape[-1]), a) * scale
    return _narrow_narrow(h, b, x.dtype).reshape(*x.shape[:-1], b.shape[1])


def _bf16_product_fwd(x, a, b, scale):
    h = _wide_narrow("mk,kq->mq", x.reshape(-1, x.shape[-1]), a) * scale
    return _narrow_narrow(h, b, x.dtype).reshape(*x.shape[:-1], b.shape[1]), (x, a, b, h)


def _bf16_product_bwd(scale, residuals, dy):
    x, a, b, h = residuals
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    dh = _wide_narrow("mn,nq->mq", dy2, b.T) * scale  # [M, r]
    da = _wide_narrow("mk,mq->kq", x2, dh)  # x^T dh: [in, r]
    db = _wide_narrow("mn,mq->nq", dy2, h).T  # h^T dy: [r, out]
    return _narrow_narrow(dh, a.T, x.dtype).reshape(x.shape), da, db


bf16_product.defvjp(_bf16_product_fwd, _bf16_product_bwd)


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
        """scale * dropout(x) A B, to float32 accuracy. Dropout zeroes inputs in x's own dtype (a select: exact)
        and its 1 / (1 - p) joins the scale, so no float32 copy of the `[..., in]` input is made to drop and
        rescale it: the same mask and, up to float32 rounding, the same values. A bfloat16 `x` goes through
        `bf16_product` (bfloat16 in and out, no float32 `[..., in]` or `[..., out]` tensor either way)."""
        scale = self.scale
        if dropout_rng is not None and self.dropout > 0:
            keep = jax.random.bernoulli(dropout_rng, 1.0 - self.dropout, x.shape)
            x = jnp.where(keep, x, jnp.zeros((), x.dtype))
            scale = scale / (1.0 - self.dropout)
        if x.dtype == jnp.bfloat16:
            return bf16_product(x, self.a[...], self.b[...], scale)
        return jnp.dot(x.astype(jnp.float32), self.a[...]) @ self.b[...] * scale

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
