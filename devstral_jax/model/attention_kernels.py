"""Attention kernels behind one signature: the seam for GPU/TPU flash kernels.

A kernel takes rotated q `[B, T, H, D]`, k and v `[B, S, K, D]` (K KV heads shared by H/K query heads
each) and the masking *inputs* — positions and segment ids — rather than a materialised mask, so
blockwise kernels (Pallas splash/flash attention, cuDNN) can skip masked blocks. Register one in
`KERNELS` and select it with `ModelConfig.attention_impl`.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp


class AttentionKernel(Protocol):
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, *, q_positions: jax.Array,
                 kv_positions: jax.Array, q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                 sliding_window: int | None) -> jax.Array: ...


def attention_mask(q_positions: jax.Array, kv_positions: jax.Array, q_segment_ids: jax.Array,
                   kv_segment_ids: jax.Array, sliding_window: int | None) -> jax.Array:
    """`[B, T, S]` booleans: same segment (document), causal, and within the sliding window if any.

    Positions restart per document in packed rows, so within a segment position order is index order.
    """
    q_pos, kv_pos = q_positions[:, :, None], kv_positions[:, None, :]
    mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (kv_pos <= q_pos)
    if sliding_window is not None:
        mask &= q_pos - kv_pos < sliding_window  # transformers: the last `sliding_window` tokens, self included
    return mask


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, q_positions: jax.Array, kv_positions: jax.Array,
                  q_segment_ids: jax.Array, kv_segment_ids: jax.Array, sliding_window: int | None) -> jax.Array:
    """Reference attention in plain XLA ops; runs on every backend. Softmax in float32."""
    batch, q_len, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    q = q.reshape(batch, q_len, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * head_dim**-0.5
    mask = attention_mask(q_positions, kv_positions, q_segment_ids, kv_segment_ids, sliding_window)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, q_len, num_heads, head_dim)


KERNELS: dict[str, AttentionKernel] = {"xla": xla_attention}


def get_kernel(name: str) -> AttentionKernel:
    if name not in KERNELS:
        raise ValueError(f"Unknown attention_impl {name!r}; available: {sorted(KERNELS)}.")
    return KERNELS[name]
