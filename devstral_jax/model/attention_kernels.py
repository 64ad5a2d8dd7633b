"""Attention kernels behind one signature: the seam for GPU/TPU flash kernels.

A kernel takes rotated q `[B, T, H, D]`, k and v `[B, S, K, D]` (K KV heads shared by H/K query heads
each) and the masking *inputs* — positions and segment ids — rather than a materialised mask, so
blockwise kernels (Pallas splash/flash attention, cuDNN) can skip masked blocks. Register one in
`KERNELS` and select it with `ModelConfig.attention_impl`:

  xla      the reference: materialises [B, H, T, S] scores.
  chunked  blockwise with an online softmax and a recomputing backward (chunked_attention.py): O(T) memory,
           for long sequences, on every backend.
  cudnn    cuDNN flash attention on NVIDIA GPUs (fused_attention.py); chunked elsewhere.
  splash   Pallas splash attention on TPUs (fused_attention.py); chunked elsewhere.

The fused kernels mask by index and check on the device that this equals masking by position for the batch
at hand; when it does not (or on another platform) they run the chunked kernel, so every kernel computes
the same attention.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp

from devstral_jax.errors import ConfigError
from devstral_jax.model.chunked_attention import chunked_attention
from devstral_jax.model.fused_attention import cudnn_attention, splash_attention
from devstral_jax.model.masking import attention_mask


class AttentionKernel(Protocol):
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, *, q_positions: jax.Array,
                 kv_positions: jax.Array, q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                 sliding_window: int | None) -> jax.Array: ...


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


KERNELS: dict[str, AttentionKernel] = {"xla": xla_attention, "chunked": chunked_attention, "cudnn": cudnn_attention,
                                       "splash": splash_attention}


def get_kernel(name: str) -> AttentionKernel:
    if name not in KERNELS:
        raise ConfigError(f"Unknown attention_impl {name!r}; available: {sorted(KERNELS)}.")
    return KERNELS[name]
