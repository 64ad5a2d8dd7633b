"""Linear layers with `[in, out]` kernels: dense, NF4 or int8 storage, and an optional LoRA adapter.

Every projection in the model is a `Linear`; its kernel is dequantized inside the jitted matmul, so a
quantized model computes exactly what a dense model holding the dequantized weights computes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from devstral_jax.config import STORAGES
from devstral_jax.errors import ConfigError
from devstral_jax.lora import LoRA
from devstral_jax.quant import int8, nf4


class FrozenWeight(nnx.Variable):
    """Quantized base weights: never trained, so never in gradients or optimizer state."""


class NF4Kernel(nnx.Module):
    """An NF4 kernel with double-quantized scales (devstral_jax/quant/nf4.py)."""

    def __init__(self, kernel: jax.Array, axes: tuple[str, ...]):
        q = nf4.quantize(kernel)
        leading = tuple(axes[:-2])  # ('layers',) when re-quantizing a stacked kernel
        self.codes = FrozenWeight(q.codes, logical_axes=axes)
        self.scale_codes = FrozenWeight(q.scale_codes, logical_axes=axes)
        self.group_scales = FrozenWeight(q.group_scales, logical_axes=(*leading, None))
        self.scale_offset = FrozenWeight(q.scale_offset, logical_axes=leading)

    @property
    def axes(self) -> tuple[str, ...]:
        return self.codes.get_metadata()["logical_axes"]

    def quantized(self) -> nf4.NF4Array:
        return nf4.NF4Array(self.codes[...], self.scale_codes[...], self.group_scales[...], self.scale_offset[...])

    def dequantize(self, dtype: jnp.dtype) -> jax.Array:
        return nf4.dequantize(self.quantized(), dtype)


class Int8Kernel(nnx.Module):
    """A per-output-channel int8 kernel (devstral_jax/quant/int8.py)."""

    def __init__(self, kernel: jax.Array, axes: tuple[str, ...]):
        q = int8.quantize(kernel)
        self.values = FrozenWeight(q.values, logical_axes=axes)
        self.scales = FrozenWeight(q.scales, logical_axes=(*axes[:-2], axes[-1]))

    @property
    def axes(self) -> tuple[str, ...]:
        return self.values.get_metadata()["logical_axes"]

    def quantized(self) -> int8.Int8Array:
        return int8.Int8Array(self.values[...], self.scales[...])

    def dequantize(self, dtype: jnp.dtype) -> jax.Array:
        return int8.dequantize(self.quantized(), dtype)


QUANTIZED_KERNELS = {"nf4": NF4Kernel, "int8": Int8Kernel}


class Linear(nnx.Module):
    """`y = x @ W (+ LoRA)`, no bias. W is a dense `param_dtype` Param or a quantized kernel; math in `dtype`."""

    def __init__(self, in_features: int, out_features: int, *, axes: tuple[str, str], dtype: jnp.dtype,
                 param_dtype: jnp.dtype, rngs: nnx.Rngs, init_std: float = 0.02, storage: str = "dense",
                 lora: dict | None = None):
        if storage not in STORAGES:
            raise ConfigError(f"Unknown weight storage {storage!r}; choose one of {STORAGES}.")
        kernel = init_std * jax.random.normal(rngs.params(), (in_features, out_features), param_dtype)
        self.kernel = nnx.Param(kernel, logical_axes=axes) if storage == "dense" else \
            QUANTIZED_KERNELS[storage](kernel, axes)
        self.lora = LoRA(in_features, out_features, axes=axes, rngs=rngs, **lora) if lora else None
        self.lora_merged = False
        self.dtype = dtype
        self.param_dtype = param_dtype

    def weight(self, dtype: jnp.dtype) -> jax.Array:
        """The dense `[..., in, out]` kernel in `dtype` (dequantized if stored quantized)."""
        if isinstance(self.kernel, nnx.Param):
            return self.kernel[...].astype(dtype)
        return self.kernel.dequantize(dtype)

    def __call__(self, x: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.weight(self.dtype))
        if self.lora is not None and not self.lora_merged:
            y = y + self.lora(x, dropout_rng).astype(y.dtype)
        return y

    def merge_lora(self, requantize: bool) -> None:
        if self.lora_merged:
            raise ValueError("This LoRA adapter is already merged.")
        merged = self.weight(jnp.float32) + self.lora.delta()
        if isinstance(self.kernel, nnx.Param):
            self.kernel.set_value(merged.astype(self.kernel[...].dtype))
        elif requantize:
            self.kernel = type(self.kernel)(merged, self.kernel.axes)
        else:
            self.kernel = nnx.Param(merged.astype(self.param_dtype), logical_axes=self.kernel.axes)
        self.lora_merged = True

    def unmerge_lora(self) -> None:
        if not self.lora_merged:
            raise ValueError("This LoRA adapter is not merged.")
        if not isinstance(self.kernel, nnx.Param):
            raise ValueError("Cannot unmerge from a re-quantized kernel (the merge was lossy); reload the base.")
        self.kernel.set_value((self.kernel[...].astype(jnp.float32) - self.lora.delta()).astype(self.kernel[...].dtype))
        self.lora_merged = False
