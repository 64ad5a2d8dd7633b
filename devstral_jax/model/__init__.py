"""The Devstral (Mistral architecture) decoder in Flax NNX."""

from devstral_jax.model.transformer import Block, Transformer

__all__ = ["Block", "Transformer"]
