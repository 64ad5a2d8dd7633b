"""Rotary position embeddings in Hugging Face's rotate-half convention, with Llama 3's frequency scaling.

The two halves of each head dimension form the (real, imaginary) pairs, so weights exported by
transformers load without permuting q/k (Mistral's consolidated format needs the permutation).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from devstral_jax.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> jax.Array:
    """theta^(-2i/d) for i in [0, d/2), in float32 as transformers computes it; rescaled by `scaling` if given."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    return inv_freq if scaling is None else llama3_scaled(inv_freq, scaling)


def llama3_scaled(inv_freq: jax.Array, scaling: RopeScaling) -> jax.Array:
    """transformers' `_compute_llama3_parameters`, step for step: long wavelengths divided by `factor`, short ones
    kept, those in between interpolated smoothly."""
    old_context = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float, scaling: RopeScaling | None = None) -> jax.Array:
    """Rotates `x` `[batch, seq, heads, head_dim]` by its `positions` `[batch, seq]`."""
    angles = positions.astype(jnp.float32)[..., None] * inverse_frequencies(x.shape[-1], theta, scaling)  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    rotated_half = jnp.concatenate([-second, first], axis=-1)
    return x * cos + rotated_half * sin
