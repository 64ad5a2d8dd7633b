"""Seconds and peak host memory to load (and quantize) a synthetic HF checkpoint of a given size.

    python benchmarks/hf_load.py [--size_gb=2] [--storages=dense,nf4] [--out=benchmarks/results/hf_load_cpu.json]

The checkpoint has Devstral's proportions scaled down (hidden 2048, MLP 6144, 16/4 heads of 128, vocab 32768;
as many layers as the size asks), random bf16 weights in 2 GB shards. Each load runs in a fresh process, so
its peak RSS is its own: `rss_growth` is peak RSS minus RSS before the load, `model` what the loaded model
holds (on the CPU backend the devices are host memory, so the model counts there), `host buffers` the
loader's own NumPy allocations (tracemalloc peak). Compilation is included in the seconds. Prints a table
and writes JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import jax
import ml_dtypes
import numpy as np
from absl import app, flags

from devstral_jax.config import preset, to_hf_config
from devstral_jax.hf.model_dir import HF_INDEX
from devstral_jax.hf.param_map import hf_shapes
from devstral_jax.hf.safetensors_io import SafetensorsWriter

_SIZE = flags.DEFINE_float("size_gb", 2.0, "Checkpoint size in GB (bf16).")
_STORAGES = flags.DEFINE_string("storages", "dense,nf4", "Comma-separated storages of the q/k/v/o and MLP kernels.")
_OUT = flags.DEFINE_string("out", None, "JSON output path (default: benchmarks/results/hf_load_<platform>.json).")
_DIR = flags.DEFINE_string("dir", None, "Where to write the synthetic checkpoint (default: a temporary directory).")

SHARD_BYTES = 2 * 10**9
_LOAD = """
import json, os, resource, sys, time, tracemalloc
import jax
from flax import nnx
from devstral_jax.hf.load import load

before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # RSS now
tracemalloc.start()
start = time.perf_counter()
loaded = load(sys.argv[1], dtype="bfloat16", param_dtype="bfloat16", attn_storage=sys.argv[2],
              mlp_storage=sys.argv[2], progress=False)
leaves = jax.block_until_ready(jax.tree.leaves(nnx.state(loaded.model)))
seconds = time.perf_counter() - start
print(json.dumps(dict(seconds=seconds, host_buffers=tracemalloc.get_traced_memory()[1],
                      rss_growth=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before,
                      model=sum(x.nbytes for x in leaves), quantized_tensors=len(loaded.quant_report))))
"""


def _config(size_bytes: float):
    base = preset("tiny", vocab_size=32768, hidden_size=2048, intermediate_size=6144, num_heads=16, num_kv_heads=4,
                  head_dim=128, num_layers=1)
    per_layer = (base.num_params - 2 * base.vocab_size * base.hidden_size - base.hidden_size) * 2
    embeddings = (2 * base.vocab_size * base.hidden_size + base.hidden_size) * 2
    return base.replace(num_layers=max(1, round((size_bytes - embeddings) / per_layer)))


def write_checkpoint(path: str, config) -> tuple[int, int, int]:
    """Random bf16 weights in shards of at most 2 GB; returns (bytes, tensors, largest tensor bytes)."""
    shapes = hf_shapes(config)
    shards, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * 2
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards, size = shards + [[]], 0
        shards[-1].append(name)
        size += nbytes
    rng = np.random.default_rng(0)
    weight_map = {}
    for k, names in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        with SafetensorsWriter(os.path.join(path, file), [(n, shapes[n], np.dtype(ml_dtypes.bfloat16)) for n in names],
                               metadata={"format": "pt"}) as writer:
            for name in names:
                writer.write(name, (rng.standard_normal(shapes[name], np.float32) * 0.02).astype(ml_dtypes.bfloat16))
                weight_map[name] = file
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(to_hf_config(config), f)
    with open(os.path.join(path, HF_INDEX), "w") as f:
        json.dump({"weight_map": weight_map}, f)
    sizes = [int(np.prod(s)) * 2 for s in shapes.values()]
    return sum(sizes), len(sizes), max(sizes)


def main(argv: list[str]) -> None:
    del argv
    platform = jax.devices()[0].platform
    config = _config(_SIZE.value * 1e9)
    with tempfile.TemporaryDirectory(dir=_DIR.value) as path:
        total, count, largest = write_checkpoint(path, config)
        print(f"checkpoint: {total / 1e9:.2f} GB bf16, {count} tensors (largest {largest / 1e6:.1f} MB), "
              f"{config.num_layers} layers of hidden {config.hidden_size}; loading on {jax.devices()[0]}")
        runs = []
        for storage in _STORAGES.value.split(","):
            result = subprocess.run([sys.executable, "-c", _LOAD, path, storage], capture_output=True, text=True,
                                    env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)})
            if result.returncode:
                raise RuntimeError(f"loading with {storage} failed:\n{result.stderr[-3000:]}")
            runs.append(dict(storage=storage, **json.loads(result.stdout.strip().splitlines()[-1])))

    print(f"\n{'storage':>8} {'seconds':>8} {'GB/s':>6} {'model MB':>9} {'RSS growth MB':>14} {'beyond model MB':>16} "
          f"{'host buffers MB':>16}")
    for r in runs:
        print(f"{r['storage']:>8} {r['seconds']:>8.2f} {total / r['seconds'] / 1e9:>6.2f} {r['model'] / 1e6:>9.0f} "
              f"{r['rss_growth'] / 1e6:>14.0f} {(r['rss_growth'] - r['model']) / 1e6:>16.0f} "
              f"{r['host_buffers'] / 1e6:>16.1f}")
    out = _OUT.value or os.path.join(os.path.dirname(__file__), "results", f"hf_load_{platform}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(dict(platform=platform, device=str(jax.devices()[0]), checkpoint_bytes=total, tensors=count,
                       largest_tensor_bytes=largest, num_layers=config.num_layers, runs=runs), f, indent=2)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    app.run(main)
