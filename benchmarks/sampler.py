"""Sampler throughput: prefill time and decode tokens/s of the KV-cache sampler, random weights.

    python benchmarks/sampler.py                                   # the tiny preset, on this machine
    python benchmarks/sampler.py --preset=devstral_small_2507 --storage=nf4   # on a GPU (about 14 GB)

For each batch size: one warm-up call per shape (compilation excluded), then `--repeats` timed calls of
`Sampler.generate_tokens` with greedy decoding and no EOS or stop sequence, so every row produces exactly
`--new_tokens` tokens. Prefill is timed with `max_new_tokens=1`; decode tokens/s is
rows x (new_tokens - 1) / (full call - prefill call). Prints a table and writes JSON
(results/sampler_<platform>_<preset>_<storage>.json or --out).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from devstral_jax.config import PRESETS, preset  # noqa: E402
from devstral_jax.model import Transformer  # noqa: E402
from devstral_jax.sampler import Sampler, SamplingConfig  # noqa: E402

_PRESET = flags.DEFINE_enum("preset", "tiny", sorted(PRESETS), "Model architecture (random weights).")
_STORAGE = flags.DEFINE_enum("storage", "bfloat16", ["bfloat16", "nf4", "int8"],
                             "How the attention and MLP kernels are stored.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "32"], "Rows per call.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 256, "Prompt tokens per row.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 16, "Decode steps per device call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (the median is kept).")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")


def random_model(name: str, storage: str) -> Transformer:
    """The preset with random weights, created on the device (a 24B model never passes through the host)."""
    kernels = "dense" if storage == "bfloat16" else storage
    config = preset(name, dtype="bfloat16", param_dtype="bfloat16", attn_storage=kernels, mlp_storage=kernels,
                    lora_rank=0, remat_policy="none")
    graphdef, state = jax.jit(lambda: nnx.split(Transformer(config, rngs=nnx.Rngs(0))))()
    return nnx.merge(graphdef, state)


def median_seconds(sampler: Sampler, prompts: list[list[int]], sampling: SamplingConfig) -> float:
    sampler.generate_tokens(prompts, sampling)  # compiles this shape
    times = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        sampler.generate_tokens(prompts, sampling)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str]) -> None:
    del argv
    model = random_model(_PRESET.value, _STORAGE.value)
    sampler = Sampler(model)
    rng = np.random.default_rng(0)
    full = SamplingConfig(max_new_tokens=_NEW_TOKENS.value, steps_per_call=_STEPS_PER_CALL.value)
    prefill_only = SamplingConfig(max_new_tokens=1, steps_per_call=_STEPS_PER_CALL.value)
    rows = []
    for batch in map(int, _BATCH_SIZES.value):
        prompts = rng.integers(1, model.config.vocab_size, (batch, _PROMPT_LEN.value)).tolist()
        prefill = median_seconds(sampler, prompts, prefill_only)
        total = median_seconds(sampler, prompts, full)
        rows.append({"batch": batch, "prefill_seconds": prefill, "total_seconds": total,
                     "decode_tokens_per_s": batch * (_NEW_TOKENS.value - 1) / max(total - prefill, 1e-9),
                     "tokens_per_s": batch * _NEW_TOKENS.value / total,
                     "ms_per_decode_step": (total - prefill) / (_NEW_TOKENS.value - 1) * 1000})
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    result = {"device": device.device_kind, "preset": _PRESET.value, "storage": _STORAGE.value,
              "parameters": model.config.num_params, "prompt_len": _PROMPT_LEN.value,
              "new_tokens": _NEW_TOKENS.value, "steps_per_call": _STEPS_PER_CALL.value, "rows": rows,
              "peak_device_memory_gb": stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats else None}
    print(f"{_PRESET.value} ({model.config.num_params:,} parameters, {_STORAGE.value}) on {device.device_kind}; "
          f"prompt {_PROMPT_LEN.value} tokens, {_NEW_TOKENS.value} new")
    print(f"{'batch':>6}{'prefill s':>12}{'decode tok/s':>15}{'ms/step':>10}{'all tok/s':>12}")
    for row in rows:
        print(f"{row['batch']:>6}{row['prefill_seconds']:>12.3f}{row['decode_tokens_per_s']:>15.1f}"
              f"{row['ms_per_decode_step']:>10.2f}{row['tokens_per_s']:>12.1f}")
    name = f"sampler_{device.platform}_{_PRESET.value}_{_STORAGE.value}.json"
    out = Path(_OUT.value or Path(__file__).parent / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
