"""The Ollama Modelfile written beside each GGUF: `ollama create devstral-elixir:v1 -f <gguf stem>.Modelfile`.

FROM names the GGUF beside it (Ollama resolves it from the Modelfile's folder); TEMPLATE is the instruct
format as a Go template (chat_template.py); the stop strings end a turn where the model starts the next
one; the parameters are Devstral's recommended sampling temperature, a context long enough for a source
file, and no repetition penalty (code repeats on purpose).
"""

from __future__ import annotations

import os

from devstral_jax.hf.chat_template import ollama_template

STOP = ("</s>", "[INST]")
PARAMETERS = {"temperature": 0.15, "num_ctx": 8192, "repeat_penalty": 1.0}


def modelfile_path(gguf_path: str | os.PathLike) -> str:
    """Where the Modelfile of a GGUF goes: beside it, named after it."""
    return os.path.splitext(os.fspath(gguf_path))[0] + ".Modelfile"


def render_modelfile(gguf_file: str, tokenizer: str | os.PathLike) -> str:
    """The Modelfile for `gguf_file` (a name in the same folder) and the tokenizer it was exported with: a
    tekken.json (TEMPLATE and stops: Devstral's instruct format), or a GGUF base whose chat template the file
    carries (Ollama reads it from there)."""
    lines = [f"# ollama create <name>:<tag> -f {os.path.splitext(gguf_file)[0]}.Modelfile", f"FROM ./{gguf_file}"]
    if os.fspath(tokenizer).endswith(".gguf"):
        lines.append("# No TEMPLATE: Ollama uses the chat template in the GGUF's metadata (its base's own).")
    else:
        lines.append(f'TEMPLATE """{ollama_template(tokenizer)}"""')
        lines += [f'PARAMETER stop "{stop}"' for stop in STOP]
    lines += [f"PARAMETER {name} {value}" for name, value in PARAMETERS.items()]
    return "\n".join(lines) + "\n"


def save_modelfile(gguf_path: str | os.PathLike, tokenizer: str | os.PathLike) -> str:
    """Writes the Modelfile beside `gguf_path`; returns its path."""
    path = modelfile_path(gguf_path)
    with open(path, "w") as f:
        f.write(render_modelfile(os.path.basename(os.fspath(gguf_path)), tokenizer))
    return path
