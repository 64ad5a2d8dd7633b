"""What llama.cpp's quantizers cost a model: file size and perplexity on held-out Elixir, F16 against Q8_0 and the
K-quants, with the KL divergence from F16 and how often the top token stays the same.

    python benchmarks/gguf_quality.py --gguf=<model.gguf> [--allow_requantize] [--types=q8_0,q6_k,q5_k_m,q4_k_m]
    python benchmarks/gguf_quality.py --model=<HF or consolidated Mistral dir>     (exported to F16 first)

The reference is the model as an F16 GGUF (a --gguf in F16/BF16/F32 is converted to F16 by llama.cpp; an already
quantized one only with --allow_requantize, and then the reference is its dequantized weights). Each type is
made from that F16 file by `llama_model_quantize`. The text is the validation split of the packaged sample
corpus (Elixir standard-library docs and examples, held out of training) or --text (a .jsonl of records or plain
text), tokenized by the model's own tokenizer, cut into --n_ctx windows, each read from its start; every
token after the window's first is scored. Prints a table and writes JSON (default
benchmarks/results/gguf_quality_<model>.json).
"""

from __future__ import annotations

import collections
import json
import os
import tempfile

import numpy as np
from absl import flags
from gguf import GGUFReader

from devstral_jax.cli import run
from devstral_jax.data.records import Record
from devstral_jax.errors import FlagError
from devstral_jax.hf import llama_cpp
from devstral_jax.hf.gguf_export import save_gguf
from devstral_jax.hf.export import merged_checkpoint_tensors
from devstral_jax.hf.model_dir import open_model_dir
from devstral_jax.tokenizers.tekken import PACKAGED_TEKKEN

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "devstral_jax", "data", "sample", "sample.jsonl")

_GGUF = flags.DEFINE_string("gguf", None, "A GGUF model (F16, BF16 or F32; quantized with --allow_requantize).")
_MODEL = flags.DEFINE_string("model", None, "A model directory launch/export.py reads (exported to F16 here).")
_ALLOW_REQUANTIZE = flags.DEFINE_bool("allow_requantize", False, "Accept a quantized --gguf (see the docstring).")
_TYPES = flags.DEFINE_list("types", ["q8_0", "q6_k", "q5_k_m", "q4_k_m"], "Types to compare with F16.")
_TEXT = flags.DEFINE_string("text", None, "Held-out text: a .jsonl of records (validation split) or a text file.")
_N_CTX = flags.DEFINE_integer("n_ctx", 512, "Tokens per window.", lower_bound=16)
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 16384, "Tokens of text scored at most.", lower_bound=16)
_THREADS = flags.DEFINE_integer("threads", None, "CPU threads for llama.cpp (default: its own).")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")


def held_out_text(path: str | None) -> str:
    """The validation records' text (text records whole, chat records' messages), or a plain file's text."""
    path = path or SAMPLE
    if not path.endswith(".jsonl"):
        with open(path) as f:
            return f.read()
    pieces = []
    with open(path) as f:
        for line in f:
            record = Record.from_json(line)
            if record.split == "validation":
                pieces += record.contents()
    if not pieces:
        raise FlagError(f"--text={path} has no validation records.")
    return "\n\n".join(pieces)


def _windows(tokens: list[int], bos: int | None, n_ctx: int, max_tokens: int) -> list[list[int]]:
    """Consecutive windows of at most n_ctx tokens (BOS first when the model has one), max_tokens in all."""
    body = n_ctx - (bos is not None)
    tokens = tokens[:max_tokens]
    return [([bos] if bos is not None else []) + tokens[i:i + body] for i in range(0, len(tokens) - 1, body)]


def _log_probs(model, window: list[int]) -> np.ndarray:
    """log p(token | prefix) over the vocabulary at every position of `window` but the last."""
    model.reset()
    model.eval(window)
    logits = np.array(model.scores[: len(window) - 1], np.float64)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def measure(paths: dict[str, str], text: str, n_ctx: int, max_tokens: int, threads: int | None) -> dict[str, dict]:
    """Per type: bytes, perplexity, and against "f16": mean KL(F16 || type) per token and top-1 agreement."""
    llama = llama_cpp.require()
    models = {kind: llama.Llama(path, n_ctx=n_ctx, logits_all=True, verbose=False,
                                **({"n_threads": threads, "n_threads_batch": threads} if threads else {}))
              for kind, path in paths.items()}
    reference = models["f16"]
    bos = reference.token_bos() if reference.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true" else None
    tokens = reference.tokenize(text.encode(), add_bos=False, special=False)
    nll = {kind: 0.0 for kind in models}
    kl = {kind: 0.0 for kind in models}
    same_top = {kind: 0 for kind in models}
    scored = 0
    for window in _windows(tokens, bos, n_ctx, max_tokens):
        targets = np.array(window[1:])
        base = _log_probs(reference, window)
        for kind, model in models.items():
            log_p = base if kind == "f16" else _log_probs(model, window)
            nll[kind] -= log_p[np.arange(len(targets)), targets].sum()
            kl[kind] += (np.exp(base) * (base - log_p)).sum()
            same_top[kind] += int((log_p.argmax(-1) == base.argmax(-1)).sum())
        scored += len(targets)
    for model in models.values():
        model.close()
    return {kind: {"bytes": os.path.getsize(paths[kind]), "perplexity": float(np.exp(nll[kind] / scored)),
                   "kl_from_f16": float(kl[kind] / scored), "top1_same_as_f16": same_top[kind] / scored,
                   "tokens": scored} for kind in models}


def tensor_types(path: str) -> dict[str, int]:
    """How many tensors of each type the file holds: a K-quant falls back to another type for a matrix whose rows
    are not a multiple of 256 weights, which a model's width may make most of them."""
    counts = collections.Counter(t.tensor_type.name for t in GGUFReader(path).tensors)
    return dict(counts.most_common())


def _reference(work: str) -> tuple[str, str]:
    """(name, path of the F16 GGUF) from --gguf or --model."""
    if bool(_GGUF.value) == bool(_MODEL.value):
        raise FlagError("Pass exactly one of --gguf and --model.")
    path = os.path.join(work, "f16.gguf")
    if _GGUF.value:
        if not os.path.isfile(_GGUF.value):
            raise FlagError(f"--gguf={_GGUF.value}: no such file.")
        llama_cpp.quantize(_GGUF.value, path, "f16", threads=_THREADS.value or 0,
                           allow_requantize=_ALLOW_REQUANTIZE.value)
        return os.path.splitext(os.path.basename(_GGUF.value))[0], path
    base = open_model_dir(_MODEL.value)
    save_gguf(path, base.config, merged_checkpoint_tensors(base, None),
              tokenizer=base.tokenizer_file or str(PACKAGED_TEKKEN), outtype="f16")
    return os.path.basename(os.path.normpath(_MODEL.value)), path


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise FlagError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_TYPES.value) - set(llama_cpp.FILE_TYPES))
    if unknown:
        raise FlagError(f"--types: unknown {unknown}; choose from {sorted(llama_cpp.FILE_TYPES)}.")
    text = held_out_text(_TEXT.value)
    with tempfile.TemporaryDirectory() as work:
        name, reference = _reference(work)
        paths = {"f16": reference}
        for kind in _TYPES.value:
            paths[kind] = os.path.join(work, f"{kind}.gguf")
            llama_cpp.quantize(reference, paths[kind], kind, threads=_THREADS.value or 0)
        results = measure(paths, text, _N_CTX.value, _MAX_TOKENS.value, _THREADS.value)
        for kind, path in paths.items():
            results[kind]["tensor_types"] = tensor_types(path)
    f16 = results["f16"]
    print(f"\n{name}: {f16['tokens']} held-out Elixir tokens in windows of {_N_CTX.value}")
    print(f"{'type':>8} {'MB':>8} {'size vs F16':>11} {'perplexity':>10} {'vs F16':>8} {'KL(F16||q)':>10} "
          f"{'top-1 same':>10}  tensors")
    for kind, r in results.items():
        types = ", ".join(f"{n} {t.lower()}" for t, n in r["tensor_types"].items())
        print(f"{kind:>8} {r['bytes'] / 1e6:>8.1f} {r['bytes'] / f16['bytes']:>10.0%} {r['perplexity']:>10.3f} "
              f"{r['perplexity'] / f16['perplexity'] - 1:>+8.2%} {r['kl_from_f16']:>10.5f} "
              f"{r['top1_same_as_f16']:>10.1%}  {types}")
    out = _OUT.value or os.path.join(os.path.dirname(__file__), "results", f"gguf_quality_{name}.json")
    with open(out, "w") as f:
        json.dump({"model": name, "source": _GGUF.value or _MODEL.value, "requantized": _ALLOW_REQUANTIZE.value,
                   "text": os.path.relpath(_TEXT.value or SAMPLE), "n_ctx": _N_CTX.value, "results": results}, f,
                  indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    run(main)
