"""The Mistral/Devstral decoder: embedding, N pre-norm blocks (scanned or unrolled, rematerialised), final norm, lm_head."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from devstral_jax.config import ModelConfig
from devstral_jax.model.attention import Attention
from devstral_jax.model.kv_cache import KVCache, LayerCache, write_slots
from devstral_jax.model.layers import MLP, Embed, RMSNorm
from devstral_jax.model.linear import Linear


class Block(nnx.Module):
    """x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        param_dtype = jnp.dtype(config.param_dtype)
        self.input_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=param_dtype)
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                 dropout_rng: jax.Array | None = None, cache: LayerCache | None = None
                 ) -> jax.Array | tuple[jax.Array, LayerCache]:
        if cache is None:
            x = x + self.attn(self.input_norm(x), positions, segment_ids, dropout_rng)
            return x + self.mlp(self.post_attn_norm(x), dropout_rng)
        attended, cache = self.attn(self.input_norm(x), positions, segment_ids, dropout_rng, cache)
        x = x + attended
        return x + self.mlp(self.post_attn_norm(x), dropout_rng), cache


def remat_policy(name: str) -> Callable | None:
    """The `jax.checkpoint` policy for a `ModelConfig.remat_policy` name ('none' is handled by the caller)."""
    return {
        "full": None,  # save only the layer's input; recompute everything else
        "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
    }[name]


class Transformer(nnx.Module):
    """`tokens [B, T]` -> logits `[B, T, vocab]` (float32).

    `positions` restart at 0 for each document of a packed row and `segment_ids` number its documents
    (0 = padding), so no token attends across documents. With `scan_layers` the blocks' parameters are
    stacked on a leading `layers` axis and one block body is compiled and scanned.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        self.embedder = Embed(config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                              init_std=config.initializer_range)
        if config.scan_layers:
            self.layers = _stacked_blocks(config, rngs)
        else:
            self.layers = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=param_dtype)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, axes=("embed", "vocab"), dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs, init_std=config.initializer_range)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 *, dropout_rng: jax.Array | None = None) -> jax.Array:
        return self.logits(self.hidden_states(tokens, positions, segment_ids, dropout_rng=dropout_rng))

    def hidden_states(self, tokens: jax.Array, positions: jax.Array | None = None,
                      segment_ids: jax.Array | None = None, *, dropout_rng: jax.Array | None = None) -> jax.Array:
        """The final-normed hidden states `[B, T, hidden]`; the chunked loss applies `logits` piecewise.

        `dropout_rng` switches LoRA dropout on (training); None means no dropout.
        """
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        x = self.embedder(tokens)
        x = self._run_blocks(x, positions, segment_ids, dropout_rng)
        return self.final_norm(x)

    def decode(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array,
               cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Runs `tokens` `[B, T]` that follow the tokens already in `cache` (a whole prompt, then one token per
        step): their final-normed hidden states `[B, T, hidden]`, and the cache with them appended at
        `cache.index`. Inference only: no dropout, no remat.
        """
        cache = write_slots(cache, positions, segment_ids)
        batch, seq = tokens.shape

        def apply_block(block: Block, x: jax.Array, keys: jax.Array, values: jax.Array, layer: jax.Array | int):
            view = LayerCache(keys[layer], values[layer], cache.positions, cache.segment_ids, cache.index)
            x, view = block(x, positions, segment_ids, None, view)
            # Write back only the T new slots of this layer, so the big cache is updated in place.
            new = [jax.lax.dynamic_slice(a, (0, cache.index, 0, 0), (batch, seq, *a.shape[2:]))[None]
                   for a in (view.keys, view.values)]
            keys = jax.lax.dynamic_update_slice(keys, new[0], (layer, 0, cache.index, 0, 0))
            values = jax.lax.dynamic_update_slice(values, new[1], (layer, 0, cache.index, 0, 0))
            return x, keys, values

        x, keys, values = self.embedder(tokens), cache.keys, cache.values
        if self.config.scan_layers:
            graphdef, stacked = nnx.split(self.layers)

            def body(carry, layer_state):
                x, keys, values, layer = carry
                x, keys, values = apply_block(nnx.merge(graphdef, layer_state), x, keys, values, layer)
                return (x, keys, values, layer + 1), None

            (x, keys, values, _), _ = jax.lax.scan(body, (x, keys, values, jnp.int32(0)), stacked)
        else:
            for layer, block in enumerate(self.layers):
                x, keys, values = apply_block(block, x, keys, values, layer)
        return self.final_norm(x), cache._replace(keys=keys, values=values, index=cache.index + seq)

    def logits(self, hidden: jax.Array) -> jax.Array:
        return self.lm_head(hidden).astype(jnp.float32)

    def _run_blocks(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                    dropout_rng: jax.Array | None) -> jax.Array:
        def apply_block(graphdef: nnx.GraphDef, state: nnx.State, rng: jax.Array | None, x: jax.Array) -> jax.Array:
            return nnx.merge(graphdef, state)(x, positions, segment_ids, rng)

        if self.config.remat_policy != "none":
            apply_block = jax.checkpoint(apply_block, policy=remat_policy(self.config.remat_policy),
                                         prevent_cse=not self.config.scan_layers, static_argnums=(0,))
        rngs = None if dropout_rng is None else jax.random.split(dropout_rng, self.config.num_layers)
        if self.config.scan_layers:
            graphdef, stacked = nnx.split(self.layers)
            x, _ = jax.lax.scan(lambda h, layer: (apply_block(graphdef, *layer, h), None), x, (stacked, rngs))
            return x
        for i, block in enumerate(self.layers):
            x = apply_block(*nnx.split(block), None if rngs is None else rngs[i], x)
        return x


def _stacked_blocks(config: ModelConfig, rngs: nnx.Rngs) -> Block:
    """`num_layers` independently initialised Blocks whose parameters carry a leading `layers` axis."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0)
    def make(rngs: nnx.Rngs) -> Block:
        return Block(config, rngs=rngs)

    blocks = make(rngs)
    for _, variable in nnx.iter_graph(blocks):
        if isinstance(variable, nnx.Variable) and "logical_axes" in variable.get_metadata():
            variable.set_metadata(logical_axes=("layers", *variable.get_metadata()["logical_axes"]))
    return blocks
