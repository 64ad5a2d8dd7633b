"""Test-wide settings: CPU only, 8 fake devices for sharding tests, full-precision float32 matmuls, and one XLA
compilation cache for the session, which the entry points the tests launch inherit: they compile the same small
programs again and again (a train step per launch/train.py run), and a cached executable is the one XLA compiled."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

XLA_CACHE = tempfile.mkdtemp(prefix="devstral_jax_test_xla_cache_")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_COMPILATION_CACHE_DIR"] = XLA_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # every program, not only those over 1 s

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_unconfigure(config):
    shutil.rmtree(XLA_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory) -> Path:
    """A launch/train.py workdir, for the tests that read one (they never write into it): the tiny config with one
    layer (a random NF4 base), 2 steps on one CPU device, as a user's run."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    train = [sys.executable, "launch/train.py", "--config=configs/tiny_cpu.py", f"--workdir={workdir}",
             "--config.model.num_layers=1", "--config.data.seq_len=64", "--config.data.batch_size=4",
             "--config.train.loss_chunk=64", "--config.train.steps=2", "--config.train.eval_every=2",
             "--config.train.eval_batches=1", "--config.train.checkpoint_every=2", "--config.optim.warmup_steps=1"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(train, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir
