"""Malformed files a user hands over (record shards, configs, model folders, checkpoints, evaluation inputs): each
is a UserError whose one-line message names the problem, raised before anything is written or trained."""

import importlib
import json
import os
import shutil
import struct

import jax
import numpy as np
import pytest
import torch
import transformers

from data_pipeline.config import base_config
from data_pipeline.config import validate as validate_data_config
from devstral_jax.checkpoint import Checkpointer
from devstral_jax.config import preset, to_hf_config
from devstral_jax.data.pipeline import read_records
from devstral_jax.errors import (BenchmarkError, CheckpointError, ConfigError, DataError, FlagError, ModelDirError,
                                 PipelineError, SafetensorsError, UserError)
from devstral_jax.eval.benchmarks import load_completions, load_problems
from devstral_jax.hf.load import load as load_model_dir
from devstral_jax.train.config import default_config, validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "devstral_jax", "data", "sample", "sample.jsonl")


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert isinstance(error, UserError) and "\n" not in message and "Traceback" not in message
    return message


# --- record shards ---

def _lines(split: str) -> list[bytes]:
    return [line for line in open(SAMPLE, "rb").read().splitlines() if json.loads(line)["split"] == split]


@pytest.mark.parametrize("content, message", [
    (b"", "Training shard {path} is empty"),
    (b"{not json}\n", "Bad training record"),
    (b'{"id": "x", "text": "no kind"}\n', "Bad training record"),
    (b"\xff\xfe binary \x00 garbage\n", "Bad training record"),
    (b"[1, 2, 3]\n", "Bad training record"),
    (b"\n".join(_lines("validation")[:3]) + b"\n", "No train records in {path}"),
])
def test_a_malformed_shard_is_a_data_error_naming_it(tmp_path, content, message):
    path = tmp_path / "shard.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        read_records((str(path),), "train")
    assert message.format(path=path) in _one_line(error.value)


def test_two_records_under_one_id_or_no_shards_at_all_are_data_errors(tmp_path):
    record = json.loads(_lines("train")[0])
    other = json.loads(_lines("train")[0])
    other["messages"][-1]["content"] += " (changed)"
    (tmp_path / "a.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(other) + "\n")
    with pytest.raises(DataError, match="Two different records share the id"):
        read_records((str(tmp_path / "a.jsonl"),), "train")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="No training shards at"):
        read_records((str(tmp_path / "empty_dir"),), "train")


def test_a_truncated_array_record_shard_is_a_data_error(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter
    path = tmp_path / "train-00000.array_record"
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for line in _lines("train")[:20]:
        writer.write(line)
    writer.close()
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(DataError) as error:
        read_records((str(path),), "train")
    assert f"Cannot read training shard {path}" in _one_line(error.value)


# --- configs ---

@pytest.mark.parametrize("section, key, value, message", [
    ("train", "loss_chunk", 0, "config.train.loss_chunk=0: must be a whole number of at least 1"),
    ("data", "seq_len", -64, "config.data.seq_len=-64: must be a whole number of at least 1"),
    ("data", "batch_size", 0, "config.data.batch_size=0"),
    ("data", "microbatches", 0, "config.data.microbatches=0"),
    ("train", "steps", 0, "config.train.steps=0"),
    ("train", "log_every", 0, "config.train.log_every=0"),
    ("train", "checkpoint_every", -1, "config.train.checkpoint_every=-1"),
    ("train", "keep_checkpoints", 0, "config.train.keep_checkpoints=0"),
    ("train", "eval_batches", 0, "config.train.eval_batches=0"),
    ("train", "stop_at", -3, "config.train.stop_at=-3: must be a whole number of at least 0"),
    ("optim", "learning_rate", float("nan"), "config.optim.learning_rate=nan: must be 0 or more"),
])
def test_a_number_that_cannot_work_is_a_config_error(section, key, value, message):
    config = default_config()
    config[section][key] = value
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert message in _one_line(error.value)


def test_a_misspelt_key_and_a_model_that_cannot_exist_are_config_errors():
    config = default_config()
    config.train.lr = 1.0
    with pytest.raises(ConfigError, match=r"Unknown config key config.train.lr"):
        validate(config)
    with pytest.raises(ConfigError, match="num_heads must be a positive integer, got 0"):
        preset("tiny", num_heads=0)


@pytest.mark.parametrize("setting, value, message", [
    ("workers", 0, "workers must be at least 1"),
    ("http.deadline_s", 0.0, "http.deadline_s and http.timeout_s must be > 0"),
    ("sources.local.paths", ("/nonexistent/elixir",), "sources.local.paths: /nonexistent/elixir is not a directory"),
])
def test_a_data_config_that_cannot_work_is_a_pipeline_error(tmp_path, setting, value, message):
    config = base_config()
    config.output_dir = str(tmp_path / "out")
    config.sources.otp_docs.enabled = True
    section, _, key = setting.rpartition(".")
    (config[section] if section and "." not in section else config.sources.local if section else config)[key] = value
    with pytest.raises(PipelineError, match=message):
        validate_data_config(config)


# --- model folders ---

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A real tiny Mistral checkpoint (vocabulary 256, no tekken.json), saved by transformers."""
    path = tmp_path_factory.mktemp("model") / "tiny"
    torch.manual_seed(0)
    config = transformers.MistralConfig(**to_hf_config(preset("tiny", num_layers=1, vocab_size=256),
                                                       torch_dtype="float32"))
    transformers.MistralForCausalLM(config).save_pretrained(path)
    return path


def _edit_config(path, **fields):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **fields}))


def _to_params(path, params):
    (path / "config.json").unlink()
    (path / "model.safetensors").rename(path / "consolidated.safetensors")
    (path / "params.json").write_text(params if isinstance(params, str) else json.dumps(params))


TENSOR_FILE = "model.safetensors"
MODEL_CASES = {
    "config.json not JSON": (lambda p: (p / "config.json").write_text("{nope"), ConfigError, "is not valid JSON"),
    "config.json not UTF-8": (lambda p: (p / "config.json").write_bytes(b"\xff\xfe\x00"), ConfigError,
                              "is not valid JSON"),
    "config.json a list": (lambda p: (p / "config.json").write_text("[1]"), ConfigError, "must hold a JSON object"),
    "config.json without hidden_size": (lambda p: _edit_config(p, hidden_size=None), ConfigError, "hidden_size"),
    "num_attention_heads 0": (lambda p: _edit_config(p, num_attention_heads=0), ConfigError,
                              "field 'num_attention_heads' must be a positive integer, got 0"),
    "another architecture": (lambda p: _edit_config(p, model_type="gpt2"), ConfigError,
                             "'model_type' is 'gpt2'; this implementation supports ['llama', 'mistral']"),
    "truncated safetensors": (lambda p: os.truncate(p / TENSOR_FILE, os.path.getsize(p / TENSOR_FILE) // 2),
                              SafetensorsError, "is truncated"),
    "garbage safetensors header": (lambda p: (p / TENSOR_FILE).write_bytes(struct.pack("<Q", 9) + b"{garbage}"),
                                   SafetensorsError, "Cannot read the safetensors header"),
    "empty safetensors": (lambda p: (p / TENSOR_FILE).write_bytes(b""), SafetensorsError, "its header does not fit"),
    "params.json n_heads 0": (lambda p: _to_params(p, dict(dim=64, n_layers=1, head_dim=16, hidden_dim=192, n_heads=0,
                                                           n_kv_heads=2, norm_eps=1e-5, vocab_size=256)),
                              ConfigError, "num_heads must be a positive integer, got 0"),
    "params.json not JSON": (lambda p: _to_params(p, "nah"), ConfigError, "params.json is not valid JSON"),
    "params.json incomplete": (lambda p: _to_params(p, {"dim": 64}), ConfigError, "missing required key"),
    "only a GGUF": (lambda p: [(p / "config.json").unlink(), (p / TENSOR_FILE).unlink(),
                               (p / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")],
                    ModelDirError, "holds neither a Hugging Face checkpoint"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_a_malformed_model_folder_is_one_line(model_dir, tmp_path, case):
    damage, error_type, message = MODEL_CASES[case]
    path = tmp_path / "model"
    shutil.copytree(model_dir, path)
    damage(path)
    with pytest.raises(error_type) as error:
        load_model_dir(path)
    assert message in _one_line(error.value)


def test_a_model_whose_vocabulary_does_not_match_its_tokenizer_is_refused_naming_both(model_dir):
    evaluate = importlib.import_module("launch.evaluate")
    with pytest.raises(ConfigError) as error:  # the model's tokenizer rule (tokenizers/load.py), named by its flag
        evaluate.load_model(str(model_dir), preset("tiny"), seed=0)
    assert (f"--model={model_dir} has a vocabulary of 256 tokens, the packaged Tekken (the folder has no tekken.json) "
            "has 131072" in _one_line(error.value))
    with pytest.raises(FlagError, match="no held-out \\(validation-split\\) text records"):
        evaluate._held_out([SAMPLE], "--perplexity_records")


# --- evaluation inputs ---

@pytest.mark.parametrize("content, message", [
    ("", "holds no completions"),
    ("\n\n", "holds no completions"),
    ("not json\n", ":1: not JSON"),
    ('{"completion": "x"}\n', ":1: every line needs a string `name`"),
    ('{"name": "p", "completions": "x"}\n', "`completions` a list of strings"),
    ('["a", "list"]\n', "expected a JSON object, got list"),
])
def test_a_malformed_completions_file_is_a_benchmark_error(tmp_path, content, message):
    path = tmp_path / "completions.jsonl"
    path.write_text(content)
    with pytest.raises(BenchmarkError) as error:
        load_completions(path)
    assert message in _one_line(error.value)


@pytest.mark.parametrize("content, message", [
    ('{"name": "p", "prompt": "x"}\n', "missing or non-string field(s) ['tests']"),
    (b"\xff\xfe\n", ":1: not JSON"),
])
def test_a_malformed_benchmark_is_a_benchmark_error(tmp_path, content, message):
    path = tmp_path / "benchmark.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BenchmarkError) as error:
        load_problems(path)
    assert message in _one_line(error.value)


# --- checkpoints ---

def _two_steps(directory):
    with Checkpointer(directory, async_save=False) as checkpointer:
        for step in (1, 2):
            checkpointer.save(step, {"w": jax.numpy.full((16,), float(step))}, {"pos": step}, {})


@pytest.mark.parametrize("damage", ["bit flip", "truncation", "deletion", "an extra file"])
def test_a_damaged_latest_checkpoint_is_passed_over(tmp_path, damage):
    _two_steps(tmp_path)
    target = max((p for p in (tmp_path / "2").rglob("*") if p.is_file() and p.name != "integrity.json"),
                 key=lambda p: p.stat().st_size)
    data = target.read_bytes()
    if damage == "bit flip":
        target.write_bytes(data[:10] + bytes([data[10] ^ 0x80]) + data[11:])
    elif damage == "truncation":
        target.write_bytes(data[:-5])
    elif damage == "deletion":
        target.unlink()
    else:
        (tmp_path / "2" / "state" / "stray").write_bytes(b"?")
    with Checkpointer(tmp_path, read_only=True) as checkpointer:
        state, data_state, _ = checkpointer.restore({"w": jax.ShapeDtypeStruct((16,), np.float32)})
    assert data_state == {"pos": 1} and float(state["w"][0]) == 1.0


def test_a_checkpoint_of_another_config_is_one_clear_error_not_a_fallback(tmp_path):
    _two_steps(tmp_path)
    with Checkpointer(tmp_path, read_only=True) as checkpointer, pytest.raises(CheckpointError) as error:
        checkpointer.restore({"w": jax.ShapeDtypeStruct((32,), np.float32)})
    assert "step 2" in _one_line(error.value) and "w: saved (16,), this run (32,)" in str(error.value)
