"""Will a training config fit? The compiled train step's memory per device, from abstract shapes: no weights allocated.

    python benchmarks/step_memory.py --config=configs/devstral_small_qlora_24gb.py --target=h100
    python benchmarks/step_memory.py --config=configs/devstral_small_qlora_gpu.py --target=h100 --mesh=fsdp=8
    python benchmarks/step_memory.py --config=configs/devstral_small_qlora_24gb.py --target=h100 \
        --compiler_option=xla_gpu_enable_triton_gemm=false     # cuBLAS for every GEMM
    python benchmarks/step_memory.py --config=configs/tiny_cpu.py                # this machine's devices

Lowers and compiles the real jitted step (the same function launch/train.py runs) for the config's model,
mesh and batch, and prints XLA's buffer assignment per device: arguments (each group of them: frozen base,
LoRA, optimizer state, batch), outputs, aliased, temporaries and peak (arguments + outputs - aliased +
temporaries), then the largest temporaries, each with its shape, the HLO instruction that
defines it, the JAX operation and the line of this project's code that made it: a regression names its culprit.

`--target` compiles for a GPU without one (XLA's deviceless AOT; needs the CUDA plugin of the pinned JAX:
`pip install -e '.[gpu-aot]'`, and JAX_PLATFORMS=cpu): `h100`, `h200` (benchmarks/gpu_targets/) or a
GpuTargetConfig .txtpb file. No autotuning happens, so every GEMM gets a default Triton configuration; a real
GPU's autotuner may pick cuBLAS instead (try both). Without `--target` the step compiles for this machine's
devices; compiled for a CPU the figures overstate a GPU's (the CPU compiler fuses less and keeps more
float32 temporaries): they are labelled so. Outside XLA's figures: the CUDA context (~0.5-1 GB) and
allocator fragmentation. Writes JSON to results/step_memory_<target>_<config>[_<attention>][_<mesh>].json
or --out.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx
from ml_collections import config_flags

from devstral_jax import sharding
from devstral_jax.cli import run
from devstral_jax.config import from_config_dict
from devstral_jax.errors import ConfigError
from devstral_jax.lora import LoRAParam
from devstral_jax.model import Transformer
from devstral_jax.model.linear import FrozenWeight
from devstral_jax.train.optim import make_optimizer
from devstral_jax.train.step import init_state, jit_train_step, make_train_step

TARGETS_DIR = Path(__file__).parent / "gpu_targets"
TARGETS = {"h100": TARGETS_DIR / "h100_sxm.txtpb", "h200": TARGETS_DIR / "h200.txtpb"}
CPU_CAVEAT = ("compiled for CPU (overstates a GPU's memory: the CPU compiler fuses less and keeps float32 "
              "temporaries; use --target=h100 for a GPU's figures)")
CUDNN_ATTENTION = "__cudnn$fmha"  # the custom-call target prefix of cuDNN's fused attention in XLA:GPU

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_TARGET = flags.DEFINE_string("target", None, "Compile for this GPU without one: h100, h200 or a GpuTargetConfig "
                              ".txtpb file. Default: this machine's devices.")
_MESH = flags.DEFINE_string("mesh", None, "Mesh axes for the compile, e.g. 'fsdp=8' or 'data=2,fsdp=4' "
                            "(default: the config's mesh on one device per axis product).")
_COMPILER_OPTIONS = flags.DEFINE_multi_string("compiler_option", [], "An XLA option for this compile, name=value "
                                              "(e.g. xla_gpu_enable_triton_gemm=false).")
_TOP = flags.DEFINE_integer("top", 12, "How many of the largest temporaries to list.")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")
flags.mark_flags_as_required(["config"])


@dataclasses.dataclass(frozen=True)
class Buffer:
    """One buffer of the step's temporaries: its size and what made it."""

    bytes: int
    shape: str  # e.g. f32[8,4096,5120]
    instruction: str  # the HLO instruction that defines it (after optimization), e.g. loop_convert_fusion.3
    opcode: str  # fusion, custom-call, dynamic-update-slice, ...
    op_name: str  # the JAX operation it comes from, e.g. jit(step)/.../dot_general
    source: str  # the innermost line of this project's code on its stack, e.g. devstral_jax/model/linear.py:63
    shares_with: int  # how many other (smaller or equal) buffers XLA placed at the same offset, at other times


def _devices(target: str | None, count: int) -> list:
    """`count` devices to compile for: deviceless GPUs of `target`, or this machine's first ones."""
    if target is None:
        if count > jax.device_count():
            raise ConfigError(f"The mesh needs {count} devices but this machine has {jax.device_count()}; "
                              "compile for a GPU target (--target) or use a smaller --mesh.")
        return jax.devices()[:count]
    path = TARGETS.get(target, Path(target))
    if not path.is_file():
        raise ConfigError(f"--target={target!r} is neither {sorted(TARGETS)} nor a GpuTargetConfig .txtpb file.")
    from jax.experimental import topologies  # the CUDA plugin registers "cuda" (pip install -e '.[gpu-aot]')

    try:
        topology = topologies.get_topology_desc(platform="cuda", target_config=path.read_text(),
                                                topology=f"1x1x{count}")
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"Cannot compile for a GPU target here ({e}). Install the CUDA plugin of the pinned JAX "
                          "(pip install -e '.[gpu-aot]') and run with JAX_PLATFORMS=cpu.") from e
    return list(topology.devices)


def _mesh_request(config_mesh: dict[str, int], flag: str | None) -> dict[str, int]:
    if not flag:
        return {axis: (1 if size == -1 else size) for axis, size in config_mesh.items()}
    request = {axis: 1 for axis in sharding.MESH_AXES}
    for item in flag.split(","):
        axis, _, size = item.partition("=")
        if axis.strip() not in request or not size.strip().isdigit():
            raise ConfigError(f"--mesh={flag!r}: write axis=size pairs over {sharding.MESH_AXES}, e.g. fsdp=8.")
        request[axis.strip()] = int(size)
    return request


def _compiler_options(items: list[str], dump_dir: str) -> dict[str, Any]:
    options: dict[str, Any] = {"xla_dump_to": dump_dir, "xla_dump_hlo_module_re": "jit_step"}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--compiler_option={item!r}: write name=value.")
        options[name] = {"true": True, "false": False}.get(value.lower(), value)
    return options


def _per_device_bytes(tree: Any, shardings: Any) -> int:
    """Bytes one device holds of a pytree of abstract arrays (or Variables) placed by a matching tree of shardings."""
    sizes = jax.tree.map(lambda s, x: math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize, shardings, tree,
                         is_leaf=lambda x: isinstance(x, nnx.Variable))
    return sum(jax.tree.leaves(sizes))


def _argument_groups(state: Any, state_shardings: Any, frozen: nnx.State, mesh: jax.sharding.Mesh,
                     batch: dict) -> dict[str, int]:
    """Per-device bytes of each kind of argument: what the arguments figure is made of."""
    quantized, dense = nnx.split_state(frozen, FrozenWeight, ...)
    groups = {"frozen quantized kernels": (quantized, sharding.state_shardings(quantized, mesh)),
              "frozen dense (embedding, lm_head, norms)": (dense, sharding.state_shardings(dense, mesh)),
              "lora": (state.lora, state_shardings.lora), "optimizer state": (state.opt_state,
                                                                              state_shardings.opt_state),
              "batch": (batch, {k: v.sharding for k, v in batch.items()})}
    return {name: _per_device_bytes(tree, shardings) for name, (tree, shardings) in groups.items()}


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+|\(.*?\)) ([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")


def _section(hlo_text: str, title: str) -> str:
    """One of the debug tables at the top of an HLO dump (FileNames, FileLocations, StackFrames...)."""
    match = re.search(rf"^{title}\n(.*?)(?:\n\n|\Z)", hlo_text, re.M | re.S)
    return match.group(1) if match else ""


def _source_lines(hlo_text: str) -> Any:
    """A resolver from an HLO stack frame id to the innermost line of this repository's code, as path:line."""
    files = dict(re.findall(r'^(\d+) "(.*)"$', _section(hlo_text, "FileNames"), re.M))
    locations = {i: (file_id, line) for i, file_id, line in re.findall(
        r"^(\d+) \{file_name_id=(\d+) function_name_id=\d+ line=(\d+)", _section(hlo_text, "FileLocations"), re.M)}
    frames = {int(i): (location, int(parent)) for i, location, parent in re.findall(
        r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)\}", _section(hlo_text, "StackFrames"), re.M)}
    root = str(Path(__file__).resolve().parent.parent) + os.sep

    def source(frame_id: int | None) -> str:
        seen = set()
        while frame_id in frames and frame_id not in seen:
            seen.add(frame_id)
            location, parent = frames[frame_id]
            file_id, line = locations.get(location, ("", "0"))
            path = files.get(file_id, "")
            if path.startswith(root) and "/benchmarks/" not in path:
                return f"{path[len(root):]}:{line}"
            frame_id = parent
        return ""

    return source


def _instructions(hlo_text: str) -> dict[str, tuple[str, str, str, int | None, bool]]:
    """instruction name -> (shape, opcode, JAX op_name, stack frame id, whether it is an argument of the step)."""
    instructions, in_entry = {}, False
    for line in hlo_text.splitlines():
        if line and not line[0].isspace():
            in_entry = line.startswith("ENTRY")
        match = _INSTRUCTION.match(line)
        if match:
            op_name, frame = _OP_NAME.search(line), _FRAME_ID.search(line)
            instructions[match.group(1)] = (match.group(2), match.group(3), op_name.group(1) if op_name else "",
                                            int(frame.group(1)) if frame else None,
                                            in_entry and match.group(3) == "parameter")
    return instructions


def _element_shape(shape: str, index: str) -> str:
    """The shape of element `index` (e.g. "{2}") of a value, without its layout."""
    if index not in ("{}", "") and shape.startswith("("):
        elements = re.findall(r"\w+\[[\d,]*\]", shape)
        position = int(index.strip("{}").split(",")[0])
        shape = elements[position] if position < len(elements) else shape
    return re.sub(r"\{[^}]*\}$", "", shape)


def _largest_temporaries(dump_dir: str, top: int) -> tuple[list[Buffer], str]:
    """The largest buffers of XLA's temporary allocation, and the optimized HLO text.

    Buffers placed at the same offset (one after another in time) are one row: the largest of them names it,
    `shares_with` counts the rest.
    """
    assignment = glob.glob(os.path.join(dump_dir, "*jit_step*after_optimizations-buffer-assignment.txt"))
    hlo = glob.glob(os.path.join(dump_dir, "*jit_step*after_optimizations.txt"))
    if not assignment or not hlo:
        raise RuntimeError(f"XLA wrote no after-optimizations dump of jit_step to {dump_dir}.")
    hlo_text = Path(hlo[0]).read_text()
    instructions, source = _instructions(hlo_text), _source_lines(hlo_text)
    temp = re.search(r"^allocation \d+: size \d+, preallocated-temp:\n((?: value: .*\n?)*)",
                     Path(assignment[0]).read_text(), re.M)
    by_offset: dict[int, list[tuple[int, str, str]]] = {}
    for name, index, size, offset in re.findall(r"value: <\d+ ([\w.\-]+)(\{[\d,]*\})? @\d+> "
                                                r"\(size=(\d+),offset=(\d+)\)", temp.group(1) if temp else ""):
        by_offset.setdefault(int(offset), []).append((int(size), name, index or "{}"))
    buffers = []
    for values in by_offset.values():
        size, name, index = max(values)
        shape, opcode, op_name, frame, _ = instructions.get(name, ("?", "?", "", None, False))
        if opcode == "parameter":  # a loop's carried state (a scan's residuals, an accumulator)
            opcode = "loop carry"
        buffers.append(Buffer(size, _element_shape(shape, index), name + index, opcode, op_name, source(frame),
                              len(values) - 1))
    buffers.sort(key=lambda b: -b.bytes)
    return buffers[:top], hlo_text


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    model_config = from_config_dict(config.model)
    request = _mesh_request(dict(config.mesh), _MESH.value)
    devices = _devices(_TARGET.value, math.prod(request.values()))
    mesh = sharding.make_mesh(request, devices)
    abstract = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))
    graphdef, lora, frozen = nnx.split(abstract, LoRAParam, ...)
    sharding.check_params(abstract, mesh)
    tx, schedule = make_optimizer(config.optim, lora, model_config.num_layers, config.train.steps)
    state = jax.eval_shape(lambda lora: init_state(lora, tx, config.seed), lora)
    step, state_shardings = jit_train_step(make_train_step(graphdef, tx, schedule, config.train.loss_chunk,
                                                           model_config.lora_dropout > 0), state, frozen, mesh)
    d = config.data
    shape = (d.microbatches, d.batch_size // d.microbatches, d.seq_len)
    batch = {name: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding.batch_sharding(mesh))
             for name in ("inputs", "targets", "loss_mask", "segment_ids", "positions")}
    with tempfile.TemporaryDirectory() as dump_dir:
        start = time.perf_counter()
        compiled = step.lower(state, frozen, batch).compile(_compiler_options(_COMPILER_OPTIONS.value, dump_dir))
        compile_seconds = time.perf_counter() - start
        memory = compiled.memory_analysis()
        buffers, hlo_text = _largest_temporaries(dump_dir, _TOP.value)

    gb = lambda n: round(n / 1e9, 3)  # noqa: E731
    target = _TARGET.value or jax.devices()[0].platform
    result = {
        "compiled_for": CPU_CAVEAT if devices[0].platform == "cpu" else devices[0].device_kind,
        "target": target, "devices": len(devices), "mesh": dict(mesh.shape),
        "compiler_options": list(_COMPILER_OPTIONS.value),
        "attention_impl": model_config.attention_impl, "remat_policy": model_config.remat_policy,
        "lora_dropout": model_config.lora_dropout, "rows_per_microbatch": shape[1],
        "rows_per_microbatch_per_device": shape[1] // sharding.data_parallel_size(mesh),
        "microbatches": shape[0], "seq_len": d.seq_len, "loss_chunk": config.train.loss_chunk,
        "compile_seconds": round(compile_seconds, 1),
        "argument_gb": gb(memory.argument_size_in_bytes), "output_gb": gb(memory.output_size_in_bytes),
        "alias_gb": gb(memory.alias_size_in_bytes), "temp_gb": gb(memory.temp_size_in_bytes),
        "peak_gb": gb(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                      + memory.temp_size_in_bytes),
        "arguments_per_device_gb": {name: gb(size) for name, size in
                                    _argument_groups(state, state_shardings, frozen, mesh, batch).items()},
        "cudnn_fused_attention_calls": hlo_text.count(f'custom_call_target="{CUDNN_ATTENTION}'),
        "largest_temporaries": [dict(dataclasses.asdict(b), gb=gb(b.bytes)) for b in buffers],
    }
    _print(result)
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
    suffix = "" if model_config.attention_impl == "xla" else f"_{model_config.attention_impl}"
    suffix += "".join(f"_{a}{n}" for a, n in mesh.shape.items() if n > 1)
    suffix += "_cublas" if "xla_gpu_enable_triton_gemm=false" in _COMPILER_OPTIONS.value else ""
    label = Path(target).stem if _TARGET.value else target
    out = Path(_OUT.value or Path(__file__).parent / "results" / f"step_memory_{label}_{name}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def _print(result: dict) -> None:
    print(f"compiled for: {result['compiled_for']} x{result['devices']}, mesh {result['mesh']}"
          + (f", {' '.join(result['compiler_options'])}" if result["compiler_options"] else ""))
    print(f"{result['attention_impl']} attention, remat {result['remat_policy']}, {result['microbatches']} "
          f"microbatch(es) of {result['rows_per_microbatch']} row(s) x {result['seq_len']} tokens")
    print(f"\n{'per device':<48}{'GB':>9}")
    for key in ("argument_gb", "output_gb", "alias_gb", "temp_gb", "peak_gb"):
        print(f"{key[:-3]:<48}{result[key]:>9.3f}")
    print(f"\n{'arguments':<48}{'GB':>9}")
    for key, value in result["arguments_per_device_gb"].items():
        print(f"  {key:<46}{value:>9.3f}")
    print(f"\n{'largest temporaries':<48}{'GB':>9}  HLO instruction (opcode) +others at its offset; JAX op; source")
    for b in result["largest_temporaries"]:
        print(f"  {b['shape'][:46]:<46}{b['gb']:>9.3f}  {b['instruction']} ({b['opcode']}) +{b['shares_with']}; "
              f"{b['op_name'][-60:]}; {b['source']}")
    if result["cudnn_fused_attention_calls"]:
        print(f"\ncuDNN fused attention custom calls in the compiled step: {result['cudnn_fused_attention_calls']}")


if __name__ == "__main__":
    run(main)
