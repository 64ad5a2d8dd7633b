"""Linear layers with `[in, out]` kernels: dense, NF4 or int8 storage (quant/formats.py), and an optional LoRA adapter.

Every projection in the model is a `Linear`; its kernel is dequantized inside the jitted matmul, so a
quantized model computes exactly what a dense model holding the dequantized weights computes.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from devstral_jax.lora import LoRA
from devstral_jax.quant import formats


class FrozenWeight(nnx.Variable):
    """Quantized base weights: never trained, so never in gradients or optimizer state."""


class QuantizedKernel(nnx.Module):
    """A kernel in a quantized format (quant/formats.py): one FrozenWeight per field of the format's array."""

    def __init__(self, kernel: jax.Array, axes: tuple[str, ...], storage: str):
        self.storage = storage
        stored = self.format.quantize(kernel)
        for leaf, leaf_axes in self.format.leaf_axes(axes).items():
            setattr(self, leaf, FrozenWeight(getattr(stored, leaf), logical_axes=leaf_axes))

    @property
    def format(self) -> formats.Format:
        return formats.FORMATS[self.storage]

    @property
    def axes(self) -> tuple[str, ...]:
        """The kernel's logical axes (with `layers` when stacked): those of its first field, which lies like it."""
        return getattr(self, self.format.leaves[0]).get_metadata()["logical_axes"]

    @property
    def shape(self) -> tuple[int, ...]:
        """The `[..., in, out]` kernel's shape (also on an abstract model, whose fields are only shapes)."""
        return self.format.array(**{leaf: getattr(self, leaf).get_value() for leaf in self.format.leaves}).shape

    def quantized(self) -> Any:
        """The fields' values as the format's array (an NF4Array, an Int8Array)."""
        return self.format.array(**{leaf: getattr(self, leaf)[...] for leaf in self.format.leaves})

    def dequantize(self, dtype: jnp.dtype) -> jax.Array:
        return self.format.dequantize(self.quantized(), dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def quantized_matmul(x: jax.Array, stored: Any, storage: str) -> jax.Array:
    """`x @ W` for a kernel W stored in format `storage`, dequantized to x's dtype inside the jitted matmul.

    The base is frozen, so the backward pass needs W only for x's gradient (dy W^T). It dequantizes W afresh
    for that, behind an optimization barrier, instead of reusing the forward's copy: under remat XLA would
    otherwise keep every dequantized kernel of a layer alive from the recomputed forward to its backward use
    (a gigabyte for Devstral's MLP at bf16). Same values: the dequantization is exact and deterministic.
    """
    return jnp.dot(x, formats.FORMATS[storage].dequantize(stored, x.dtype))


def _quantized_matmul_fwd(x: jax.Array, stored: Any, storage: str) -> tuple[jax.Array, Any]:
    return quantized_matmul(x, stored, storage), stored


def _quantized_matmul_bwd(storage: str, stored: Any, dy: jax.Array) -> tuple[jax.Array, None]:
    w = formats.FORMATS[storage].dequantize(jax.lax.optimization_barrier(stored), dy.dtype)
    return jnp.dot(dy, jnp.swapaxes(w, -1, -2)), None  # no gradient for the frozen base


quantized_matmul.defvjp(_quantized_matmul_fwd, _quantized_matmul_bwd)


class Linear(nnx.Module):
    """`y = x @ W (+ LoRA)`, no bias. W is a dense `param_dtype` Param or a quantized kernel; math in `dtype`."""

    def __init__(self, in_features: int, out_features: int, *, axes: tuple[str, str], dtype: jnp.dtype,
                 param_dtype: jnp.dtype, rngs: nnx.Rngs, init_std: float = 0.02, storage: str = "dense",
                 lora: dict | None = None):
        quantized = formats.get(storage).quantized
        kernel = init_std * jax.random.normal(rngs.params(), (in_features, out_features), param_dtype)
        self.kernel = QuantizedKernel(kernel, axes, storage) if quantized else nnx.Param(kernel, logical_axes=axes)
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
        if isinstance(self.kernel, nnx.Param):
            y = jnp.dot(x.astype(self.dtype), self.weight(self.dtype))
        else:
            y = quantized_matmul(x.astype(self.dtype), self.kernel.quantized(), self.kernel.storage)
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
            self.kernel = QuantizedKernel(merged, self.kernel.axes, self.kernel.storage)
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
