"""Run by tests/test_train.py: 3 train steps on a fixed global batch, as process `id` of `count` (or alone
with `count` fake local devices), printing the per-step losses as JSON on the last line."""

import json
import os
import sys

process_id, process_count, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
alone = process_id < 0
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={process_count if alone else 1}"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

if not alone:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=process_count, process_id=process_id)

from devstral_jax import sharding  # noqa: E402
from tests.train_helpers import packed_batch, place, step_setup, tiny_config  # noqa: E402

config = tiny_config(steps=3)
mesh = sharding.make_mesh({"data": -1})
step, state, frozen, _ = step_setup(config, mesh)
losses = []
for i in range(3):
    batch = packed_batch(seed=i, rows=8, seq=32)
    rows = slice(None) if alone else slice(4 * process_id, 4 * (process_id + 1))  # this process's half
    state, metrics = step(state, frozen, place({k: v[:, rows] for k, v in batch.items()}, mesh))
    losses.append(float(metrics["loss"]))
print(json.dumps(losses))
