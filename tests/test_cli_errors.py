"""The entry points' two ways to fail: a user mistake is one line on stderr and exit status 1, with no traceback;
a bug keeps its traceback."""

import os
import re
import subprocess
import sys

import pytest
import transformers

from devstral_jax.config import preset, to_hf_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's run
TRAIN = ["--config=configs/tiny_cpu.py", "--config.model.num_layers=1", "--config.data.seq_len=64",
         "--config.data.batch_size=2", "--config.train.loss_chunk=64", "--config.train.steps=2",
         "--config.train.log_every=1", "--config.train.eval_batches=1"]
# launch/train.py with one trainer function replaced by `_step_record` below: the first metrics record of the
# loop raises whatever the test names, from inside the real training loop.
WITH_FAULT = """
import runpy, sys
from devstral_jax.errors import TrainingError
from devstral_jax.train import trainer

fault, sys.argv = sys.argv[1], ["launch/train.py", *sys.argv[2:]]

def _step_record(*args, **kwargs):
    if fault == "bug":
        return 1 / 0
    raise TrainingError("a user mistake found in the loop")

trainer._step_record = _step_record
runpy.run_path("launch/train.py", run_name="__main__")
"""


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)


def _messages(stderr: str) -> list[str]:
    """stderr without absl's log lines (`I1201 12:00:00.000 ... file.py:12] ...`) and progress bars."""
    return [line for line in stderr.splitlines()
            if line.strip() and not re.match(r"[IWE]\d{4} ", line) and not line.startswith("train:")]


def test_a_bug_inside_the_trainer_keeps_its_traceback(tmp_path):
    result = _run("-c", WITH_FAULT, "bug", *TRAIN, f"--workdir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr, result.stderr[-3000:]
    assert re.search(r"in _loop\n(.*\n)*.*in _step_record\nZeroDivisionError: division by zero$", result.stderr,
                     re.M), result.stderr[-3000:]
    assert "train.py: error:" not in result.stderr


def test_the_same_place_raising_a_user_error_is_one_line(tmp_path):
    result = _run("-c", WITH_FAULT, "user", *TRAIN, f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert _messages(result.stderr) == ["train.py: error: a user mistake found in the loop"], result.stderr[-3000:]


@pytest.mark.parametrize("flag, message", [
    ("--config.train.stepz=3", """no config key 'stepz' Did you mean "steps" instead of "stepz"?"""),
    ("--config.data.train_paths=('{absent}',)", "No training shards at '{absent}'"),
    ("--config.data.validation_paths=('{absent}',)", "No training shards at '{absent}'"),
    ("--config.data.tokenizer={absent}", "No Tekken tokenizer at {absent}"),
    ("--config.train.init_adapters_from={absent}", "init_adapters_from='{absent}' is not a training workdir"),
])
def test_training_mistakes_are_one_line_before_the_first_step(tmp_path, flag, message):
    workdir, absent = tmp_path / "run", tmp_path / "absent"
    result = _run("launch/train.py", *TRAIN, f"--workdir={workdir}", flag.format(absent=absent))
    assert result.returncode == 1
    [line] = _messages(result.stderr)
    assert line.startswith("train.py: error: ") and message.format(absent=absent) in line, result.stderr[-3000:]
    assert not (workdir / "metrics.jsonl").exists()  # refused before training, not at the first evaluation
    assert not absent.exists()  # nothing was created where the mistake pointed


def test_a_base_model_missing_a_shard_is_one_line(tmp_path):
    config = transformers.MistralConfig(**to_hf_config(preset("tiny", num_layers=1), torch_dtype="float32"))
    transformers.MistralForCausalLM(config).save_pretrained(tmp_path / "base", max_shard_size="20MB")
    (tmp_path / "base" / "model-00001-of-00003.safetensors").unlink()
    result = _run("launch/train.py", *TRAIN, f"--workdir={tmp_path / 'run'}", f"--config.base={tmp_path / 'base'}")
    assert result.returncode == 1
    assert _messages(result.stderr) == [
        f"train.py: error: {tmp_path / 'base' / 'model.safetensors.index.json'} lists shard file(s) that do not "
        "exist: ['model-00001-of-00003.safetensors']."], result.stderr[-3000:]


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("")
    result = _run("launch/train.py", *TRAIN, f"--workdir={taken}")
    assert result.returncode == 1
    assert _messages(result.stderr) == [f"train.py: error: Cannot use {taken} as the workdir: File exists. "
                                        "Pass a directory."], result.stderr[-3000:]


@pytest.mark.parametrize("flags, message", [
    (["--completions=tests/eval/data/humaneval_ex_completions.jsonl", "--doctest_records={taken}",
      "--output_dir={out}"], "--doctest_records and --perplexity_records need --model: the doctest benchmark's "
                             "completions and the perplexity come from the model."),
    (["--model=random:tiny", "--benchmark=tests/eval/data/humaneval_ex_sample.jsonl", "--output_dir={taken}"],
     "--output_dir={taken} is a file; pass a directory."),
])
def test_evaluation_mistakes_are_one_line(tmp_path, flags, message):
    taken, out = tmp_path / "taken", tmp_path / "out"
    taken.write_text("")
    result = _run("launch/evaluate.py", "--config=configs/eval_tiny_cpu.py",
                  *(flag.format(taken=taken, out=out) for flag in flags))
    assert result.returncode == 1
    assert _messages(result.stderr) == [f"evaluate.py: error: {message.format(taken=taken)}"], result.stderr[-3000:]
