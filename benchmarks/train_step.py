"""Train-step throughput: tokens/s, MFU and memory of the jitted QLoRA step for a config, random weights.

    python benchmarks/train_step.py --config=configs/devstral_small_qlora_24gb.py        # on a GPU
    python benchmarks/train_step.py --config=configs/devstral_small_qlora_24gb.py --preset=tiny   # anywhere
    python benchmarks/train_step.py --config=configs/tiny_cpu.py [--steps=10] [--config.x.y=...]

The frozen base is random and made on the device in its stored form (NF4 codes and scales drawn directly,
dense tensors from a normal): no host copy, and no dense 24B model to quantize first. The step's speed
does not depend on the values. `--preset=tiny` swaps the model for the tiny Devstral-shaped preset and a short
sequence, keeping the config's execution settings (storage, LoRA, attention kernel, remat): the same code
path, small enough for a CPU. Compilation is excluded; the batch is synthetic (random tokens, full rows).
Prints a table and writes JSON to results/train_step_<platform>_<config>[_<attention>].json or --out.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags

from devstral_jax import sharding
from devstral_jax.cli import run
from devstral_jax.config import EXECUTION_FIELDS, from_config_dict, preset, to_config_dict
from devstral_jax.lora import LoRAParam
from devstral_jax.model import Transformer
from devstral_jax.train.trainer import train_step_and_state
from devstral_jax.train.utilization import flops_per_token, mfu, peak_device_memory_gb, peak_flops

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after one compile step).")
_PRESET = flags.DEFINE_enum("preset", None, ["tiny"], "Run the config's execution settings on this model preset "
                            "instead (tiny: a CPU-sized dry run of the same path).")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")
flags.mark_flags_as_required(["config"])


def _apply_preset(config) -> None:
    """The tiny preset with the config's execution settings, sequences of 256 in 2 microbatches of 1 row."""
    execution = {name: config.model[name] for name in EXECUTION_FIELDS}
    config.model = to_config_dict(preset("tiny", **execution))
    config.data.update(seq_len=256, batch_size=2, microbatches=2)
    config.train.loss_chunk = 128


def random_base(model_config, mesh: jax.sharding.Mesh, seed: int):
    """(graphdef, LoRA state, frozen state): LoRA as training initialises it, the frozen base random in its stored
    form, each array created on the devices in its sharding."""
    abstract = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(seed)))
    sharding.check_params(abstract, mesh)
    graphdef, abstract_lora, abstract_frozen = nnx.split(abstract, LoRAParam, ...)
    lora_shardings = sharding.state_shardings(abstract_lora, mesh)
    lora = jax.jit(lambda: nnx.state(Transformer(model_config, rngs=nnx.Rngs(seed)), LoRAParam),
                   out_shardings=lora_shardings)()  # XLA drops the base this init also draws: it is never used

    def leaf(path, variable, placement, key):
        name = jax.tree_util.keystr(path)
        shape, dtype = variable.shape, variable.dtype

        def make():
            if jnp.issubdtype(dtype, jnp.integer):  # NF4 / int8 codes
                return jax.random.bits(key, shape, jnp.uint8).astype(dtype)
            if "group_scales" in name:  # NF4 block absmax = code * group scale + offset: about 0.01 to 0.05
                return jnp.full(shape, 0.02, dtype)
            if "scale_offset" in name:
                return jnp.full(shape, 0.03, dtype)
            if "scale" in name:  # RMSNorm scales, int8 column scales
                return jnp.full(shape, 1.0 if "norm" in name else 1e-3, dtype)
            return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

        return variable.replace(value=jax.jit(make, out_shardings=placement)())

    leaves = jax.tree_util.tree_leaves_with_path(abstract_frozen, is_leaf=lambda x: isinstance(x, nnx.Variable))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    shardings = jax.tree.leaves(sharding.state_shardings(abstract_frozen, mesh))
    values = [leaf(path, variable, placement, key) for (path, variable), placement, key in zip(leaves, shardings, keys)]
    frozen = jax.tree.unflatten(jax.tree.structure(abstract_frozen, is_leaf=lambda x: isinstance(x, nnx.Variable)),
                                values)
    return graphdef, lora, frozen


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    if _PRESET.value:
        _apply_preset(config)
    model_config = from_config_dict(config.model)
    mesh = sharding.make_mesh(config.mesh)
    graphdef, lora, frozen = random_base(model_config, mesh, config.seed)
    step, state = train_step_and_state(config, model_config, graphdef, lora, frozen, mesh)

    d = config.data
    shape = (d.microbatches, d.batch_size // d.microbatches, d.seq_len)
    rng = np.random.default_rng(0)
    host = dict(inputs=rng.integers(0, model_config.vocab_size, shape, dtype=np.int32),
                targets=rng.integers(0, model_config.vocab_size, shape, dtype=np.int32),
                loss_mask=np.ones(shape, np.int32), segment_ids=np.ones(shape, np.int32),
                positions=np.broadcast_to(np.arange(d.seq_len, dtype=np.int32), shape).copy())
    batch = sharding.place_batch(host, mesh)

    compile_start = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_seconds = time.perf_counter() - compile_start
    memory = compiled.memory_analysis()
    state, metrics = compiled(state, frozen, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(_STEPS.value):
        start = time.perf_counter()
        state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)

    seconds = statistics.median(times)
    tokens = d.batch_size * d.seq_len
    flops = flops_per_token(model_config, state.lora, d.seq_len) * tokens
    peak = peak_flops(config)
    fused_calls = compiled.as_text().count('custom_call_target="__cudnn$fmha')
    result = {
        "device": str(jax.devices()[0].device_kind), "devices": jax.device_count(), "preset": _PRESET.value,
        "config": config.model.to_dict(), "attention_impl": model_config.attention_impl,
        "cudnn_fused_attention_calls": fused_calls, "batch_rows": d.batch_size, "seq_len": d.seq_len,
        "microbatches": d.microbatches, "compile_seconds": compile_seconds, "step_seconds_median": seconds,
        "tokens_per_s": tokens / seconds, "tflops_per_s": flops / seconds / 1e12,
        "mfu": mfu(flops / seconds, peak) if peak else None,
        "compiled_temp_gb": memory.temp_size_in_bytes / 1e9,
        "compiled_argument_gb": memory.argument_size_in_bytes / 1e9,
        "compiled_peak_gb": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                             - memory.alias_size_in_bytes + memory.temp_size_in_bytes) / 1e9,
        "peak_device_memory_gb": peak_device_memory_gb(),
        "loss": float(metrics["loss"]),
    }
    print(f"{'device':<28}{result['device']} x{result['devices']}")
    for key in ("attention_impl", "batch_rows", "seq_len", "microbatches", "compile_seconds", "step_seconds_median",
                "tokens_per_s", "tflops_per_s", "mfu", "compiled_temp_gb", "compiled_peak_gb",
                "peak_device_memory_gb"):
        value = result[key]
        print(f"{key:<28}{value:.4g}" if isinstance(value, float) else f"{key:<28}{value}")
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
    suffix = ("" if model_config.attention_impl == "xla" else f"_{model_config.attention_impl}") + \
        (f"_{_PRESET.value}" if _PRESET.value else "")
    out = _OUT.value or os.path.join(os.path.dirname(__file__), "results",
                                     f"train_step_{jax.devices()[0].platform}_{name}{suffix}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    run(main)
