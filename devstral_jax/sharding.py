"""The device mesh, logical-axis rules and the partition specs of parameters, optimizer state and batches.

Every parameter carries logical axis names (`logical_axes` metadata: vocab, embed, heads, kv, mlp, lora,
layers); `RULES` maps them to mesh axes ('data', 'fsdp', 'tensor'). Activations carry logical names too, at
the block boundaries (`constrain`: batch, seq, act_embed, act_heads, act_kv, act_mlp, act_vocab), mapped by
`ACTIVATION_RULES`, so the layout XLA gives them is the one asked for, not whatever propagation finds.
Nothing is replicated silently: a dimension that its mesh axis does not divide, or a quantized kernel
whose shards would split a quantization block, is a ConfigError naming the array.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from devstral_jax.errors import ConfigError
from devstral_jax.quant import formats

MESH_AXES = ("data", "fsdp", "tensor")
RULES: dict[str, str | None] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv": "tensor",
    "mlp": "tensor",
    "lora": None,
    "layers": None,
}
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both data-parallel axes (training, sampling)
# Activations: the batch over the data-parallel axes, features over `tensor` where the weights split them
# (Megatron-style: the residual stream whole, the heads and the MLP's hidden units split).
ACTIVATION_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "seq": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


def mesh_shape(requested: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolves one -1 ("fill") in {'data','fsdp','tensor'} so the product is `num_devices`."""
    unknown = set(requested) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"Unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}.")
    shape = {axis: int(requested.get(axis, 1)) for axis in MESH_AXES}
    fill = [axis for axis, size in shape.items() if size == -1]
    if len(fill) > 1 or any(size == 0 or size < -1 for size in shape.values()):
        raise ConfigError(f"Mesh {shape}: each axis is a positive size, and at most one is -1 (fill).")
    known = math.prod(size for size in shape.values() if size != -1)
    if num_devices % known:
        raise ConfigError(f"Mesh {shape} does not divide the {num_devices} devices.")
    if fill:
        shape[fill[0]] = num_devices // known
    if math.prod(shape.values()) != num_devices:
        raise ConfigError(f"Mesh {shape} uses {math.prod(shape.values())} devices but {num_devices} are present; "
                        "make the product equal the device count or set one axis to -1.")
    return shape


def make_mesh(requested: Mapping[str, int], devices: list | None = None) -> Mesh:
    devices = devices if devices is not None else jax.devices()
    shape = mesh_shape(requested, len(devices))
    return Mesh(np.asarray(devices).reshape(tuple(shape[a] for a in MESH_AXES)), MESH_AXES)


def logical_to_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh,
                    rules: Mapping[str, str | tuple[str, ...] | None] = RULES, name: str = "an array") -> P:
    """The PartitionSpec of one array (`name`, for errors) from its logical axes.

    A dimension its mesh axes do not divide is a ConfigError, never quietly replicated: replicating a 24B
    model's kernels on every device is the difference between fitting and not.
    """
    used: set[str] = set()
    spec = []
    for axis_name, size in zip(axes, shape):
        mesh_axes = rules.get(axis_name) if axis_name is not None else None
        mesh_axes = () if mesh_axes is None else (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        mesh_axes = tuple(a for a in mesh_axes if mesh.shape.get(a, 1) > 1)  # a size-1 axis splits nothing
        if used & set(mesh_axes):
            raise ConfigError(f"{name} {tuple(shape)} would use mesh axis {sorted(used & set(mesh_axes))} for two "
                              f"dimensions (logical axes {axes}); map them to different mesh axes in the rules.")
        ways = math.prod(mesh.shape[a] for a in mesh_axes)
        if size % ways:
            raise ConfigError(f"{name} {tuple(shape)}: its {axis_name!r} dimension ({size}) cannot be split "
                              f"{ways} ways over mesh axes {mesh_axes}; choose a mesh whose {'x'.join(mesh_axes)} "
                              f"size divides {size}.")
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return P(*spec)


def variable_spec(variable: nnx.Variable, mesh: Mesh, name: str = "a parameter") -> P:
    axes = variable.get_metadata().get("logical_axes")
    if axes is None:
        return P()
    return logical_to_spec(tuple(axes), tuple(variable.shape), mesh, name=name)


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for any pytree of nnx Variables and arrays (parameters, LoRA params, optimizer state):
    a Variable is placed by its logical axes (Adam's moments inherit their parameter's); a bare array
    (a step counter) is replicated."""
    def sharding(path: tuple, leaf: Any) -> NamedSharding:
        if not isinstance(leaf, nnx.Variable):
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, variable_spec(leaf, mesh, f"Parameter {jax.tree_util.keystr(path)}"))

    return jax.tree_util.tree_map_with_path(sharding, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def check_params(model: nnx.Module, mesh: Mesh) -> None:
    """Raises a ConfigError naming the first parameter `mesh` cannot shard as its logical axes ask: a dimension
    its mesh axis does not divide, or a quantized kernel (quant/formats.py) whose input-axis shards would cut
    its quantization blocks. Works on an abstract model (`nnx.eval_shape`): run it before loading anything."""
    nodes = [("/".join(map(str, path)), node) for path, node in nnx.iter_graph(model)]
    for name, node in nodes:  # kernels first: their error says why a field of theirs cannot split
        storage = getattr(node, "format", None)
        if isinstance(storage, formats.Format) and storage.quantized:
            in_axis = RULES.get(node.axes[-2])
            try:
                storage.check_shardable(node.shape, mesh.shape.get(in_axis, 1) if in_axis else 1)
            except ConfigError as e:
                raise ConfigError(f"Parameter {name}: {e}") from None
    for name, node in nodes:
        if isinstance(node, nnx.Variable):
            variable_spec(node, mesh, f"Parameter {name}")


def activation_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Any, name: str) -> P:
    return logical_to_spec(axes, shape, mesh, ACTIVATION_RULES, name=f"Activation {name}")


def constrain(x: jax.Array, axes: tuple[str | None, ...], name: str) -> jax.Array:
    """`x` laid out as its logical activation axes ask on the mesh the step is traced under (`traced_on`);
    outside one (a single device, the sampler) it is returned as it is."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, activation_spec(axes, x.shape, mesh, name)))


def traced_on(fn: Callable, mesh: Mesh) -> Callable:
    """`fn` traced with `mesh` as the context mesh, so its `constrain`s take effect (wrap before `jax.jit`)."""
    def wrapped(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return functools.wraps(fn)(wrapped)


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split: the product of the mesh's `BATCH_AXES` (a batch is a multiple of it)."""
    return math.prod(mesh.shape.get(axis, 1) for axis in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """A train-step batch `[microbatches, rows, seq]`: rows split over the data-parallel axes."""
    return NamedSharding(mesh, P(None, BATCH_AXES, None))


def place_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch -> global arrays sharded by `batch_sharding` (one or many processes)."""
    target = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(target, v) for k, v in batch.items()}


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """`jax.distributed.initialize` for multi-process launches: explicit flags, else JAX's own environment
    detection (SLURM, Open MPI, TPU pods), else the DEVSTRAL_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID
    variables. Returns whether it initialized (False: a single process, nothing to do)."""
    coordinator = coordinator or os.environ.get("DEVSTRAL_COORDINATOR")
    num_processes = num_processes or _int_env("DEVSTRAL_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _int_env("DEVSTRAL_PROCESS_ID")
    if coordinator:
        if num_processes is None or process_id is None:
            raise ConfigError("A coordinator address needs the process count and this process's id "
                            "(--num_processes/--process_id or DEVSTRAL_NUM_PROCESSES/DEVSTRAL_PROCESS_ID).")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
        return True
    if any(v in os.environ for v in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")) and \
            int(os.environ.get("SLURM_NTASKS", os.environ.get("OMPI_COMM_WORLD_SIZE", "2"))) > 1:
        jax.distributed.initialize()
        return True
    return False


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None
