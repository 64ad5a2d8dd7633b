"""NF4 (4-bit NormalFloat) weights with double-quantized block scales, as bitsandbytes stores them.

A kernel `W [in, out]` is cut into blocks of 64 consecutive inputs per output column (bitsandbytes'
blocks run along the input dimension of torch's `[out, in]` weight: the same elements). Each block
keeps its absmax; each weight becomes the index of the nearest of the 16 NF4 values of w / absmax.
Double quantization then stores the absmaxes as 8-bit codes of the dynamic map: subtract their mean,
group them 256 at a time in bitsandbytes' order (torch's row-major `[out, in/64]`), one float32 absmax
per group. That is 4 + 8/64 + 32/(64*256) ≈ 4.127 bits per weight.

Arrays keep the kernel's `[in, out]` orientation (codes `[in/2, out]`, scale codes `[in/64, out]`), so
any sharding of W along either axis that respects 64-row blocks shards them the same way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from devstral_jax.errors import ConfigError

BLOCK_SIZE = 64  # weights per absmax
SCALE_GROUP = 256  # absmaxes per second-level float32 scale

# bitsandbytes `get_4bit_type('nf4')`: quantiles of N(0, 1) with exact 0 and +-1 (QLoRA, Dettmers et al. 2023).
NF4_CODEBOOK = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)


def _torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32, bit for bit: a float32 step, each value one fused multiply-add from the nearer end."""
    step = (np.float32(end) - np.float32(start)) / np.float32(steps - 1)
    values = [float(np.float32(start)) + float(step) * i if i < steps // 2
              else float(np.float32(end)) - float(step) * (steps - 1 - i) for i in range(steps)]
    return np.array(values, dtype=np.float32)


def dynamic_map() -> np.ndarray:
    """bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map()`): 256 sorted float32 values in [-1, 1].

    Exponent e in 0..6 selects the decade 10^(e-6); the remaining bits split [0.1, 1] into 2^e bins whose
    midpoints (and their negatives) are the codes; 0 and 1 complete it.
    """
    values: list[np.ndarray] = []
    for exponent in range(7):
        boundaries = _torch_linspace(0.1, 1.0, 2**exponent + 1)
        means = (boundaries[:-1] + boundaries[1:]) / np.float32(2.0)
        decade = np.float32(10.0 ** (exponent - 6))
        values += [decade * means, -decade * means]
    values.append(np.array([0.0, 1.0], np.float32))
    return np.sort(np.concatenate(values))


DYNAMIC_MAP = dynamic_map()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NF4Array:
    """A quantized `[..., in, out]` kernel. Leading axes (stacked layers) are batch axes of every field."""

    codes: jax.Array  # uint8 [..., in/2, out]: rows 2i (high nibble) and 2i+1 (low nibble)
    scale_codes: jax.Array  # uint8 [..., in/64, out]: dynamic-map codes of (absmax - scale_offset)
    group_scales: jax.Array  # float32 [..., ceil(in/64 * out / 256)]: absmax of each group of 256 scale codes
    scale_offset: jax.Array  # float32 [...]: mean absmax, subtracted before the scales were quantized

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.codes.shape[:-2], self.codes.shape[-2] * 2, self.codes.shape[-1])

    @property
    def nbytes(self) -> int:
        return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(self))


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) < 2:
        raise ValueError(f"NF4 quantizes [..., in, out] kernels; got shape {shape}.")
    if shape[-2] % BLOCK_SIZE:
        raise ConfigError(f"NF4 needs the input dimension ({shape[-2]}, shape {shape}) to be divisible by the "
                         f"block size {BLOCK_SIZE}; keep this tensor in bf16 or pad it.")


def _nearest_code(scaled: jax.Array, codebook: np.ndarray) -> jax.Array:
    """Index of the nearest codebook value; a value exactly between two codes takes the lower (torch.bucketize)."""
    midpoints = (codebook[:-1] + codebook[1:]) / np.float32(2.0)
    # Counting the midpoints below each value is searchsorted(side="left"), as fused compares: far faster than a
    # binary search on every backend for 15 (NF4) midpoints; the 255 of the scales' map touch 1/64 as many values.
    return jnp.sum(scaled[..., None] > jnp.asarray(midpoints), axis=-1, dtype=jnp.uint8)


def _absmax_normalise(blocks: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """(values / absmax clipped to [-1, 1], absmax) with bitsandbytes' arithmetic (multiply by the reciprocal)."""
    absmax = jnp.max(jnp.abs(blocks), axis=axis)
    inverse = 1.0 / jnp.maximum(absmax, 1e-38)
    return jnp.clip(blocks * jnp.expand_dims(inverse, axis), -1.0, 1.0), absmax


def _scale_groups(num_blocks: int, out: int) -> jax.Array:
    """Group index of each scale `[in/64, out]`: bitsandbytes groups torch's row-major `[out, in/64]` order."""
    return (jnp.arange(out)[None, :] * num_blocks + jnp.arange(num_blocks)[:, None]) // SCALE_GROUP


def _quantize_2d(w: jax.Array) -> NF4Array:
    in_features, out = w.shape
    num_blocks = in_features // BLOCK_SIZE
    scaled, absmax = _absmax_normalise(w.astype(jnp.float32).reshape(num_blocks, BLOCK_SIZE, out), axis=1)
    codes = _nearest_code(scaled, NF4_CODEBOOK).reshape(in_features // 2, 2, out)
    packed = (codes[:, 0] << 4) | codes[:, 1]

    # Double quantization of the [in/64, out] absmaxes, in bitsandbytes' grouping.
    offset = jnp.mean(absmax)
    flat = (absmax - offset).T.reshape(-1)
    num_groups = -(-flat.size // SCALE_GROUP)
    groups = jnp.pad(flat, (0, num_groups * SCALE_GROUP - flat.size)).reshape(num_groups, SCALE_GROUP)
    scaled_groups, group_absmax = _absmax_normalise(groups, axis=1)
    scale_codes = _nearest_code(scaled_groups, DYNAMIC_MAP).reshape(-1)[: flat.size].reshape(out, num_blocks).T
    return NF4Array(packed, scale_codes, group_absmax, offset)


def _dequantize_2d(q: NF4Array, dtype: jnp.dtype) -> jax.Array:
    half_in, out = q.codes.shape
    num_blocks = q.scale_codes.shape[0]
    group_scale = q.group_scales[_scale_groups(num_blocks, out)]
    absmax = jnp.asarray(DYNAMIC_MAP)[q.scale_codes] * group_scale + q.scale_offset  # [in/64, out]
    codes = jnp.stack([q.codes >> 4, q.codes & 0xF], axis=1).reshape(num_blocks, BLOCK_SIZE, out)
    w = jnp.asarray(NF4_CODEBOOK)[codes] * absmax[:, None, :]
    return w.reshape(half_in * 2, out).astype(dtype)


def quantize(w: jax.Array) -> NF4Array:
    """NF4 + double-quantized scales of a `[..., in, out]` kernel (leading axes quantized independently)."""
    _check_shape(w.shape)
    fn = _quantize_2d
    for _ in range(w.ndim - 2):
        fn = jax.vmap(fn)
    return fn(w)


def dequantize(q: NF4Array, dtype: jnp.dtype = jnp.bfloat16) -> jax.Array:
    """The `[..., in, out]` kernel that `q` stands for, in `dtype`."""
    fn = lambda q: _dequantize_2d(q, dtype)  # noqa: E731
    for _ in range(q.codes.ndim - 2):
        fn = jax.vmap(fn)
    return fn(q)


def leaf_axes(kernel_axes: tuple) -> dict[str, tuple]:
    """The axes of each NF4Array field, given the `[..., in, out]` kernel's (logical names or mesh axes alike).

    Codes and scale codes lie like the kernel (so they shard with it, the input axis in whole 64-row blocks);
    the small second-level scales and the offset keep only the leading (stacked-layer) axes.
    """
    leading = tuple(kernel_axes[:-2])
    return dict(codes=tuple(kernel_axes), scale_codes=tuple(kernel_axes), group_scales=(*leading, None),
                scale_offset=leading)
