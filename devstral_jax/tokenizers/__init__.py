"""Tokenizers behind one interface (base.py): Tekken + Devstral's instruct encoding for Mistral models (tekken.py),
Hugging Face `tokenizers` + the model's chat template for the others (hf.py); load.py picks a model's own."""

from devstral_jax.tokenizers.base import Tokenizer
from devstral_jax.tokenizers.hf import HFTokenizer
from devstral_jax.tokenizers.load import check_vocab, family_tokenizer, load_tokenizer, model_tokenizer, own_tokenizer
from devstral_jax.tokenizers.tekken import TekkenTokenizer

__all__ = ["HFTokenizer", "TekkenTokenizer", "Tokenizer", "check_vocab", "family_tokenizer", "load_tokenizer",
           "model_tokenizer", "own_tokenizer"]
