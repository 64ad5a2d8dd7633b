"""Which query may attend to which key: the one definition every attention kernel uses."""

from __future__ import annotations

import jax


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
