"""NF4 quantize/dequantize throughput and the quantization error of realistic Devstral kernel shapes.

    python benchmarks/quant.py [--out=benchmarks/results/quant_cpu.json] [--repeats=3]

Throughput is GB/s of bf16 weights in (quantize) or out (dequantize) for a 5120 x 32768 kernel (Devstral's
gate/up projection), jitted, compilation excluded, median of `--repeats`. On a GPU it also times a
dequantize+matmul against a plain bf16 matmul of the same shape. Prints a table and writes JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from devstral_jax.quant import int8, nf4
from devstral_jax.quant.report import format_table, measure

_OUT = flags.DEFINE_string("out", None, "JSON output path (default: benchmarks/results/quant_<platform>.json).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per measurement (median reported).")

THROUGHPUT_SHAPE = (5120, 32768)
# Devstral Small's kernels, [in, out]: q, k/v, o, gate/up, down.
ERROR_SHAPES = {"q_proj": (5120, 4096), "k_proj": (5120, 1024), "o_proj": (4096, 5120),
                "gate_proj": (5120, 32768), "down_proj": (32768, 5120)}


def _median_seconds(fn, *args) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str]) -> None:
    del argv
    platform = jax.devices()[0].platform
    w = (jax.random.normal(jax.random.key(0), THROUGHPUT_SHAPE, jnp.float32) * 0.02).astype(jnp.bfloat16)
    gigabytes = w.size * 2 / 1e9
    quantize = jax.jit(nf4.quantize)
    dequantize = jax.jit(nf4.dequantize, static_argnums=1)
    q = quantize(w)
    results = {
        "platform": platform, "device": str(jax.devices()[0]), "shape": THROUGHPUT_SHAPE,
        "quantize_gb_per_s": gigabytes / _median_seconds(quantize, w),
        "dequantize_gb_per_s": gigabytes / _median_seconds(dequantize, q, jnp.bfloat16),
        "nf4_bytes_per_param": q.nbytes / w.size,
    }
    if platform == "gpu":
        x = jax.random.normal(jax.random.key(1), (4096, THROUGHPUT_SHAPE[0]), jnp.bfloat16)
        flops = 2 * x.shape[0] * w.size
        bf16_s = _median_seconds(jax.jit(jnp.dot), x, w)
        nf4_s = _median_seconds(jax.jit(lambda x, q: jnp.dot(x, nf4.dequantize(q, jnp.bfloat16))), x, q)
        results.update(bf16_matmul_ms=bf16_s * 1e3, nf4_dequant_matmul_ms=nf4_s * 1e3,
                       bf16_matmul_tflops=flops / bf16_s / 1e12, nf4_matmul_tflops=flops / nf4_s / 1e12)

    rows = []
    for name, shape in ERROR_SHAPES.items():
        kernel = jax.random.normal(jax.random.key(hash(name) % 2**31), shape, jnp.float32) * 0.02
        q4, q8 = quantize(kernel), jax.jit(int8.quantize)(kernel)
        rows.append(measure(name, kernel, dequantize(q4, jnp.float32), "nf4", q4.nbytes))
        rows.append(measure(name, kernel, int8.dequantize(q8, jnp.float32), "int8", q8.nbytes))
    results["errors"] = [dict(r.__dict__, bits_per_param=r.bits_per_param) for r in rows]

    print(f"NF4 on {results['device']}, kernel {THROUGHPUT_SHAPE[0]}x{THROUGHPUT_SHAPE[1]} bf16 "
          f"({gigabytes:.2f} GB), median of {_REPEATS.value}:")
    print(f"  quantize   {results['quantize_gb_per_s']:8.2f} GB/s")
    print(f"  dequantize {results['dequantize_gb_per_s']:8.2f} GB/s")
    print(f"  storage    {results['nf4_bytes_per_param']:8.4f} bytes/param")
    if "bf16_matmul_ms" in results:
        print(f"  [4096x5120] @ W: bf16 {results['bf16_matmul_ms']:.2f} ms, NF4 dequant+matmul "
              f"{results['nf4_dequant_matmul_ms']:.2f} ms")
    print("\nQuantization error, Gaussian weights (std 0.02):")
    print(format_table(rows))

    out = _OUT.value or os.path.join(os.path.dirname(__file__), "results", f"quant_{platform}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    app.run(main)
