"""Linear layers with `[in, out]` kernels: the one seam where quantized storage and LoRA plug in.

Every projection in the model is built by `Linear`; the NF4/int8 and LoRA variants replace it with
modules that take the same `(in_features, out_features, axes)` and compute the same `x @ W`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

KERNEL_INIT = nnx.initializers.normal(stddev=0.02)  # transformers' initializer_range for Mistral


class Linear(nnx.Module):
    """`y = x @ W`, no bias; W is stored in `param_dtype` and multiplied in `dtype`."""

    def __init__(self, in_features: int, out_features: int, *, axes: tuple[str, str], dtype: jnp.dtype,
                 param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.kernel = nnx.Param(KERNEL_INIT(rngs.params(), (in_features, out_features), param_dtype),
                                logical_axes=axes)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
