"""Which query may attend to which key: by position (`attention_mask`, the definition every kernel computes) and
by index (`index_mask`, what fused kernels compute; the same for rows whose positions count through each document)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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


def index_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, sliding_window: int | None) -> jax.Array:
    """`[B, T, S]` booleans of masking by index, as fused kernels (cuDNN, splash) do it: same segment, key index at
    or before the query's, within the window. Equals `attention_mask` when positions count 0, 1, 2, ... through
    each document of a row."""
    q_index = jnp.arange(q_segment_ids.shape[1])[:, None]
    kv_index = jnp.arange(kv_segment_ids.shape[1])[None, :]
    mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (kv_index <= q_index)
    if sliding_window is not None:
        mask &= q_index - kv_index < sliding_window
    return mask
