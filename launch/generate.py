"""Greedy generation from a model with the KV-cache `Sampler`, printed as it is produced.

    python launch/generate.py --config=configs/tiny_cpu.py [--workdir=DIR] [--config.generate.prompt='...']

With --workdir, the model of that training run (its base + the trained adapters of --checkpoint: best by
validation loss by default, or latest, or a step number); without, the model training starts from: the
config's base (`config.base`, e.g. SmolLM2's GGUF) with fresh adapters, which change nothing, or with
`config.base="random"` random weights (noise, but the whole path config -> model -> jit -> tokenizer runs).
The prompt is encoded with the model's real tokenizer (its base's own, else its family's: Tekken for Mistral,
SmolLM2's for Llama), as raw text or, with `config.generate.chat`, as a user turn in the model's chat format;
the completion (`config.generate.max_new_tokens` tokens, fewer if the model emits EOS) streams to the
terminal after every device call, then its token ids and text are listed: exactly what the `Sampler` returns.
"""

from __future__ import annotations

import sys
import time

import jax
import ml_collections
from absl import flags
from flax import nnx
from ml_collections import config_flags

from devstral_jax.cli import run
from devstral_jax import sharding
from devstral_jax.config import from_config_dict
from devstral_jax.data.records import Message
from devstral_jax.errors import FlagError
from devstral_jax.model import Transformer
from devstral_jax.sampler import Sampler, SamplingConfig, TextStream
from devstral_jax.tokenizers import model_tokenizer
from devstral_jax.train.trainer import build_model, restore_trained_model, run_tokenizer

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file, e.g. configs/tiny_cpu.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir to sample from (default: random weights).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "With --workdir: the checkpoint to sample from: best (lowest "
                                  "validation loss), latest, or a step number.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise FlagError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    model_config = from_config_dict(config.model)
    if _WORKDIR.value:
        model, model_config, meta = restore_trained_model(_WORKDIR.value, _CHECKPOINT.value)
        weights = f"trained adapters of checkpoint {meta['checkpoint']['why']} of {_WORKDIR.value}"
        tokenizer = run_tokenizer(ml_collections.ConfigDict(meta["config"]), model_config)
    elif config.base != "random":
        mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
        model = nnx.merge(*build_model(config, model_config, mesh)[:3])
        weights = f"the base {config.base} before training (fresh adapters)"
        tokenizer = run_tokenizer(config, model_config)
    else:
        model, weights = Transformer(model_config, rngs=nnx.Rngs(config.seed)), "random weights"
        tokenizer = model_tokenizer(None, model_config, "config.model")
    prompt = config.generate.prompt
    tokens = (tokenizer.encode_prompt([Message("user", prompt)]) if config.generate.chat
              else tokenizer.encode(prompt, bos=True, eos=False))
    print(f"model: {model_config.num_params:,} parameters ({model_config.num_layers} layers, hidden "
          f"{model_config.hidden_size}, {model_config.num_heads}/{model_config.num_kv_heads} heads), "
          f"{weights}, on {jax.devices()[0].platform}")
    print(f"prompt: {len(tokens)} tokens of {tokenizer.name}{', as a user turn' if config.generate.chat else ''}")
    sys.stdout.write(prompt + ("\n" if config.generate.chat else ""))
    stream = TextStream(tokenizer.decode)
    start = time.perf_counter()
    completion = Sampler(model, tokenizer).generate_tokens(
        [tokens], SamplingConfig(max_new_tokens=config.generate.max_new_tokens), eos_id=tokenizer.eos_id,
        decode=tokenizer.decode, stream=stream)[0]
    seconds = time.perf_counter() - start
    stream.close()
    print()
    print(f"generated {len(completion.tokens)} tokens in {seconds:.2f} s (compilation included): "
          f"{completion.tokens}")
    print("decoded:", repr(completion.text))


if __name__ == "__main__":
    run(main)
