"""The key/value cache for incremental decoding: fixed length, so one compiled decode step serves every step.

Each slot holds one token's keys and values in every layer, plus the position and segment id the
attention mask needs. Slots are written left to right from `index`; an unwritten slot has segment id 0
(padding), which no real token attends to. Prompts of different lengths share a batch by left padding:
positions restart at 0 in each row, so a row's tokens see exactly what they would see alone.

One forward call with a cache of T new tokens: `write_slots` records their positions and segment ids, each
layer attends over `layer_view` (writing its new keys and values into that view) and `write_layer` copies
only those T slots back, so the big cache is updated in place; then `index` moves past them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from devstral_jax.config import ModelConfig


class KVCache(NamedTuple):
    keys: jax.Array  # [layers, batch, length, kv_heads, head_dim]
    values: jax.Array  # [layers, batch, length, kv_heads, head_dim]
    positions: jax.Array  # [batch, length] int32
    segment_ids: jax.Array  # [batch, length] int32; 0 = unwritten or padding
    index: jax.Array  # int32 scalar: the next slot to write

    @property
    def length(self) -> int:
        return self.keys.shape[2]


class LayerCache(NamedTuple):
    """One layer's view of a KVCache whose positions and segment ids already include the new tokens."""

    keys: jax.Array  # [batch, length, kv_heads, head_dim]
    values: jax.Array
    positions: jax.Array
    segment_ids: jax.Array
    index: jax.Array

    def append(self, keys: jax.Array, values: jax.Array) -> LayerCache:
        """The view with the new tokens' `keys`/`values` `[batch, T, kv_heads, head_dim]` at `index`."""
        start = (0, self.index, 0, 0)
        return self._replace(keys=jax.lax.dynamic_update_slice(self.keys, keys.astype(self.keys.dtype), start),
                             values=jax.lax.dynamic_update_slice(self.values, values.astype(self.values.dtype), start))


def init_cache(config: ModelConfig, batch: int, length: int, dtype: jnp.dtype | None = None) -> KVCache:
    """An empty cache of `length` slots; keys and values in `dtype` (default: the model's compute dtype)."""
    shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
    dtype = jnp.dtype(dtype or config.dtype)
    return KVCache(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype),
                   positions=jnp.zeros((batch, length), jnp.int32), segment_ids=jnp.zeros((batch, length), jnp.int32),
                   index=jnp.zeros((), jnp.int32))


def write_slots(cache: KVCache, positions: jax.Array, segment_ids: jax.Array) -> KVCache:
    """Records the positions and segment ids of `T` new tokens at slots `index .. index + T - 1`."""
    start = (0, cache.index)
    return cache._replace(
        positions=jax.lax.dynamic_update_slice(cache.positions, positions.astype(jnp.int32), start),
        segment_ids=jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids.astype(jnp.int32), start))


def layer_view(cache: KVCache, layer: jax.Array | int) -> LayerCache:
    """Layer `layer`'s keys and values, with the slots' positions and segment ids that every layer shares."""
    return LayerCache(cache.keys[layer], cache.values[layer], cache.positions, cache.segment_ids, cache.index)


def write_layer(cache: KVCache, layer: jax.Array | int, view: LayerCache, count: int) -> KVCache:
    """`cache` with the `count` slots from `index` of `layer` taken from `view`: only they are written."""

    def write(stacked: jax.Array, one_layer: jax.Array) -> jax.Array:
        new = jax.lax.dynamic_slice_in_dim(one_layer, cache.index, count, axis=1)[None]
        return jax.lax.dynamic_update_slice(stacked, new, (layer, 0, cache.index, 0, 0))

    return cache._replace(keys=write(cache.keys, view.keys), values=write(cache.values, view.values))
