"""Training on a real base checkpoint directory (HF format), and refusing to resume on a different base."""

import os
import subprocess
import sys

import torch
import transformers

from devstral_jax.checkpoint import Checkpointer
from devstral_jax.config import preset, to_hf_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
FLAGS = ["--config.model.num_layers=1", "--config.data.seq_len=64", "--config.data.batch_size=2",
         "--config.train.loss_chunk=64", "--config.train.steps=2", "--config.train.eval_batches=1"]


def _save_base(path, seed):
    torch.manual_seed(seed)
    config = transformers.MistralConfig(**to_hf_config(preset("tiny", num_layers=1), torch_dtype="float32"))
    transformers.MistralForCausalLM(config).save_pretrained(path)


def _train(workdir, base):
    return subprocess.run([sys.executable, "launch/train.py", "--config=configs/tiny_cpu.py", f"--workdir={workdir}",
                           f"--config.base={base}", *FLAGS], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=ENV)


def test_trains_on_a_checkpoint_directory_and_checks_its_fingerprint_on_resume(tmp_path):
    base, other = tmp_path / "base", tmp_path / "other"
    _save_base(base, seed=0)
    _save_base(other, seed=1)
    first = _train(tmp_path / "run", base)
    assert first.returncode == 0, first.stderr[-3000:]
    meta = Checkpointer(tmp_path / "run" / "checkpoints").restore_meta()
    assert meta["base_source"] == str(base) and len(meta["base_fingerprint"]) == 64

    again = _train(tmp_path / "run", other)  # same workdir, different weights
    assert again.returncode != 0
    assert "trained on a different base model" in again.stderr and "Traceback" not in again.stderr
