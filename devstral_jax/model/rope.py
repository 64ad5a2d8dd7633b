"""Rotary position embeddings in Hugging Face's rotate-half convention.

The two halves of each head dimension form the (real, imaginary) pairs, so weights exported by
transformers load without permuting q/k (Mistral's consolidated format needs the permutation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def inverse_frequencies(head_dim: int, theta: float) -> jax.Array:
    """theta^(-2i/d) for i in [0, d/2), in float32 as transformers computes it."""
    return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotates `x` `[batch, seq, heads, head_dim]` by its `positions` `[batch, seq]`."""
    angles = positions.astype(jnp.float32)[..., None] * inverse_frequencies(x.shape[-1], theta)  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    rotated_half = jnp.concatenate([-second, first], axis=-1)
    return x * cos + rotated_half * sin
