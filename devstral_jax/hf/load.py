"""Loads a Devstral/Mistral checkpoint directory into our model, streamed: host memory stays a few tensors.

The model is built abstractly (`nnx.eval_shape`: shapes only, nothing allocated), then each parameter is
filled on its devices. For a stacked (scanned) parameter we allocate the `[layers, ...]` array sharded as
its logical axes ask, then for each layer read one HF tensor from disk, hand each device its shard of it
(`jax.make_array_from_callback`), and there transpose it to our `[in, out]` layout, convert the dtype or
quantize it (NF4/int8, where the config asks), and write it into row `i` in place (`dynamic_update_slice`
on the donated stack). So the host holds one tensor at a time, and the devices the model plus one layer's
tensor. With `progress`, a progress bar runs over the bytes and the quantization report prints at the end.

LoRA adapters (if the config has them) start as a fresh init would make them: A random, B zero.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from mistral_common.tokens.tokenizers.tekken import Tekkenizer
from tqdm import tqdm

from devstral_jax import sharding
from devstral_jax.config import ModelConfig
from devstral_jax.hf import param_map
from devstral_jax.hf.model_dir import ModelDir, open_model_dir
from devstral_jax.hf.param_map import ParamName
from devstral_jax.lora import LoRAParam
from devstral_jax.model import Transformer
from devstral_jax.model.linear import Int8Kernel, NF4Kernel
from devstral_jax.quant import int8, nf4
from devstral_jax.quant.report import QuantRow, format_table, measure
from devstral_jax.tokenizer import load_tekken

# (path like "layers/attn/q_proj/kernel/codes", logical axes, shape) -> how that array is sharded on the mesh.
PartitionSpecFn = Callable[[str, tuple[str | None, ...], tuple[int, ...]], P]


def replicated(path: str, logical_axes: tuple[str | None, ...], shape: tuple[int, ...]) -> P:
    """Every device holds every parameter whole."""
    return P()


@dataclasses.dataclass
class Loaded:
    model: Transformer
    config: ModelConfig
    quant_report: list[QuantRow]  # one row per quantized tensor (empty when nothing is quantized)
    tokenizer_file: str | None  # the directory's tekken.json, if it has one

    @functools.cached_property
    def tokenizer(self) -> Tekkenizer | None:
        """The directory's Tekken tokenizer (read on first use: it takes a few seconds)."""
        return load_tekken(self.tokenizer_file) if self.tokenizer_file else None


def load(path: str | os.PathLike, *, format: str = "auto", mesh: Mesh | None = None,
         partition_spec: PartitionSpecFn | None = None, seed: int = 0, progress: bool = True,
         **execution: Any) -> Loaded:
    """Loads the checkpoint at `path` (HF or consolidated, see model_dir.py) onto `mesh` (default: the first device).

    Each array is placed by `partition_spec` (default: sharding.py's logical-axis rules on `mesh`, or whole
    on the one device without a mesh). `execution` sets ModelConfig's execution fields, e.g.
    `param_dtype="bfloat16", mlp_storage="nf4", lora_rank=16`; `seed` initialises LoRA adapters. Checkpoint
    problems raise ModelDirError/ConfigError before any weight is read.
    """
    model_dir = open_model_dir(path, format, **execution)
    config = model_dir.config
    if partition_spec is None:
        partition_spec = replicated if mesh is None else \
            (lambda _, axes, shape: sharding.logical_to_spec(axes, shape, mesh))
    mesh = mesh if mesh is not None else Mesh(np.array(jax.devices()[:1]), ("data",))
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(seed)))
    placement = _Placement(mesh, partition_spec)

    report: list[QuantRow] = []
    with tqdm(total=model_dir.nbytes, unit="B", unit_scale=True, desc=f"loading {os.path.basename(path)}",
              disable=not progress) as bar:
        for names in _targets(model, model_dir.names):
            report += _load_target(model, model_dir, names, placement, bar)
    if progress and report:
        print(format_table(report), file=sys.stderr)
    if config.lora_rank:
        _init_lora(model, config, seed, placement)
    for variable_path, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Variable) and isinstance(variable.get_value(), jax.ShapeDtypeStruct):
            # A bug here, not a problem of the input.
            raise RuntimeError(f"Parameter {'/'.join(map(str, variable_path))} was not loaded.")
    return Loaded(model, config, report, model_dir.tokenizer_file)


@dataclasses.dataclass(frozen=True)
class _Placement:
    mesh: Mesh
    partition_spec: PartitionSpecFn

    def spec(self, path: str, axes: tuple[str | None, ...], shape: tuple[int, ...]) -> tuple:
        """The PartitionSpec as a tuple with one entry per dimension."""
        spec = tuple(self.partition_spec(path, tuple(axes), tuple(shape)))
        return spec + (None,) * (len(shape) - len(spec))

    def of(self, path: str, variable: nnx.Variable) -> NamedSharding:
        spec = self.spec(path, variable.get_metadata()["logical_axes"], variable.shape)
        return NamedSharding(self.mesh, P(*spec))


def _targets(model: Transformer, names: list[ParamName]) -> list[list[ParamName]]:
    """HF tensors grouped by the model array they fill: all layers of a stacked parameter together, in order."""
    groups: dict[tuple, list[ParamName]] = {}
    for name in names:
        key = name.path if param_map.is_stacked(model, name) else (name.path, name.layer)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _load_target(model: Transformer, model_dir: ModelDir, names: list[ParamName], placement: _Placement,
                 bar: tqdm) -> list[QuantRow]:
    """Fills one parameter (a Variable, or the fields of a quantized kernel) from its HF tensor(s), layer by layer."""
    stacked = param_map.is_stacked(model, names[0])
    target = param_map.get_variable(model, names[0])
    path = "/".join(names[0].path)
    if isinstance(target, nnx.Variable):
        quantizer, variables, axes = None, {"": target}, target.get_metadata()["logical_axes"]
    else:
        quantizer = _QUANTIZERS[type(target)]
        variables = {f.name: getattr(target, f.name) for f in dataclasses.fields(quantizer.array)}
        axes = target.axes
    shardings = {field: placement.of(f"{path}/{field}".rstrip("/"), v) for field, v in variables.items()}
    row_shardings = {field: _without_layers(s) for field, s in shardings.items()} if stacked else shardings
    transpose = names[0].transpose
    hf_shape = model_dir.stored[names[0].hf_name].shape
    our_shape = hf_shape[::-1] if transpose else hf_shape
    # The HF tensor goes to the devices as stored ([out, in] for projections), sharded as its transpose will be;
    # XLA transposes it there (faster than NumPy on the host, and no host copy).
    spec = placement.spec(path, axes[1:] if stacked else axes, our_shape)
    hf_sharding = NamedSharding(placement.mesh, P(*(reversed(spec) if transpose else spec)))
    convert = _converter(quantizer, {field: v.dtype for field, v in variables.items()}, row_shardings, transpose)
    if stacked:
        values = {field: _zeros(v.shape, v.dtype, shardings[field]) for field, v in variables.items()}
        set_row = _row_setter(shardings)

    def convert_layer(name: ParamName) -> tuple[dict[str, jax.Array], QuantRow | None]:
        """One HF tensor read, placed and converted; its host copy is freed on return, before the next read."""
        host = model_dir.read(name)
        hf_tensor = jax.make_array_from_callback(host.shape, hf_sharding, lambda index: host[index])
        row = convert(hf_tensor)
        if quantizer is None:
            return row, None
        restored = quantizer.restore(quantizer.array(**row), jnp.float32, transpose)
        stored_bytes = sum(int(x.nbytes) for x in row.values())
        return row, measure(name.hf_name, hf_tensor, restored, quantizer.storage, stored_bytes)

    report = []
    for name in names:
        row, quant_row = convert_layer(name)
        values = set_row(values, row, jnp.int32(name.layer)) if stacked else row
        jax.block_until_ready(values)  # one layer in flight: no queue of host tensors and device rows builds up
        report += [quant_row] if quant_row else []
        bar.update(model_dir.stored[name.hf_name].nbytes)
    for field, variable in variables.items():
        variable.set_value(values[field])
    return report


@dataclasses.dataclass(frozen=True)
class _Quantizer:
    array: type  # nf4.NF4Array | int8.Int8Array: its fields are the kernel module's variables
    quantize: Callable
    restore: Callable  # (fields, dtype, transpose) -> the HF-layout weight they stand for
    storage: str


def _restorer(dequantize: Callable) -> Callable:
    """Quantized fields -> the float32 weight in HF layout (transposed back when `transpose`), for the report."""
    return jax.jit(lambda q, dtype, transpose: dequantize(q, dtype).T if transpose else dequantize(q, dtype),
                   static_argnums=(1, 2))


_QUANTIZERS = {
    NF4Kernel: _Quantizer(nf4.NF4Array, nf4.quantize, _restorer(nf4.dequantize), "nf4"),
    Int8Kernel: _Quantizer(int8.Int8Array, int8.quantize, _restorer(int8.dequantize), "int8"),
}


def _without_layers(sharding: NamedSharding) -> NamedSharding:
    """The sharding of one row of a stacked array: the stacked spec without its leading `layers` entry."""
    return NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))


def _zeros(shape: tuple[int, ...], dtype: jnp.dtype, sharding: NamedSharding) -> jax.Array:
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()


def _converter(quantizer: _Quantizer | None, dtypes: dict[str, jnp.dtype], out_shardings: dict[str, NamedSharding],
               transpose: bool) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """HF tensor -> {field: array}: transposed to `[in, out]` if need be, then cast to the parameter dtype or
    quantized into the kernel's fields."""

    def convert(hf_tensor: jax.Array) -> dict[str, jax.Array]:
        dense = hf_tensor.T if transpose else hf_tensor
        if quantizer is None:
            return {"": dense.astype(dtypes[""])}
        quantized = quantizer.quantize(dense.astype(jnp.float32))
        return {field: getattr(quantized, field).astype(dtypes[field]) for field in dtypes}

    return jax.jit(convert, out_shardings=out_shardings)


def _row_setter(shardings: dict[str, NamedSharding]) -> Callable:
    """(stacked arrays, one layer's arrays, i) -> the stack with row i replaced, in place (the stack is donated)."""

    def set_row(stacked: dict[str, jax.Array], row: dict[str, jax.Array], i: jax.Array) -> dict[str, jax.Array]:
        # dynamic_update_slice writes in place; `.at[i].set` (a scatter) costs XLA a temporary copy of the stack.
        return {field: jax.lax.dynamic_update_slice_in_dim(stacked[field], row[field][None], i, axis=0)
                for field in stacked}

    return jax.jit(set_row, donate_argnums=0, out_shardings=shardings)


def _init_lora(model: Transformer, config: ModelConfig, seed: int, placement: _Placement) -> None:
    """LoRA parameters exactly as `Transformer(config, rngs=nnx.Rngs(seed))` initialises them. Under jit the
    base weights that this init also draws are dead code: XLA never computes them."""
    fresh = dict(nnx.to_flat_state(jax.jit(lambda: nnx.state(Transformer(config, rngs=nnx.Rngs(seed)), LoRAParam))()))
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, LoRAParam):
            sharding = placement.of("/".join(map(str, path)), variable)
            variable.set_value(jax.device_put(fresh[tuple(path)][...], sharding))
