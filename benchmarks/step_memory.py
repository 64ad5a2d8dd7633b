"""Will a training config fit? The compiled train step's memory, from abstract shapes: no weights allocated.

    python benchmarks/step_memory.py --config=configs/devstral_small_qlora_gpu.py
    python benchmarks/step_memory.py --config=configs/devstral_small_qlora_gpu.py --config.model.attention_impl=chunked

Lowers and compiles the real jitted step (the same function launch/train.py runs) for the config's model,
mesh and batch on this machine's devices, and prints XLA's memory analysis per device: arguments (frozen
base, LoRA, optimizer state, batch), outputs, temporaries, generated code. Compiled for a CPU, the figures
follow the CPU compiler's fusion decisions and only approximate a GPU's; run it on the target device for
the real ones. Writes JSON to results/step_memory_<platform>_<config>[_<attention>].json or --out.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx
from ml_collections import config_flags

from devstral_jax import sharding
from devstral_jax.cli import run
from devstral_jax.config import from_config_dict
from devstral_jax.lora import LoRAParam
from devstral_jax.model import Transformer
from devstral_jax.train.optim import make_optimizer
from devstral_jax.train.step import init_state, jit_train_step, make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    model_config = from_config_dict(config.model)
    mesh = sharding.make_mesh(config.mesh)
    abstract = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))
    graphdef, lora, frozen = nnx.split(abstract, LoRAParam, ...)
    tx, schedule = make_optimizer(config.optim, lora, model_config.num_layers, config.train.steps)
    state = jax.eval_shape(lambda lora: init_state(lora, tx, config.seed), lora)
    step, _ = jit_train_step(make_train_step(graphdef, tx, schedule, config.train.loss_chunk,
                                             model_config.lora_dropout > 0), state, frozen, mesh)
    d = config.data
    shape = (d.microbatches, d.batch_size // d.microbatches, d.seq_len)
    batch = {name: jax.ShapeDtypeStruct(shape, jnp.int32)
             for name in ("inputs", "targets", "loss_mask", "segment_ids", "positions")}

    start = time.perf_counter()
    memory = step.lower(state, frozen, batch).compile().memory_analysis()
    gb = lambda n: n / 1e9  # noqa: E731
    result = {
        "device": jax.devices()[0].device_kind, "devices": jax.device_count(), "mesh": dict(mesh.shape),
        "attention_impl": model_config.attention_impl, "remat_policy": model_config.remat_policy,
        "rows_per_microbatch": shape[1], "seq_len": d.seq_len, "compile_seconds": time.perf_counter() - start,
        "argument_gb": gb(memory.argument_size_in_bytes), "output_gb": gb(memory.output_size_in_bytes),
        "alias_gb": gb(memory.alias_size_in_bytes), "temp_gb": gb(memory.temp_size_in_bytes),
        "generated_code_gb": gb(memory.generated_code_size_in_bytes),
    }
    result["total_gb"] = result["argument_gb"] + result["output_gb"] - result["alias_gb"] + result["temp_gb"]
    for key, value in result.items():
        print(f"{key:<22}{value:.4g}" if isinstance(value, float) else f"{key:<22}{value}")
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
    suffix = "" if model_config.attention_impl == "xla" else f"_{model_config.attention_impl}"
    out = Path(_OUT.value or Path(__file__).parent / "results" /
               f"step_memory_{jax.devices()[0].platform}_{name}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    run(main)
