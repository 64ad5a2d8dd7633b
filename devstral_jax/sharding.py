"""The device mesh, logical-axis rules and the partition specs of parameters, optimizer state and batches.

Every parameter carries logical axis names (`logical_axes` metadata: vocab, embed, heads, kv, mlp, lora,
layers); `RULES` maps them to mesh axes ('data', 'fsdp', 'tensor'). A dimension that a mesh axis does
not divide, or whose mesh axis is already used by another dimension, stays replicated.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from devstral_jax.errors import ConfigError

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
                    rules: Mapping[str, str | None] = RULES) -> P:
    """The PartitionSpec of one array from its logical axes, replicating dims a mesh axis cannot split."""
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape):
        mesh_axis = rules.get(name) if name is not None else None
        if mesh_axis is None or mesh_axis in used or size % mesh.shape[mesh_axis]:
            spec.append(None)
        else:
            spec.append(mesh_axis)
            used.add(mesh_axis)
    return P(*spec)


def variable_spec(variable: nnx.Variable, mesh: Mesh) -> P:
    axes = variable.get_metadata().get("logical_axes")
    if axes is None:
        return P()
    return logical_to_spec(tuple(axes), tuple(variable.shape), mesh)


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for any pytree of nnx Variables and arrays (parameters, LoRA params, optimizer state):
    a Variable is placed by its logical axes (Adam's moments inherit their parameter's); a bare array
    (a step counter) is replicated."""
    def sharding(leaf: Any) -> NamedSharding:
        spec = variable_spec(leaf, mesh) if isinstance(leaf, nnx.Variable) else P()
        return NamedSharding(mesh, spec)

    return jax.tree.map(sharding, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


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
