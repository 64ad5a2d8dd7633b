"""The training config's shape: every section and key a run config may set, with defaults.

`configs/*.py` start from `default_config()` and override; `validate` rejects any key that is not here
(a typo must not silently fall back to a default).
"""

from __future__ import annotations

import importlib.util
import os
import types

import ml_collections

from devstral_jax.config import preset, to_config_dict
from devstral_jax.data.curriculum import parse_curriculum
from devstral_jax.errors import ConfigError
from devstral_jax.train import ewc, optim, rehearsal


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = to_config_dict(preset("tiny"))
    # Where the frozen base comes from: "random" (tests, demo, benchmarks) or a Hugging Face / Mistral model dir
    # (then config.model must describe that checkpoint: its preset, with the execution fields you want).
    config.base = "random"
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: fill with the devices left
    config.data = ml_collections.ConfigDict(dict(
        train_paths=("devstral_jax/data/sample/sample.jsonl",),
        validation_paths=("devstral_jax/data/sample/sample.jsonl",),
        tokenizer="",  # a tekken.json, tokenizer.json, GGUF or model dir; empty: the base's own, else the family's
        seq_len=512, batch_size=8, microbatches=1, packing_bins=16, worker_count=0, shuffle=True,
        # Sources mixed by weight, each a filter over the records (devstral_jax/data/mixture.py); empty: all records.
        mixture=(),
        # Records admitted from easy to hard (devstral_jax/data/curriculum.py); pacing "none": all from the start.
        # steps: the step from which everything is admitted (0: train.steps); jumps: for pacing "step".
        curriculum=ml_collections.ConfigDict(dict(pacing="none", start=0.2, steps=0, jumps=4,
                                                  buckets=(0.0, 0.25, 0.5, 0.75, 1.0))),
    ))
    config.optim = optim.default_config()
    config.ewc = ewc.default_config()  # Elastic Weight Consolidation in later stages (devstral_jax/train/ewc.py)
    config.rehearsal = rehearsal.default_config()  # self-synthesized rehearsal in later stages (train/rehearsal.py)
    config.train = ml_collections.ConfigDict(dict(
        steps=100,  # the run's length (the learning-rate schedule's horizon)
        stop_at=0,  # >0: checkpoint and stop at this step (resume later with the same config); 0: run to `steps`
        loss_chunk=256,  # sequence positions per cross-entropy chunk (must divide seq_len)
        log_every=10,
        eval_every=50, eval_batches=4,
        checkpoint_every=50, keep_checkpoints=3, async_checkpoint=True,
        max_bad_steps=5,  # stop after this many non-finite steps in a row
        dead_steps=20,  # stop after this many steps in a row at the uniform loss with a zero gradient; 0: never
        allow_changes="",  # resume despite these fingerprinted settings changing, e.g. "train.steps,data.seq_len"
        peak_tflops=0.0,  # the device's bf16 peak for MFU; 0: known devices only
        init_adapters_from="",  # a previous stage's workdir: start from its final adapters
        keep_optimizer=False,  # with init_adapters_from: also continue its optimizer state (else a fresh optimizer)
    ))
    # What launch/generate.py samples (from a trained workdir, or the base); chat: the prompt is a user turn.
    config.generate = ml_collections.ConfigDict(dict(prompt="defmodule Greeter do\n  def hello(name) do\n",
                                                     max_new_tokens=24, chat=False))
    # Multi-stage runs: a tuple of ConfigDicts, each with a `name` and section overrides (see configs/stages.py);
    # stage k starts from stage k-1's final adapters. Empty: a single-stage run.
    config.stages = ()
    return config


# Settings that must be whole numbers of at least the given value.
_AT_LEAST = {"data.seq_len": 1, "data.batch_size": 1, "data.microbatches": 1, "data.packing_bins": 1,
             "data.worker_count": 0, "train.steps": 1, "train.stop_at": 0, "train.loss_chunk": 1,
             "train.log_every": 1, "train.eval_every": 1, "train.eval_batches": 1, "train.checkpoint_every": 1,
             "train.keep_checkpoints": 1, "train.max_bad_steps": 1, "train.dead_steps": 0,
             "optim.warmup_steps": 0, "rehearsal.prompts": 1, "rehearsal.max_new_tokens": 1,
             "rehearsal.batch_size": 1}


def validate(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict | None = None,
             prefix: str = "config") -> None:
    """Raises ConfigError naming the first key of `config` that the reference shape does not have, or the
    first setting whose value cannot work (a zero or negative size, count or cadence)."""
    reference = default_config() if reference is None else reference
    for key, value in config.items():
        if key not in reference:
            raise ConfigError(f"Unknown config key {prefix}.{key}; known keys: {sorted(reference.keys())}.")
        if isinstance(value, ml_collections.ConfigDict):
            validate(value, reference[key], f"{prefix}.{key}")
    if prefix == "config":
        _check_values(config)


def _check_values(config: ml_collections.ConfigDict) -> None:
    for name, least in _AT_LEAST.items():
        section, key = name.split(".")
        value = config[section][key]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"config.{name}={value!r}: must be a whole number of at least {least}.")
    if not config.optim.learning_rate >= 0:
        raise ConfigError(f"config.optim.learning_rate={config.optim.learning_rate!r}: must be 0 or more.")
    rehearsal.check_config(config)
    parse_curriculum(config.data.curriculum, config.train.steps)


def sibling_module(this_file: str, name: str) -> types.ModuleType:
    """The module `configs/<name>.py` beside `this_file` (config files are loaded by path, not imported as a
    package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(this_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling_config(this_file: str, name: str) -> ml_collections.ConfigDict:
    """`get_config()` of `configs/<name>.py` beside `this_file`: lets one config file build on another."""
    return sibling_module(this_file, name).get_config()
