"""The embedded default: a tiny Devstral-architecture model on the CPU (what `make demo` runs)."""

import ml_collections

from devstral_jax.config import preset, to_config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Every ModelConfig field, from the `tiny` preset: override any with --config.model.<field>=...
    config.model = to_config_dict(preset("tiny", dtype="float32", param_dtype="float32", remat_policy="none"))
    config.generate = ml_collections.ConfigDict(dict(
        prompt="defmodule Greeter do\n  def hello(name) do\n",
        max_new_tokens=24,
    ))
    return config
