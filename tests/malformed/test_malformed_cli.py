"""The entry points themselves on user mistakes: exit status 1, one line on stderr naming the problem, no traceback,
and nothing good lost (an evaluation's previous results stay as they were)."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import transformers

from devstral_jax.config import preset, to_hf_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
TRAIN = ["launch/train.py", "--config=configs/tiny_cpu.py", "--config.model.num_layers=1"]


def _error_line(*command: str) -> str:
    """The one stderr line of a command that must fail with status 1."""
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=ENV)
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not re.match(r"[IWE]\d{4} ", line) and "%|" not in line]  # log lines, progress bars
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("flags, message", [
    (["--config.train.loss_chunk=0"], "train.py: error: config.train.loss_chunk=0: must be a whole number of at least 1."),
    (["--config.data.seq_len=-8"], "train.py: error: config.data.seq_len=-8: must be a whole number of at least 1."),
])
def test_training_numbers_that_cannot_work(tmp_path, flags, message):
    assert _error_line(*TRAIN, f"--workdir={tmp_path / 'run'}", *flags) == message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_config_file(tmp_path):
    line = _error_line("launch/train.py", f"--config={tmp_path / 'absent.py'}", f"--workdir={tmp_path / 'run'}")
    assert line.startswith("train.py: error: ") and "absent.py" in line


@pytest.fixture(scope="module")
def vocab_256_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny256"
    torch.manual_seed(0)
    transformers.MistralForCausalLM(transformers.MistralConfig(**to_hf_config(
        preset("tiny", num_layers=1, vocab_size=256), torch_dtype="float32"))).save_pretrained(path)
    return path


def test_a_failed_evaluation_leaves_the_previous_results_untouched(tmp_path, vocab_256_model):
    out = tmp_path / "eval"
    out.mkdir()
    previous = {"results.jsonl": '{"problem": "kept"}\n', "summary.json": '{"benchmarks": {}}\n', "report.md": "old\n"}
    for name, text in previous.items():
        (out / name).write_text(text)
    line = _error_line("launch/evaluate.py", "--config=configs/eval_tiny_cpu.py", f"--model={vocab_256_model}",
                       "--benchmark=tests/eval/data/humaneval_ex_sample.jsonl", f"--output_dir={out}")
    assert line == (f"evaluate.py: error: --model={vocab_256_model} has a vocabulary of 256 tokens, the packaged "
                    "Tekken (the folder has no tekken.json) has 131072: they do not belong together. Add the model's "
                    "own tekken.json to it.")
    assert {p.name: p.read_text() for p in out.iterdir()} == previous  # nothing emptied, nothing half-written


def test_an_empty_completions_file(tmp_path):
    empty = tmp_path / "completions.jsonl"
    empty.write_text("")
    line = _error_line("launch/evaluate.py", "--config=configs/eval_tiny_cpu.py", f"--completions={empty}",
                       f"--output_dir={tmp_path / 'out'}")
    assert line == f"evaluate.py: error: {empty} holds no completions."
    assert not (tmp_path / "out").exists()


def test_export_from_a_params_json_with_zero_heads(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "params.json").write_text(json.dumps(dict(dim=64, n_layers=1, head_dim=16, hidden_dim=192, n_heads=0,
                                                      n_kv_heads=2, norm_eps=1e-5, vocab_size=256)))
    (base / "consolidated.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    line = _error_line("launch/export.py", f"--base={base}", f"--adapter={tmp_path}", f"--out={tmp_path / 'out'}")
    assert line == "export.py: error: params.json: num_heads must be a positive integer, got 0."
