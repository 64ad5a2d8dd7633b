"""The one table of storage formats for frozen `[..., in, out]` kernels.

    dense  the kernel as it is (a `param_dtype` Param)
    nf4    4-bit NormalFloat with double-quantized scales, as bitsandbytes stores it (nf4.py)
    int8   per-output-channel absmax int8 (int8.py)

Each format names what it stores (the fields of its array dataclass; `linear.QuantizedKernel` keeps one
variable of the same name per field), quantizes and dequantizes, and says how its fields shard: each
field's axes follow from the kernel's, be they logical axis names (variable metadata) or mesh axes (specs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from devstral_jax.errors import ConfigError
from devstral_jax.quant import int8, nf4


@dataclasses.dataclass(frozen=True)
class Format:
    """How one storage format keeps a kernel: what it stores, the way there and back, how it shards."""

    name: str
    array: type | None  # the dataclass of stored fields (NF4Array, Int8Array); None: the kernel is stored as it is
    quantize: Callable[[jax.Array], Any]  # kernel -> stored form
    dequantize: Callable[[Any, jnp.dtype], jax.Array]  # stored form -> kernel in a dtype
    leaf_axes: Callable[[tuple], dict[str, tuple]]  # the kernel's axes -> each stored field's axes
    block_rows: int = 1  # a shard along the input axis must hold whole blocks of this many rows

    @property
    def quantized(self) -> bool:
        return self.array is not None

    @property
    def leaves(self) -> tuple[str, ...]:
        """The names of the stored fields (none for dense: the kernel is its own leaf)."""
        return tuple(field.name for field in dataclasses.fields(self.array)) if self.quantized else ()

    def partition_specs(self, kernel_spec: tuple) -> Any:
        """PartitionSpecs of the stored fields (an `array` of them) for a kernel sharded as `kernel_spec`."""
        return self.array(**{leaf: P(*axes) for leaf, axes in self.leaf_axes(tuple(kernel_spec)).items()})

    def check_shardable(self, shape: tuple[int, ...], input_shards: int) -> None:
        """A shard boundary along the input axis must not split a block (for NF4 also a packed byte)."""
        if shape[-2] % (self.block_rows * input_shards):
            raise ConfigError(f"Cannot shard the {self.name} kernel of shape {shape} {input_shards} ways along its "
                              f"input axis: each shard needs a whole number of {self.block_rows}-row blocks.")


DENSE = Format("dense", None, quantize=lambda w: w, dequantize=lambda w, dtype: w.astype(dtype),
               leaf_axes=lambda axes: {})
NF4 = Format("nf4", nf4.NF4Array, nf4.quantize, nf4.dequantize, nf4.leaf_axes, block_rows=nf4.BLOCK_SIZE)
INT8 = Format("int8", int8.Int8Array, int8.quantize, int8.dequantize, int8.leaf_axes)
FORMATS: dict[str, Format] = {f.name: f for f in (DENSE, NF4, INT8)}


def get(name: str) -> Format:
    """The format called `name`; a ConfigError that lists the formats otherwise."""
    if name not in FORMATS:
        raise ConfigError(f"Unknown weight storage {name!r}; choose one of {tuple(FORMATS)}.")
    return FORMATS[name]
