"""The Tekken tokenizer (131,072 tokens) through mistral-common, the encoder Mistral supports.

The file ships inside the `mistral-common` package, so no hub access is needed; a Devstral
checkout's own `tekken.json` can be passed instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mistral_common
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from devstral_jax.errors import ConfigError

PACKAGED_TEKKEN = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"


def tekken_file(path: str | os.PathLike | None = None) -> Path:
    """The Tekken file `path` names (a `tekken.json` or a model directory holding one); default: the packaged one."""
    path = Path(path) if path else PACKAGED_TEKKEN
    if path.is_dir():
        path = path / "tekken.json"
    if not path.is_file():
        raise ConfigError(f"No Tekken tokenizer at {path}: pass a tekken.json or a directory holding one.")
    return path


def load_tekken(path: str | os.PathLike | None = None) -> Tekkenizer:
    """Loads Tekken from `path` (a `tekken.json` or a model directory holding one); default: the packaged file."""
    return Tekkenizer.from_file(str(tekken_file(path)))


def tekken_config(path: str | os.PathLike | None = None) -> dict:
    """The `config` section of a Tekken file (version, default_vocab_size, ...), read without building the
    tokenizer (which takes seconds)."""
    with open(tekken_file(path)) as f:
        return json.load(f)["config"]
