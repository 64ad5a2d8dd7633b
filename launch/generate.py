"""Greedy generation from a Devstral-architecture model, decoded with the real Tekken tokenizer.

    python launch/generate.py --config=configs/tiny_cpu.py [--workdir=DIR] [--config.generate.prompt='...']

With --workdir, the model of that training run (its base + trained adapters); without, the config's
model with random weights (noise, but the whole path config -> model -> jit -> tokenizer runs).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from devstral_jax.cli import run
from devstral_jax.config import ConfigError, from_config_dict
from devstral_jax.errors import CheckpointError
from devstral_jax.model import Transformer
from devstral_jax.tokenizer import load_tekken
from devstral_jax.train.trainer import TrainingError, restore_trained_model

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file, e.g. configs/tiny_cpu.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir to sample from (default: random weights).")
flags.mark_flags_as_required(["config"])


def greedy_generate(model: Transformer, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Appends the argmax token `max_new_tokens` times. One fixed-length buffer, so one compilation:
    causal attention makes the not-yet-written slots invisible to the positions that are read."""
    buffer = jnp.zeros((1, len(prompt) + max_new_tokens), jnp.int32).at[0, : len(prompt)].set(jnp.asarray(prompt))

    @nnx.jit
    def next_token(model: Transformer, buffer: jax.Array, length: jax.Array) -> jax.Array:
        logits = model(buffer)
        return jnp.argmax(logits[0, length - 1]).astype(jnp.int32)

    for length in range(len(prompt), buffer.shape[1]):
        buffer = buffer.at[0, length].set(next_token(model, buffer, jnp.int32(length)))
    return np.asarray(buffer[0, len(prompt):]).tolist()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    try:
        model_config = from_config_dict(config.model)
    except ConfigError as e:
        raise app.UsageError(str(e)) from None
    tokenizer = load_tekken()
    if model_config.vocab_size < tokenizer.n_words:
        raise app.UsageError(f"config.model.vocab_size={model_config.vocab_size} is smaller than Tekken's "
                             f"{tokenizer.n_words} tokens.")

    if _WORKDIR.value:
        try:
            model, model_config, meta = restore_trained_model(_WORKDIR.value)
        except (CheckpointError, TrainingError) as e:
            raise app.UsageError(str(e)) from None
        weights = f"trained adapters from {_WORKDIR.value}"
    else:
        model, weights = Transformer(model_config, rngs=nnx.Rngs(config.seed)), "random weights"
    prompt = tokenizer.encode(config.generate.prompt, bos=True, eos=False)
    print(f"model: {model_config.num_params:,} parameters ({model_config.num_layers} layers, hidden "
          f"{model_config.hidden_size}, {model_config.num_heads}/{model_config.num_kv_heads} heads), "
          f"{weights}, on {jax.devices()[0].platform}")
    print(f"prompt: {len(prompt)} Tekken tokens")
    start = time.perf_counter()
    new_tokens = greedy_generate(model, prompt, config.generate.max_new_tokens)
    seconds = time.perf_counter() - start
    print(f"generated {len(new_tokens)} tokens in {seconds:.2f} s (compilation included): {new_tokens}")
    print("decoded:", repr(tokenizer.decode(new_tokens)))


if __name__ == "__main__":
    run(main)
