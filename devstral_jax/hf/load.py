"""Loads a checkpoint (HF or consolidated directory, or GGUF file) into our model, streamed: host memory stays a few
tensors.

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
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from devstral_jax import sharding
from devstral_jax.config import ModelConfig
from devstral_jax.hf import param_map
from devstral_jax.hf.model_dir import ModelDir, open_model_dir
from devstral_jax.hf.param_map import ParamName
from devstral_jax.lora import LoRAParam
from devstral_jax.model import Transformer
from devstral_jax.quant import formats
from devstral_jax.quant.report import QuantRow, format_table, measure
from devstral_jax.tokenizers import Tokenizer, family_tokenizer, own_tokenizer


@dataclasses.dataclass
class Loaded:
    model: Transformer
    config: ModelConfig
    quant_report: list[QuantRow]  # one row per quantized tensor (empty when nothing is quantized)
    path: str  # the checkpoint

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The checkpoint's own tokenizer, else its family's default (read on first use: it takes a few seconds)."""
        return own_tokenizer(self.path) or family_tokenizer(self.config.family)


def load(path: str | os.PathLike, *, format: str = "auto", mesh: Mesh | None = None, seed: int = 0,
         progress: bool = True, **execution: Any) -> Loaded:
    """Loads the checkpoint at `path` (HF, consolidated or GGUF, see model_dir.py) onto `mesh` (default: the first
    device).

    Each array is placed by sharding.py's logical-axis rules on `mesh`. `execution` sets ModelConfig's
    execution fields, e.g. `param_dtype="bfloat16", mlp_storage="nf4", lora_rank=16`; `seed` initialises LoRA
    adapters. Checkpoint problems raise ModelDirError/ConfigError before any weight is read.
    """
    model_dir = open_model_dir(path, format, **execution)
    config = model_dir.config
    mesh = mesh if mesh is not None else sharding.make_mesh({}, jax.devices()[:1])
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(seed)))
    sharding.check_params(model, mesh)  # before any weight is read

    report: list[QuantRow] = []
    with tqdm(total=model_dir.nbytes, unit="B", unit_scale=True, desc=f"loading {os.path.basename(path)}",
              disable=not progress) as bar:
        for names in _targets(model, model_dir.names):
            report += _load_target(model, model_dir, names, mesh, bar)
    if progress and report:
        print(format_table(report), file=sys.stderr)
    if config.lora_rank:
        _init_lora(model, config, seed, mesh)
    for variable_path, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Variable) and isinstance(variable.get_value(), jax.ShapeDtypeStruct):
            # A bug here, not a problem of the input.
            raise RuntimeError(f"Parameter {'/'.join(map(str, variable_path))} was not loaded.")
    return Loaded(model, config, report, model_dir.path)


def _targets(model: Transformer, names: list[ParamName]) -> list[list[ParamName]]:
    """HF tensors grouped by the model array they fill: all layers of a stacked parameter together, in order."""
    groups: dict[tuple, list[ParamName]] = {}
    for name in names:
        key = name.path if param_map.is_stacked(model, name) else (name.path, name.layer)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _load_target(model: Transformer, model_dir: ModelDir, names: list[ParamName], mesh: Mesh,
                 bar: tqdm) -> list[QuantRow]:
    """Fills one parameter (a Variable, or the fields of a quantized kernel) from its HF tensor(s), layer by layer."""
    stacked = param_map.is_stacked(model, names[0])
    target = param_map.get_variable(model, names[0])
    if isinstance(target, nnx.Variable):  # an embedding, a norm or a dense kernel: one variable, stored as it is
        storage_format, variables, axes = formats.DENSE, {"": target}, target.get_metadata()["logical_axes"]
    else:
        storage_format, axes = target.format, target.axes
        variables = {leaf: getattr(target, leaf) for leaf in storage_format.leaves}
    shardings = {field: NamedSharding(mesh, sharding.variable_spec(v, mesh)) for field, v in variables.items()}
    row_shardings = {field: _without_layers(s) for field, s in shardings.items()} if stacked else shardings
    transpose = names[0].transpose
    hf_shape = model_dir.stored[names[0].hf_name].shape
    our_shape = hf_shape[::-1] if transpose else hf_shape
    # The HF tensor goes to the devices as stored ([out, in] for projections), sharded as its transpose will be;
    # XLA transposes it there (faster than NumPy on the host, and no host copy).
    spec = tuple(sharding.logical_to_spec(axes[1:] if stacked else axes, our_shape, mesh))
    hf_sharding = NamedSharding(mesh, P(*(reversed(spec) if transpose else spec)))
    dtypes = {field: v.dtype for field, v in variables.items()}
    convert = _converter(storage_format, dtypes, row_shardings, transpose)
    if stacked:
        values = {field: _zeros(v.shape, v.dtype, shardings[field]) for field, v in variables.items()}
        set_row = _row_setter(shardings)

    def convert_layer(name: ParamName) -> tuple[dict[str, jax.Array], QuantRow | None]:
        """One HF tensor read, placed and converted; its host copy is freed on return, before the next read."""
        host = model_dir.read(name)
        hf_tensor = jax.make_array_from_callback(host.shape, hf_sharding, lambda index: host[index])
        row = convert(hf_tensor)
        if not storage_format.quantized:
            return row, None
        restored = _restore(storage_format, storage_format.array(**row), transpose)
        stored_bytes = sum(int(x.nbytes) for x in row.values())
        return row, measure(name.hf_name, hf_tensor, restored, storage_format.name, stored_bytes)

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


@functools.partial(jax.jit, static_argnums=(0, 2))
def _restore(storage_format: formats.Format, quantized: Any, transpose: bool) -> jax.Array:
    """Quantized fields -> the float32 weight in HF layout (transposed back when `transpose`), for the report."""
    weight = storage_format.dequantize(quantized, jnp.float32)
    return weight.T if transpose else weight


def _without_layers(sharding: NamedSharding) -> NamedSharding:
    """The sharding of one row of a stacked array: the stacked spec without its leading `layers` entry."""
    return NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))


def _zeros(shape: tuple[int, ...], dtype: jnp.dtype, sharding: NamedSharding) -> jax.Array:
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()


def _converter(storage_format: formats.Format, dtypes: dict[str, jnp.dtype],
               out_shardings: dict[str, NamedSharding], transpose: bool) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """HF tensor -> {field: array}: transposed to `[in, out]` if need be, then cast to the parameter dtype or
    quantized into the kernel's fields."""

    def convert(hf_tensor: jax.Array) -> dict[str, jax.Array]:
        dense = hf_tensor.T if transpose else hf_tensor
        if not storage_format.quantized:
            return {"": dense.astype(dtypes[""])}
        quantized = storage_format.quantize(dense.astype(jnp.float32))
        return {field: getattr(quantized, field).astype(dtypes[field]) for field in dtypes}

    return jax.jit(convert, out_shardings=out_shardings)


def _row_setter(shardings: dict[str, NamedSharding]) -> Callable:
    """(stacked arrays, one layer's arrays, i) -> the stack with row i replaced, in place (the stack is donated)."""

    def set_row(stacked: dict[str, jax.Array], row: dict[str, jax.Array], i: jax.Array) -> dict[str, jax.Array]:
        # dynamic_update_slice writes in place; `.at[i].set` (a scatter) costs XLA a temporary copy of the stack.
        return {field: jax.lax.dynamic_update_slice_in_dim(stacked[field], row[field][None], i, axis=0)
                for field in stacked}

    return jax.jit(set_row, donate_argnums=0, out_shardings=shardings)


def _init_lora(model: Transformer, config: ModelConfig, seed: int, mesh: Mesh) -> None:
    """LoRA parameters exactly as `Transformer(config, rngs=nnx.Rngs(seed))` initialises them. Under jit the
    base weights that this init also draws are dead code: XLA never computes them."""
    fresh = dict(nnx.to_flat_state(jax.jit(lambda: nnx.state(Transformer(config, rngs=nnx.Rngs(seed)), LoRAParam))()))
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, LoRAParam):
            placement = NamedSharding(mesh, sharding.variable_spec(variable, mesh))
            variable.set_value(jax.device_put(fresh[tuple(path)][...], placement))
