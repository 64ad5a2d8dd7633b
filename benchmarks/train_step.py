"""Train-step throughput: tokens/s, MFU and memory of the jitted QLoRA step for a config, random weights.

    python benchmarks/train_step.py --config=configs/tiny_cpu.py [--steps=10] [--config.x.y=...]
    python benchmarks/train_step.py --config=configs/devstral_small_qlora_gpu.py   # on an 80 GB GPU

Compilation is excluded; the batch is synthetic (random tokens, full rows). Prints a table and writes
JSON next to this file (results/train_step_<platform>_<config>.json) or to --out.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from devstral_jax import sharding
from devstral_jax.cli import run
from devstral_jax.config import from_config_dict
from devstral_jax.train.trainer import build_model, train_step_and_state
from devstral_jax.train.utilization import flops_per_token, mfu, peak_device_memory_gb, peak_flops

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after one compile step).")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    model_config = from_config_dict(config.model)
    mesh = sharding.make_mesh(config.mesh)
    graphdef, lora, frozen, _ = build_model(config, model_config, mesh)
    step, state = train_step_and_state(config, model_config, graphdef, lora, frozen, mesh)

    d = config.data
    shape = (d.microbatches, d.batch_size // d.microbatches, d.seq_len)
    rng = np.random.default_rng(0)
    host = dict(inputs=rng.integers(0, model_config.vocab_size, shape, dtype=np.int32),
                targets=rng.integers(0, model_config.vocab_size, shape, dtype=np.int32),
                loss_mask=np.ones(shape, np.int32), segment_ids=np.ones(shape, np.int32),
                positions=np.broadcast_to(np.arange(d.seq_len, dtype=np.int32), shape).copy())
    batch = sharding.place_batch(host, mesh)

    compile_start = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_seconds = time.perf_counter() - compile_start
    memory = compiled.memory_analysis()
    state, metrics = compiled(state, frozen, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(_STEPS.value):
        start = time.perf_counter()
        state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)

    seconds = statistics.median(times)
    tokens = d.batch_size * d.seq_len
    flops = flops_per_token(model_config, state.lora, d.seq_len) * tokens
    peak = peak_flops(config)
    result = {
        "device": str(jax.devices()[0].device_kind), "devices": jax.device_count(), "config": config.model.to_dict(),
        "batch_rows": d.batch_size, "seq_len": d.seq_len, "microbatches": d.microbatches,
        "compile_seconds": compile_seconds, "step_seconds_median": seconds, "tokens_per_s": tokens / seconds,
        "tflops_per_s": flops / seconds / 1e12,
        "mfu": mfu(flops / seconds, peak) if peak else None,
        "compiled_temp_gb": memory.temp_size_in_bytes / 1e9,
        "compiled_argument_gb": memory.argument_size_in_bytes / 1e9,
        "peak_device_memory_gb": peak_device_memory_gb(),
        "loss": float(metrics["loss"]),
    }
    print(f"{'device':<28}{result['device']} x{result['devices']}")
    for key in ("batch_rows", "seq_len", "microbatches", "compile_seconds", "step_seconds_median", "tokens_per_s",
                "tflops_per_s", "mfu", "compiled_temp_gb", "compiled_argument_gb", "peak_device_memory_gb"):
        value = result[key]
        print(f"{key:<28}{value:.4g}" if isinstance(value, float) else f"{key:<28}{value}")
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
    out = _OUT.value or os.path.join(os.path.dirname(__file__), "results",
                                     f"train_step_{jax.devices()[0].platform}_{name}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    run(main)
