"""The Devstral (Mistral architecture) decoder in Flax NNX."""

from devstral_jax.model.kv_cache import KVCache, init_cache
from devstral_jax.model.transformer import Block, Transformer

__all__ = ["Block", "KVCache", "Transformer", "init_cache"]
