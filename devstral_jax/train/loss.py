"""Next-token cross-entropy over a 131k vocabulary without materialising `[batch, seq, vocab]` float32 logits.

The sequence is cut into chunks; each chunk's logits are computed, reduced to per-token losses and
dropped, under `jax.checkpoint`, so the backward pass recomputes them chunk by chunk too. Peak logits
memory is `[batch, chunk, vocab]` instead of `[batch, seq, vocab]`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from devstral_jax import sharding
from devstral_jax.errors import ConfigError


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log softmax(logits)[target], float32."""
    logits = logits.astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logits


def chunked_loss_sum(hidden: jax.Array, targets: jax.Array, loss_mask: jax.Array,
                     logits_fn: Callable[[jax.Array], jax.Array], chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """(sum of masked token losses, number of masked tokens) for `hidden [B, T, E]`; `logits_fn` maps hidden to
    logits. `T` must be a multiple of `chunk_size`."""
    batch, seq, features = hidden.shape
    if seq % chunk_size:
        raise ConfigError(f"Sequence length {seq} is not a multiple of the loss chunk size {chunk_size}; "
                         "choose a chunk size that divides it.")
    num_chunks = seq // chunk_size

    def to_chunks(x: jax.Array) -> jax.Array:  # [B, T, ...] -> [num_chunks, B, chunk, ...]
        return jnp.moveaxis(x.reshape(batch, num_chunks, chunk_size, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def chunk_loss(hidden_chunk: jax.Array, target_chunk: jax.Array, mask_chunk: jax.Array) -> jax.Array:
        logits = sharding.constrain(logits_fn(hidden_chunk), ("batch", "seq", "act_vocab"), "loss chunk logits")
        return jnp.sum(token_losses(logits, target_chunk) * mask_chunk)

    def body(total: jax.Array, chunk: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        return total + chunk_loss(*chunk), None

    mask = loss_mask.astype(jnp.float32)
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (to_chunks(hidden), to_chunks(targets), to_chunks(mask)))
    return total, jnp.sum(mask)
