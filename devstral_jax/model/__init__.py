"""The decoder (Mistral and Llama families: Devstral, Mistral 7B, SmolLM2, Llama 3.x) in Flax NNX."""

from devstral_jax.model.kv_cache import KVCache, init_cache
from devstral_jax.model.transformer import Block, Transformer

__all__ = ["Block", "KVCache", "Transformer", "init_cache"]
