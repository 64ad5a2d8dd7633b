#!/usr/bin/env bash
# The 24B QLoRA step on this machine's NVIDIA GPU, once per attention kernel: tokens/s, MFU and peak memory.
#
#   benchmarks/gpu_suite.sh                 # on a machine with one NVIDIA GPU, no network needed
#   PYTHON=python benchmarks/gpu_suite.sh --preset=tiny   # a dry run of the same path on any machine
#
# Offline install: the first run makes a virtualenv (.venv-gpu-suite at the repository root) and installs the
# project and its dependencies from the wheels in benchmarks/wheels/ only (pip --no-index). Put them there on a
# machine with network access, the same OS and CPU architecture and the same Python minor version:
#
#   pip download -d benchmarks/wheels '.[gpu]' 'jax[cuda12]==0.10.2' setuptools wheel
#
# (about 3.5 GB, mostly CUDA libraries; add --python-version 3.11 --platform manylinux2014_x86_64
# --only-binary=:all: to download for another Python). Set PYTHON to use an interpreter that already has
# everything (the virtualenv is then neither made nor used), WHEELS to read the wheels from elsewhere.
#
# Each kernel runs benchmarks/train_step.py in its own process (a clean peak-memory count) on
# configs/devstral_small_qlora_24gb.py: random NF4 weights made on the GPU, 2 rows of 4096 tokens per step in
# 2 microbatches, 3 timed steps. The whole suite, install included, stops within BUDGET seconds (default 450,
# under 8 minutes): each kernel gets an equal share of what is left, at most KERNEL_TIMEOUT (default 140), and a
# kernel cut off is reported as failed. The table comes last; the JSON goes to
# benchmarks/results/gpu_suite_<device>.json.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
WHEELS="${WHEELS:-$HERE/wheels}"
KERNELS="${KERNELS:-xla chunked cudnn}"
KERNEL_TIMEOUT="${KERNEL_TIMEOUT:-140}"
BUDGET="${BUDGET:-450}"
CONFIG="$ROOT/configs/devstral_small_qlora_24gb.py"
EXTRA_FLAGS=("$@")

if [[ -z "${PYTHON:-}" ]]; then
  VENV="$ROOT/.venv-gpu-suite"
  if [[ ! -x "$VENV/bin/python" ]]; then
    if [[ ! -d "$WHEELS" ]]; then
      echo "gpu_suite.sh: no wheels in $WHEELS; see the pip download line at the top of this script" >&2
      exit 1
    fi
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --no-index --find-links "$WHEELS" -e "$ROOT[gpu]"
  fi
  PYTHON="$VENV/bin/python"
fi

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c 'import jax; print("devices:", jax.devices())'

read -r -a kernel_list <<< "$KERNELS"
left=${#kernel_list[@]}
for kernel in "${kernel_list[@]}"; do
  share=$(( (BUDGET - SECONDS - 10) / left ))  # 10 s kept for the table
  left=$(( left - 1 ))
  limit=$(( share < KERNEL_TIMEOUT ? share : KERNEL_TIMEOUT ))
  echo "=== attention_impl=$kernel (at most ${limit}s)"
  if (( limit < 30 )) || ! timeout "$limit" "$PYTHON" benchmarks/train_step.py --config="$CONFIG" \
      --config.model.attention_impl="$kernel" --config.data.batch_size=2 --config.data.microbatches=2 \
      --steps=3 --out="$OUT/$kernel.json" "${EXTRA_FLAGS[@]}"; then
    echo "attention_impl=$kernel failed or ran past ${limit}s" >&2
  fi
done

"$PYTHON" - "$OUT" "$HERE/results" $KERNELS <<'EOF'
import json, os, sys

out, results, kernels = sys.argv[1], sys.argv[2], sys.argv[3:]
paths = {k: os.path.join(out, f"{k}.json") for k in kernels}
runs = {k: json.load(open(path)) for k, path in paths.items() if os.path.exists(path)}
device = next((r["device"] for r in runs.values()), "unknown device")
preset = next((r["preset"] for r in runs.values() if r["preset"]), None)
name = "gpu_suite_" + device.replace(" ", "_") + (f"_{preset}" if preset else "") + ".json"
os.makedirs(results, exist_ok=True)
with open(os.path.join(results, name), "w") as f:
    json.dump({"device": device, "runs": runs, "failed": [k for k in kernels if k not in runs]}, f, indent=2)
cell = lambda v, spec, width: f"{'-':>{width}}" if v is None else format(v, f">{width}{spec}")  # noqa: E731
print(f"\n{device}: Devstral Small QLoRA step{' (' + preset + ' preset)' if preset else ''}, "
      f"wrote {os.path.join(results, name)}")
print(f"{'attention':<10}{'tokens/s':>10}{'MFU':>8}{'step s':>9}{'compile s':>11}{'peak GB':>9}{'XLA peak GB':>13}")
for kernel in kernels:
    r = runs.get(kernel)
    if r is None:
        print(f"{kernel:<10}{'failed':>10}")
        continue
    print(f"{kernel:<10}{r['tokens_per_s']:>10.0f}{cell(r['mfu'], '.1%', 8)}{r['step_seconds_median']:>9.2f}"
          f"{r['compile_seconds']:>11.0f}{cell(r['peak_device_memory_gb'], '.1f', 9)}{r['compiled_peak_gb']:>13.1f}")
EOF
