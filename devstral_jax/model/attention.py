"""Grouped-query self-attention: projections, RoPE, and a kernel from `attention_kernels`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from devstral_jax import lora
from devstral_jax.config import ModelConfig
from devstral_jax.model.attention_kernels import get_kernel
from devstral_jax.model.linear import Linear
from devstral_jax.model.rope import apply_rope


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype), rngs=rngs,
                  storage=config.attn_storage)
        q_features, kv_features = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.q_proj = Linear(config.hidden_size, q_features, axes=("embed", "heads"),
                             lora=lora.spec(config, "q_proj"), **kw)
        self.k_proj = Linear(config.hidden_size, kv_features, axes=("embed", "kv"),
                             lora=lora.spec(config, "k_proj"), **kw)
        self.v_proj = Linear(config.hidden_size, kv_features, axes=("embed", "kv"),
                             lora=lora.spec(config, "v_proj"), **kw)
        self.o_proj = Linear(q_features, config.hidden_size, axes=("heads", "embed"),
                             lora=lora.spec(config, "o_proj"), **kw)
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        self.sliding_window = config.sliding_window
        get_kernel(config.attention_impl)  # an unknown name fails here, at construction
        self.attention_impl = config.attention_impl

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                 dropout_rng: jax.Array | None = None) -> jax.Array:
        batch, seq, _ = x.shape
        q = self.q_proj(x, lora.fold_rng(dropout_rng, 0)).reshape(batch, seq, -1, self.head_dim)
        k = self.k_proj(x, lora.fold_rng(dropout_rng, 1)).reshape(batch, seq, -1, self.head_dim)
        v = self.v_proj(x, lora.fold_rng(dropout_rng, 2)).reshape(batch, seq, -1, self.head_dim)
        q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
        out = get_kernel(self.attention_impl)(
            q, k, v, q_positions=positions, kv_positions=positions, q_segment_ids=segment_ids,
            kv_segment_ids=segment_ids, sliding_window=self.sliding_window)
        return self.o_proj(out.reshape(batch, seq, -1), lora.fold_rng(dropout_rng, 3))
