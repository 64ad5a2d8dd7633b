"""llama.cpp in this process, through llama-cpp-python (the `serve` extra, pinned in setup.py; `make test`
builds it): its own quantizer makes the K-quant GGUFs, and its OpenAI-compatible server (launch/serve.py)
serves them.

llama-cpp-python ships as source only, and pip compiles llama.cpp when it installs it (see the README for
the CMAKE_ARGS that keep that to the library it needs); so it is imported only where it is used.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
from types import ModuleType

from devstral_jax.errors import ConfigError

# Our name -> llama.cpp's file type (`llama_ftype`). llama.cpp picks each tensor's type within the mix: Q4_K_M
# and Q5_K_M keep the output matrix and attn_v / ffn_down in a third of the layers at a higher K type.
K_QUANTS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
            "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
# Every type `quantize` makes (the exports write F16 and Q8_0 themselves; benchmarks/gguf_quality.py uses these).
FILE_TYPES = {"f16": "LLAMA_FTYPE_MOSTLY_F16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", **K_QUANTS}
INSTALL = "pip install -e '.[serve]' (it compiles llama.cpp; the README's Serving section has the flags)"


def require() -> ModuleType:
    """The `llama_cpp` module, or an error (this machine lacks it) that says how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError(f"This needs llama.cpp through llama-cpp-python, which is not installed: {INSTALL}.") \
            from None
    return llama_cpp


def quantize(source: str | os.PathLike, dest: str | os.PathLike, kind: str, threads: int = 0,
             allow_requantize: bool = False) -> None:
    """Quantizes a GGUF (F16, BF16 or F32; an already quantized one only with `allow_requantize`) to `kind` (a
    FILE_TYPES name) with `llama_model_quantize`; metadata (tokenizer, chat template) is copied as it is.
    `threads` 0 means all cores."""
    llama = require()
    params = llama.llama_model_quantize_default_params()
    params.ftype = getattr(llama, FILE_TYPES[kind])
    params.nthread = threads
    params.allow_requantize = allow_requantize
    logging.info("llama.cpp: quantizing %s to %s", source, kind.upper())
    # llama.cpp logs a line a tensor through llama-cpp-python's logger; ERROR is its level for verbose=False
    # (its table maps llama.cpp's INFO to WARNING).
    chatter = logging.getLogger("llama-cpp-python")
    level = chatter.level
    chatter.setLevel(logging.ERROR)
    try:
        status = llama.llama_model_quantize(os.fsencode(source), os.fsencode(dest), ctypes.byref(params))
    finally:
        chatter.setLevel(level)
    if status != 0:
        raise RuntimeError(f"llama_model_quantize({source} -> {dest}, {kind}) failed with status {status}.")


def chat_template(gguf_path: str | os.PathLike) -> str | None:
    """The GGUF's `tokenizer.chat_template`, read by llama.cpp (vocabulary only, not the weights)."""
    model = require().Llama(os.fspath(gguf_path), vocab_only=True, verbose=False)
    try:
        return model.metadata.get("tokenizer.chat_template")
    finally:
        model.close()


class ConcurrencyLimit:
    """ASGI middleware: at most `limit` HTTP requests in flight; one more is answered 429 at once instead of
    queueing behind the generations before it (llama.cpp here runs one at a time). A request stops counting
    as its response's last byte goes out (a streaming app may return later), so a client that has read a
    whole response can send the next one."""

    def __init__(self, app, limit: int):
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:  # one event loop: nothing runs between this test and the increment
            body = json.dumps({"error": {"message": f"Busy: {self.limit} requests in flight, the most this server "
                                                    "takes; retry later.", "type": "rate_limit_exceeded"}}).encode()
            await send({"type": "http.response.start", "status": 429,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": body})
            return
        self.active += 1
        counted = True

        async def send_and_release(message) -> None:
            nonlocal counted
            if counted and message["type"] == "http.response.body" and not message.get("more_body", False):
                counted = False
                self.active -= 1
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            if counted:
                self.active -= 1


def server_app(gguf_path: str | os.PathLike, *, api_key: str | None, max_concurrent: int, n_ctx: int,
               n_threads: int | None, alias: str):
    """llama-cpp-python's OpenAI-compatible app (/v1/completions, /v1/chat/completions, /v1/models; streaming as
    server-sent events) on one GGUF, its chat template from the file, behind `ConcurrencyLimit`."""
    require()
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model = ModelSettings(model=os.fspath(gguf_path), model_alias=alias, n_ctx=n_ctx, verbose=False,
                          **({"n_threads": n_threads, "n_threads_batch": n_threads} if n_threads else {}))
    return ConcurrencyLimit(create_app(server_settings=ServerSettings(api_key=api_key), model_settings=[model]),
                            max_concurrent)
