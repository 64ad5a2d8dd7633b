"""The training config's shape: every section and key a run config may set, with defaults.

`configs/*.py` start from `default_config()` and override; `validate` rejects any key that is not here
(a typo must not silently fall back to a default).
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from devstral_jax.config import preset, to_config_dict
from devstral_jax.errors import ConfigError
from devstral_jax.train import optim


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
    ))
    config.optim = optim.default_config()
    config.train = ml_collections.ConfigDict(dict(
        steps=100,  # the run's length (the learning-rate schedule's horizon)
        stop_at=0,  # >0: checkpoint and stop at this step (resume later with the same config); 0: run to `steps`
        loss_chunk=256,  # sequence positions per cross-entropy chunk (must divide seq_len)
        log_every=10,
        eval_every=50, eval_batches=4,
        checkpoint_every=50, keep_checkpoints=3, async_checkpoint=True,
        max_bad_steps=5,  # stop after this many non-finite steps in a row
        peak_tflops=0.0,  # the device's bf16 peak for MFU; 0: known devices only
        init_adapters_from="",  # a previous stage's workdir: start from its final adapters
    ))
    # What launch/generate.py samples (from a trained workdir, or the random base).
    config.generate = ml_collections.ConfigDict(dict(prompt="defmodule Greeter do\n  def hello(name) do\n",
                                                     max_new_tokens=24))
    # Multi-stage runs: a tuple of ConfigDicts, each with a `name` and section overrides (see configs/stages.py);
    # stage k starts from stage k-1's final adapters. Empty: a single-stage run.
    config.stages = ()
    return config


def validate(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict | None = None,
             prefix: str = "config") -> None:
    """Raises ValueError naming the first key of `config` that the reference shape does not have."""
    reference = default_config() if reference is None else reference
    for key, value in config.items():
        if key not in reference:
            raise ConfigError(f"Unknown config key {prefix}.{key}; known keys: {sorted(reference.keys())}.")
        if isinstance(value, ml_collections.ConfigDict):
            validate(value, reference[key], f"{prefix}.{key}")


def sibling_config(this_file: str, name: str) -> ml_collections.ConfigDict:
    """`get_config()` of `configs/<name>.py` beside `this_file`: lets one config file build on another
    (config files are loaded by path, not imported as a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(this_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
