"""Blockwise ("flash") attention in plain JAX: exact attention in O(T) memory, on every backend.

The reference kernel materialises `[B, H, T, S]` scores: for Devstral at T = S = 32k that is 137 GB per layer
in float32. This kernel walks query tiles and, inside each, key/value tiles with an online softmax (a running
max and sum per row), holding one `[block_q, block_kv]` tile of scores per head at a time; a tile whose mask
is empty (the causal future, another document, outside the sliding window) is skipped at run time. The
backward pass is FlashAttention-2's: only the output and each row's log-sum-exp are kept, and the tiles are
recomputed, so training memory is O(T) too.

Masking comes from positions and segment ids exactly as in `masking.attention_mask`. A row with no
key to attend to (which self-attention never produces: every token sees itself) comes out as zeros here,
where the reference kernel would average all values.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from devstral_jax.model.masking import attention_mask

_NEG = -1e30  # a masked score: finite, so that a tile with no visible key leaves the running max unchanged
_PAD_Q, _PAD_KV = -1, -2  # segment ids of padding rows: they match nothing


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, q_positions: jax.Array,
                      kv_positions: jax.Array, q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                      sliding_window: int | None, block_q: int = 512, block_kv: int = 512) -> jax.Array:
    """Same contract as `attention_kernels.xla_attention`: q `[B, T, H, D]`, k and v `[B, S, K, D]`."""
    block_q, block_kv = min(block_q, q.shape[1]), min(block_kv, k.shape[1])
    return _attention(q, k, v, q_positions, kv_positions, q_segment_ids, kv_segment_ids, sliding_window,
                      block_q, block_kv)


def _tiles(x: jax.Array, block: int, fill) -> jax.Array:
    """`[B, T, ...]` -> `[T/block, B, block, ...]`, padding T with `fill` up to a multiple of `block`."""
    pad = -x.shape[1] % block
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    x = x.reshape(x.shape[0], -1, block, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _untile(x: jax.Array, length: int) -> jax.Array:
    """`[T/block, B, block, ...]` -> `[B, length, ...]`."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def _grouped(q: jax.Array, num_kv_heads: int) -> jax.Array:
    """`[B, T, H, D]` -> `[B, T, K, H/K, D]`: the query heads that share each KV head."""
    batch, length, heads, dim = q.shape
    return q.reshape(batch, length, num_kv_heads, heads // num_kv_heads, dim)


def _scores(q_tile, k_tile, mask, scale):
    """Masked scores `[B, K, G, bq, bk]` in float32."""
    s = jnp.einsum("btkgd,bskd->bkgts", q_tile, k_tile, preferred_element_type=jnp.float32) * scale
    return jnp.where(mask[:, None, None], s, _NEG)


def _skip_empty(mask: jax.Array, compute, carry):
    """`compute(carry)` when any pair in the tile is visible, else `carry` unchanged."""
    return jax.lax.cond(mask.any(), compute, lambda c: c, carry)


def _forward(q, k, v, q_pos, kv_pos, q_seg, kv_seg, window, block_q, block_kv):
    """Output `[B, T, H, D]` and log-sum-exp `[T/bq, B, K, G, bq]` (what the backward pass keeps)."""
    batch, length, heads, dim = q.shape
    num_kv_heads, scale = k.shape[2], dim**-0.5
    kv_tiles = (_tiles(k, block_kv, 0), _tiles(v, block_kv, 0), _tiles(kv_pos, block_kv, 0),
                _tiles(kv_seg, block_kv, _PAD_KV))

    def one_q_tile(q_tile_inputs):
        q_tile, qp, qs = q_tile_inputs

        def step(carry, kv_tile):
            k_tile, v_tile, kp, ks = kv_tile
            mask = attention_mask(qp, kp, qs, ks, window)

            def compute(carry):
                m, l, acc = carry
                s = _scores(q_tile, k_tile, mask, scale)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.where(mask[:, None, None], jnp.exp(s - m_new[..., None]), 0.0)
                correction = jnp.exp(m - m_new)
                pv = jnp.einsum("bkgts,bskd->bkgtd", p.astype(v_tile.dtype), v_tile,
                                preferred_element_type=jnp.float32)
                return m_new, l * correction + p.sum(-1), acc * correction[..., None] + pv

            return _skip_empty(mask, compute, carry), None

        groups = heads // num_kv_heads
        rows = (batch, num_kv_heads, groups, q_tile.shape[1])
        init = (jnp.full(rows, _NEG, jnp.float32), jnp.zeros(rows, jnp.float32), jnp.zeros((*rows, dim), jnp.float32))
        (m, l, acc), _ = jax.lax.scan(step, init, kv_tiles)
        l = jnp.where(l == 0, 1.0, l)
        out = jnp.einsum("bkgtd->btkgd", acc / l[..., None]).astype(q.dtype)
        return out, m + jnp.log(l)

    q_tiles = (_tiles(_grouped(q, num_kv_heads), block_q, 0), _tiles(q_pos, block_q, 0),
               _tiles(q_seg, block_q, _PAD_Q))
    out, lse = jax.lax.map(one_q_tile, q_tiles)
    return _untile(out, length).reshape(batch, length, heads, dim), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _attention(q, k, v, q_pos, kv_pos, q_seg, kv_seg, window, block_q, block_kv):
    return _forward(q, k, v, q_pos, kv_pos, q_seg, kv_seg, window, block_q, block_kv)[0]


def _attention_fwd(q, k, v, q_pos, kv_pos, q_seg, kv_seg, window, block_q, block_kv):
    out, lse = _forward(q, k, v, q_pos, kv_pos, q_seg, kv_seg, window, block_q, block_kv)
    return out, (q, k, v, q_pos, kv_pos, q_seg, kv_seg, out, lse)


def _attention_bwd(window, block_q, block_kv, residuals, d_out):
    """dq by a pass over query tiles, dk and dv by a pass over key/value tiles; both recompute the tiles."""
    q, k, v, q_pos, kv_pos, q_seg, kv_seg, out, lse = residuals
    batch, length, heads, dim = q.shape
    kv_length, num_kv_heads, scale = k.shape[1], k.shape[2], dim**-0.5
    d_out = _grouped(d_out, num_kv_heads)
    delta = jnp.einsum("btkgd,btkgd->bkgt", d_out.astype(jnp.float32), _grouped(out, num_kv_heads).astype(jnp.float32))
    q_tiles = (_tiles(_grouped(q, num_kv_heads), block_q, 0), _tiles(d_out, block_q, 0), _tiles(q_pos, block_q, 0),
               _tiles(q_seg, block_q, _PAD_Q), lse, _tiles(jnp.moveaxis(delta, 3, 1), block_q, 0))
    kv_tiles = (_tiles(k, block_kv, 0), _tiles(v, block_kv, 0), _tiles(kv_pos, block_kv, 0),
                _tiles(kv_seg, block_kv, _PAD_KV))

    def tile_grads(mask, q_tile, do_tile, lse_tile, delta_tile, k_tile, v_tile):
        """Probabilities and score gradients `[B, K, G, bq, bk]` of one tile; `delta_tile` is `[B, bq, K, G]`."""
        p = jnp.where(mask[:, None, None], jnp.exp(_scores(q_tile, k_tile, mask, scale) - lse_tile[..., None]), 0.0)
        dp = jnp.einsum("btkgd,bskd->bkgts", do_tile, v_tile, preferred_element_type=jnp.float32)
        return p, p * (dp - jnp.einsum("btkg->bkgt", delta_tile)[..., None])

    def dq_of_q_tile(q_tile_inputs):
        q_tile, do_tile, qp, qs, lse_tile, delta_tile = q_tile_inputs

        def step(dq, kv_tile):
            k_tile, v_tile, kp, ks = kv_tile
            mask = attention_mask(qp, kp, qs, ks, window)

            def compute(dq):
                _, ds = tile_grads(mask, q_tile, do_tile, lse_tile, delta_tile, k_tile, v_tile)
                return dq + jnp.einsum("bkgts,bskd->btkgd", ds.astype(k_tile.dtype), k_tile,
                                       preferred_element_type=jnp.float32) * scale

            return _skip_empty(mask, compute, dq), None

        dq, _ = jax.lax.scan(step, jnp.zeros(q_tile.shape, jnp.float32), kv_tiles)
        return dq

    def dkv_of_kv_tile(kv_tile):
        k_tile, v_tile, kp, ks = kv_tile

        def step(carry, q_tile_inputs):
            q_tile, do_tile, qp, qs, lse_tile, delta_tile = q_tile_inputs
            mask = attention_mask(qp, kp, qs, ks, window)

            def compute(carry):
                dk, dv = carry
                p, ds = tile_grads(mask, q_tile, do_tile, lse_tile, delta_tile, k_tile, v_tile)
                dv = dv + jnp.einsum("bkgts,btkgd->bskd", p.astype(do_tile.dtype), do_tile,
                                     preferred_element_type=jnp.float32)
                dk = dk + jnp.einsum("bkgts,btkgd->bskd", ds.astype(q_tile.dtype), q_tile,
                                     preferred_element_type=jnp.float32) * scale
                return dk, dv

            return _skip_empty(mask, compute, carry), None

        zeros = jnp.zeros(k_tile.shape, jnp.float32)
        (dk, dv), _ = jax.lax.scan(step, (zeros, zeros), q_tiles)
        return dk, dv

    dq = _untile(jax.lax.map(dq_of_q_tile, q_tiles), length).reshape(batch, length, heads, dim)
    dk, dv = jax.lax.map(dkv_of_kv_tile, kv_tiles)
    return (dq.astype(q.dtype), _untile(dk, kv_length).astype(k.dtype), _untile(dv, kv_length).astype(v.dtype),
            None, None, None, None)


_attention.defvjp(_attention_fwd, _attention_bwd)
