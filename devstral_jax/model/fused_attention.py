"""Vendor flash-attention kernels behind the kernel signature: cuDNN on NVIDIA GPUs, Pallas splash attention on TPUs.

Both mask by *index*: causal (a query sees keys at or before its own index), a sliding window of indices, and
segment ids (a query sees keys of its own segment). Our masking (`masking.attention_mask`) is by *position*,
so the two agree exactly when positions run 0, 1, 2, ... through each document of a row (what the data
pipeline packs), and need not otherwise (a KV cache, positions that skip). Every call therefore checks, on
the device, that they agree for each real (non-padding) query, and runs the chunked kernel when they do not:
exact first, fast where that is proven. Where the platform is not the kernel's (tests on a CPU, a GPU config
on a TPU), or a shape or dtype is one the kernel cannot take, the chunked kernel runs too.

Padding queries (segment 0) may attend differently: nothing reads their outputs (no real token attends to
them and they carry no loss).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from devstral_jax.model.chunked_attention import chunked_attention
from devstral_jax.model.masking import attention_mask, index_mask


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, q_positions: jax.Array, kv_positions: jax.Array,
                    q_segment_ids: jax.Array, kv_segment_ids: jax.Array, sliding_window: int | None) -> jax.Array:
    """cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`.

    The public API has no segment ids, so documents are a boolean mask (our `attention_mask`, which cuDNN
    turns into an additive bias `[B, 1, T, S]`) on top of `is_causal` and `local_window_size`, which let
    cuDNN skip the tiles above the diagonal and outside the window.
    """
    masking = dict(q_positions=q_positions, kv_positions=kv_positions, q_segment_ids=q_segment_ids,
                   kv_segment_ids=kv_segment_ids, sliding_window=sliding_window)
    if not (cudnn_present() and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[1] == k.shape[1]
            and q.shape[1] % 2 == 0 and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128):
        return chunked_attention(q, k, v, **masking)

    def fused() -> jax.Array:
        return jax.nn.dot_product_attention(q, k, v, **cudnn_arguments(**masking), implementation="cudnn")

    return _checked(fused, "cuda", q, k, v, masking)


def cudnn_arguments(*, q_positions: jax.Array, kv_positions: jax.Array, q_segment_ids: jax.Array,
                    kv_segment_ids: jax.Array, sliding_window: int | None) -> dict:
    """The masking arguments `cudnn_attention` gives `jax.nn.dot_product_attention` (any implementation)."""
    mask = attention_mask(q_positions, kv_positions, q_segment_ids, kv_segment_ids, sliding_window)
    window = None if sliding_window is None else (sliding_window - 1, 0)
    return dict(mask=mask[:, None], is_causal=True, local_window_size=window)


@functools.cache
def cudnn_present() -> bool:
    """Whether this JAX can build cuDNN attention at all: a CUDA plugin with cuDNN is installed (pip
    install -e '.[gpu]' or '.[gpu-aot]'). A GPU is not needed: deviceless compiles use it too."""
    x = jax.ShapeDtypeStruct((1, 2, 1, 8), jnp.bfloat16)
    try:
        jax.eval_shape(functools.partial(jax.nn.dot_product_attention, implementation="cudnn"), x, x, x)
    except (RuntimeError, NotImplementedError):  # "cuDNN is not detected."
        return False
    return True


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, q_positions: jax.Array, kv_positions: jax.Array,
                     q_segment_ids: jax.Array, kv_segment_ids: jax.Array, sliding_window: int | None,
                     interpret: bool = False) -> jax.Array:
    """Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention) with segment ids, one
    multi-query kernel per KV head (grouped-query attention), on TPUs; `interpret=True` runs the same kernel
    in Pallas's interpreter on any backend (tests) instead."""
    masking = dict(q_positions=q_positions, kv_positions=kv_positions, q_segment_ids=q_segment_ids,
                   kv_segment_ids=kv_segment_ids, sliding_window=sliding_window)
    batch, length, heads, dim = q.shape
    num_kv_heads = k.shape[2]
    block = min(512, length)
    if length != k.shape[1] or length % 128 or length % block:
        return chunked_attention(q, k, v, **masking)
    kernel = _splash_kernel(length, heads // num_kv_heads, sliding_window, block, interpret)

    def fused() -> jax.Array:
        from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

        grouped = jnp.einsum("btkgd->bkgtd", q.reshape(batch, length, num_kv_heads, -1, dim)) * dim**-0.5
        per_head = jax.vmap(lambda q, k, v, ids: kernel(q, k, v, segment_ids=ids), in_axes=(0, 0, 0, None))
        out = jax.vmap(per_head)(grouped.astype(k.dtype), jnp.einsum("bskd->bksd", k), jnp.einsum("bskd->bksd", v),
                                 SegmentIds(q=q_segment_ids, kv=kv_segment_ids))
        return jnp.einsum("bkgtd->btkgd", out).reshape(batch, length, heads, dim).astype(q.dtype)

    return _checked(fused, None if interpret else "tpu", q, k, v, masking)


@functools.cache
def _splash_kernel(length: int, groups: int, sliding_window: int | None, block: int, interpret: bool) -> Callable:
    """The splash multi-query kernel for one KV head's `groups` query heads (built once per shape: its block
    mask is computed on the host)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    shape = (length, length)
    mask = splash.CausalMask(shape) if sliding_window is None else splash.LocalMask(shape, (sliding_window - 1, 0), 0)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return splash.make_splash_mqa_single_device(splash.MultiHeadMask([mask] * groups), block_sizes=sizes,
                                                interpret=interpret)


def index_masking_is_exact(*, q_positions: jax.Array, kv_positions: jax.Array, q_segment_ids: jax.Array,
                           kv_segment_ids: jax.Array, sliding_window: int | None) -> jax.Array:
    """True when masking by index (what the fused kernels do) equals `attention_mask` for every real query."""
    by_position = attention_mask(q_positions, kv_positions, q_segment_ids, kv_segment_ids, sliding_window)
    by_index = index_mask(q_segment_ids, kv_segment_ids, sliding_window)
    return jnp.all((by_position == by_index) | (q_segment_ids == 0)[:, :, None])


def _checked(fused: Callable[[], jax.Array], platform: str | None, q: jax.Array, k: jax.Array, v: jax.Array,
             masking: dict) -> jax.Array:
    """`fused()` on `platform` (None: on any) when index masking is exact for these inputs, else chunked."""
    def chunked() -> jax.Array:
        return chunked_attention(q, k, v, **masking)

    def checked() -> jax.Array:
        return jax.lax.cond(index_masking_is_exact(**masking), fused, chunked)

    return checked() if platform is None else jax.lax.platform_dependent(**{platform: checked}, default=chunked)

