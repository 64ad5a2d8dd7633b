"""The decoder (Mistral and Llama families): embedding, pre-norm blocks (scanned or unrolled, rematerialised), final
norm, and lm_head (or, with tied embeddings, the embedding matrix transposed).

One call serves training, evaluation and decoding, as in flax's examples/gemma:

    logits, _ = model(tokens, positions, segment_ids)                       # score a (packed, padded) batch
    hidden, _ = model(tokens, positions, segment_ids, return_hidden=True)   # the chunked loss: model.logits piecewise
    logits, cache = model(tokens, positions, segment_ids, cache)            # prefill, then one token per step
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from devstral_jax import sharding
from devstral_jax.config import ModelConfig
from devstral_jax.model.attention import Attention
from devstral_jax.model.kv_cache import KVCache, LayerCache, layer_view, write_layer, write_slots
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

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: LayerCache | None = None,
                 dropout_rng: jax.Array | None = None) -> tuple[jax.Array, LayerCache | None]:
        attended, cache = self.attn(self.input_norm(x), positions, segment_ids, cache, dropout_rng)
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
    """`tokens [B, T]` -> (logits `[B, T, vocab]` float32 or final-normed hidden states, KV cache or None).

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
        self.lm_head = None if config.tie_word_embeddings else Linear(
            config.hidden_size, config.vocab_size, axes=("embed", "vocab"), dtype=dtype, param_dtype=param_dtype,
            rngs=rngs, init_std=config.initializer_range)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 cache: KVCache | None = None, *, dropout_rng: jax.Array | None = None,
                 return_hidden: bool = False) -> tuple[jax.Array, KVCache | None]:
        """(logits, or with `return_hidden` the final-normed hidden states `[B, T, hidden]`; the updated cache).

        Without a cache the tokens attend to each other and the cache returned is None. With one, they follow
        the tokens already in it (a whole prompt, then one token per step), attend to those too, and are
        appended at `cache.index`. `positions` default to 0..T-1 (required with a cache: they continue each
        row's) and `segment_ids` to a single document. `dropout_rng` switches LoRA dropout on (training).
        """
        if positions is None:
            if cache is not None:
                raise ValueError("With a cache, pass the new tokens' positions (they continue each row's).")
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        if cache is not None:
            cache = write_slots(cache, positions, segment_ids)
        x, cache = self._blocks(self.embedder(tokens), positions, segment_ids, cache, dropout_rng)
        if cache is not None:
            cache = cache._replace(index=cache.index + tokens.shape[1])
        hidden = self.final_norm(x)
        return (hidden if return_hidden else self.logits(hidden)), cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        """float32 logits of final-normed hidden states: the chunked loss and the sampler apply it to slices."""
        if self.lm_head is None:
            return self.embedder.attend(hidden).astype(jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def _blocks(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: KVCache | None,
                dropout_rng: jax.Array | None) -> tuple[jax.Array, KVCache | None]:
        """Every block, through one layer body: scanned over the stacked layers, or looped over unrolled ones."""
        new_slots = x.shape[1]

        def run_block(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, positions: jax.Array,
                      segment_ids: jax.Array, view: LayerCache | None,
                      rng: jax.Array | None) -> tuple[jax.Array, LayerCache | None]:
            return nnx.merge(graphdef, state)(x, positions, segment_ids, view, rng)

        if self.config.remat_policy != "none":  # only differentiation sees it: a forward-only call runs it as is
            run_block = jax.checkpoint(run_block, policy=remat_policy(self.config.remat_policy),
                                       prevent_cse=not self.config.scan_layers, static_argnums=(0,))

        def layer(graphdef: nnx.GraphDef, state: nnx.State, rng: jax.Array | None, index: jax.Array | int,
                  x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                  cache: KVCache | None) -> tuple[jax.Array, KVCache | None]:
            """One block; with a cache it attends over layer `index`'s slots, and only its new ones are written back."""
            x = sharding.constrain(x, ("batch", "seq", "act_embed"), "block input")
            if cache is None:
                x, view = run_block(graphdef, state, x, positions, segment_ids, None, rng)
            else:
                x, view = run_block(graphdef, state, x, positions, segment_ids, layer_view(cache, index), rng)
                cache = write_layer(cache, index, view, new_slots)
            return sharding.constrain(x, ("batch", "seq", "act_embed"), "block output"), cache

        rngs = None if dropout_rng is None else jax.random.split(dropout_rng, self.config.num_layers)
        if not self.config.scan_layers:
            for index, block in enumerate(self.layers):
                x, cache = layer(*nnx.split(block), None if rngs is None else rngs[index], index, x, positions,
                                 segment_ids, cache)
            return x, cache
        graphdef, stacked = nnx.split(self.layers)

        def scan_body(carry, xs):  # the layer index rides in the carry: cheaper than scanning over an index array
            x, cache, index = carry
            # Positions and segment ids would be loop constants here, and when the scan is differentiated, JAX
            # hoists whatever the body computes from loop constants alone out of the loop and keeps it alive: the
            # attention masks of every tile of every kernel, stacked (GBs at T = 4096). Tying them to this
            # layer's input makes them per-layer values: each layer recomputes its masks, in its own tiles.
            x, layer_positions, layer_segment_ids = jax.lax.optimization_barrier((x, positions, segment_ids))
            return (*layer(graphdef, *xs, index, x, layer_positions, layer_segment_ids, cache), index + 1), None

        (x, cache, _), _ = jax.lax.scan(scan_body, (x, cache, jnp.int32(0)), (stacked, rngs))
        return x, cache


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
