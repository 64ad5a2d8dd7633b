"""The small layers of the decoder: token embedding (and its transpose, the tied output layer), RMSNorm and the
SwiGLU MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from devstral_jax import lora, sharding
from devstral_jax.config import ModelConfig
from devstral_jax.model.linear import Linear


class Embed(nnx.Module):
    """Token id -> vector lookup; the table is `[vocab, embed]`, as in Hugging Face."""

    def __init__(self, vocab_size: int, features: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs,
                 init_std: float = 0.02):
        self.embedding = nnx.Param(init_std * jax.random.normal(rngs.params(), (vocab_size, features), param_dtype),
                                   logical_axes=("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """`x @ embedding.T`: scores against every token's vector, the output layer of tied-embedding models."""
        return jnp.dot(x.astype(self.dtype), self.embedding[...].astype(self.dtype).T)


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, normalised in float32 (as transformers does) and returned in the input dtype."""

    def __init__(self, features: int, *, eps: float, param_dtype: jnp.dtype):
        self.scale = nnx.Param(jnp.ones((features,), param_dtype), logical_axes=("embed",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        features, hidden = config.hidden_size, config.intermediate_size
        kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype), rngs=rngs,
                  init_std=config.initializer_range, storage=config.mlp_storage)
        self.gate_proj = Linear(features, hidden, axes=("embed", "mlp"),
                                lora=lora.adapter_settings(config, "gate_proj"), **kw)
        self.up_proj = Linear(features, hidden, axes=("embed", "mlp"),
                              lora=lora.adapter_settings(config, "up_proj"), **kw)
        self.down_proj = Linear(hidden, features, axes=("mlp", "embed"),
                                lora=lora.adapter_settings(config, "down_proj"), **kw)

    def __call__(self, x: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        gate = self.gate_proj(x, lora.dropout_key(dropout_rng, "gate_proj"))
        up = self.up_proj(x, lora.dropout_key(dropout_rng, "up_proj"))
        hidden = sharding.constrain(jax.nn.silu(gate) * up, ("batch", "seq", "act_mlp"), "MLP hidden units")
        return self.down_proj(hidden, lora.dropout_key(dropout_rng, "down_proj"))
