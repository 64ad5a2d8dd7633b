r"""Serves an exported GGUF on this machine through llama.cpp's OpenAI-compatible server (llama-cpp-python's), for
an editor plugin or a Phoenix app: /v1/completions and /v1/chat/completions (the chat template comes from the
GGUF), streamed as server-sent events with `"stream": true`, and /v1/models.

    DEVSTRAL_API_KEY=$(cat ~/.config/devstral/key) python launch/serve.py \
        --gguf=exports/devstral-elixir/v1/devstral-elixir-q4_k_m.gguf [--port=8000] [--max_concurrent=4]

Clients send `Authorization: Bearer <key>`; a wrong or missing key gets 401. The key is read from the
environment variable --api_key_env names, so it never shows in `ps`; without one the server stays on loopback.
More than --max_concurrent requests at once get 429 (llama.cpp generates one at a time; the rest queue).
`--gguf` may also be a version folder from launch/export.py holding one GGUF. For GPU serving use vLLM (README).
"""

from __future__ import annotations

import glob
import ipaddress
import os

from absl import flags

from devstral_jax.cli import run
from devstral_jax.errors import FlagError
from devstral_jax.hf import llama_cpp

_GGUF = flags.DEFINE_string("gguf", None, "The GGUF to serve, or a version folder holding exactly one.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (a non-loopback one needs an API key).")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on.")
_API_KEY_ENV = flags.DEFINE_string("api_key_env", "DEVSTRAL_API_KEY",
                                   "Environment variable holding the API key clients must send ('' or unset: none).")
_MAX_CONCURRENT = flags.DEFINE_integer("max_concurrent", 4, "Requests in flight at most; more get 429.", lower_bound=1)
_N_CTX = flags.DEFINE_integer("n_ctx", 8192, "Context length (prompt + completion) in tokens.", lower_bound=64)
_N_THREADS = flags.DEFINE_integer("n_threads", None, "CPU threads (default: half the cores).", lower_bound=1)
flags.mark_flags_as_required(["gguf"])


def _gguf(path: str) -> str:
    """The GGUF file `path` names (a file, or a folder holding exactly one), checked to carry a chat template."""
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "*.gguf")))
        if len(found) != 1:
            raise FlagError(f"--gguf={path} holds {len(found)} GGUF files ({', '.join(map(os.path.basename, found))}"
                            "); name one.")
        path = found[0]
    if not os.path.isfile(path):
        raise FlagError(f"--gguf={path}: no such file.")
    if not llama_cpp.chat_template(path):
        raise FlagError(f"--gguf={path} has no chat template (tokenizer.chat_template), so chat requests would be "
                        "formatted wrongly; export it again with launch/export.py.")
    return path


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise FlagError(f"Unexpected arguments: {argv[1:]}")
    api_key = os.environ.get(_API_KEY_ENV.value) if _API_KEY_ENV.value else None
    if not api_key and not _is_loopback(_HOST.value):
        raise FlagError(f"--host={_HOST.value} is reachable from other machines: set an API key in "
                        f"${_API_KEY_ENV.value or 'DEVSTRAL_API_KEY'} first.")
    path = _gguf(_GGUF.value)
    app = llama_cpp.server_app(path, api_key=api_key or None, max_concurrent=_MAX_CONCURRENT.value,
                               n_ctx=_N_CTX.value, n_threads=_N_THREADS.value,
                               alias=os.path.splitext(os.path.basename(path))[0])
    import uvicorn  # installed with llama-cpp-python's server extra

    print(f"serving {path} on http://{_HOST.value}:{_PORT.value}/v1 ({'API key required' if api_key else 'no key'})",
          flush=True)
    uvicorn.run(app, host=_HOST.value, port=_PORT.value, log_level="warning")


if __name__ == "__main__":
    run(main)
