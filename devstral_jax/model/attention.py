"""Grouped-query self-attention: projections, RoPE, and a kernel from `attention_kernels`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from devstral_jax import lora, sharding
from devstral_jax.config import ModelConfig
from devstral_jax.model.attention_kernels import get_kernel
from devstral_jax.model.kv_cache import LayerCache
from devstral_jax.model.linear import Linear
from devstral_jax.model.rope import apply_rope


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype), rngs=rngs,
                  init_std=config.initializer_range, storage=config.attn_storage)
        q_features, kv_features = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.q_proj = Linear(config.hidden_size, q_features, axes=("embed", "heads"),
                             lora=lora.adapter_settings(config, "q_proj"), **kw)
        self.k_proj = Linear(config.hidden_size, kv_features, axes=("embed", "kv"),
                             lora=lora.adapter_settings(config, "k_proj"), **kw)
        self.v_proj = Linear(config.hidden_size, kv_features, axes=("embed", "kv"),
                             lora=lora.adapter_settings(config, "v_proj"), **kw)
        self.o_proj = Linear(q_features, config.hidden_size, axes=("heads", "embed"),
                             lora=lora.adapter_settings(config, "o_proj"), **kw)
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        self.rope_scaling = config.rope_scaling
        self.sliding_window = config.sliding_window
        get_kernel(config.attention_impl)  # an unknown name fails here, at construction
        self.attention_impl = config.attention_impl

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: LayerCache | None = None,
                 dropout_rng: jax.Array | None = None) -> tuple[jax.Array, LayerCache | None]:
        """Self-attention over `x` `[B, T, hidden]`, and the cache with the new keys and values (None stays None).

        Without a cache the tokens attend to each other. With one, they attend to every cached slot and to
        themselves, written at `cache.index`; `cache.positions` and `cache.segment_ids` must already describe
        them (see `kv_cache.write_slots`).
        """
        batch, seq, _ = x.shape
        q = self.q_proj(x, lora.dropout_key(dropout_rng, "q_proj")).reshape(batch, seq, -1, self.head_dim)
        k = self.k_proj(x, lora.dropout_key(dropout_rng, "k_proj")).reshape(batch, seq, -1, self.head_dim)
        v = self.v_proj(x, lora.dropout_key(dropout_rng, "v_proj")).reshape(batch, seq, -1, self.head_dim)
        q = sharding.constrain(q, ("batch", "seq", "act_heads", None), "queries")
        k = sharding.constrain(k, ("batch", "seq", "act_kv", None), "keys")
        v = sharding.constrain(v, ("batch", "seq", "act_kv", None), "values")
        q = apply_rope(q, positions, self.rope_theta, self.rope_scaling)
        k = apply_rope(k, positions, self.rope_theta, self.rope_scaling)
        kv_positions, kv_segment_ids = positions, segment_ids
        if cache is not None:
            cache = cache.append(k, v)
            k, v = cache.keys.astype(q.dtype), cache.values.astype(q.dtype)
            kv_positions, kv_segment_ids = cache.positions, cache.segment_ids
        out = get_kernel(self.attention_impl)(
            q, k, v, q_positions=positions, kv_positions=kv_positions, q_segment_ids=segment_ids,
            kv_segment_ids=kv_segment_ids, sliding_window=self.sliding_window)
        out = sharding.constrain(out.reshape(batch, seq, -1), ("batch", "seq", "act_heads"), "attention output")
        return self.o_proj(out, lora.dropout_key(dropout_rng, "o_proj")), cache
