"""The blockwise attention kernel against the reference kernel (values, gradients, memory) and, inside the
model, against transformers."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from devstral_jax.lora import LoRAParam
from devstral_jax.model import Transformer
from devstral_jax.model.attention_kernels import KERNELS, xla_attention
from devstral_jax.model.chunked_attention import chunked_attention
from devstral_jax.sampler import Sampler, SamplingConfig
from tests.model_helpers import TINY, hf_greedy, hf_logits, hf_model, max_relative_error, ours_from_hf


def _packed_inputs(batch=2, length=37, heads=4, kv_heads=2, dim=8, seed=0):
    """q, k, v and masking inputs for rows packing two documents, one with left padding (segment 0)."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(batch, length, heads, dim)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(batch, length, kv_heads, dim)), jnp.float32) for _ in range(2))
    segments = np.ones((batch, length), np.int32)
    segments[0, 20:] = 2
    segments[1, :5] = 0
    starts = np.concatenate([np.ones((batch, 1), bool), segments[:, 1:] != segments[:, :-1]], axis=1)
    positions = np.zeros((batch, length), np.int32)
    for t in range(1, length):
        positions[:, t] = np.where(starts[:, t], 0, positions[:, t - 1] + 1)
    masking = dict(q_positions=jnp.asarray(positions), kv_positions=jnp.asarray(positions),
                   q_segment_ids=jnp.asarray(segments), kv_segment_ids=jnp.asarray(segments))
    return q, k, v, masking


@pytest.mark.parametrize("window", [None, 7])
@pytest.mark.parametrize("blocks", [(8, 8), (8, 16), (64, 64)])
def test_values_and_gradients_equal_the_reference_kernel(window, blocks):
    q, k, v, masking = _packed_inputs()
    chunked = functools.partial(chunked_attention, block_q=blocks[0], block_kv=blocks[1])
    reference = xla_attention(q, k, v, sliding_window=window, **masking)
    np.testing.assert_allclose(chunked(q, k, v, sliding_window=window, **masking), reference, rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=reference.shape), jnp.float32)

    def grads(kernel):
        loss = lambda q, k, v: jnp.sum(kernel(q, k, v, sliding_window=window, **masking) * cotangent)
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    for ours, expected in zip(jax.jit(lambda: grads(chunked))(), grads(xla_attention)):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_queries_against_a_partly_filled_cache():
    """Decode shape: 3 new tokens at positions 10-12 against a 24-slot cache whose last 11 slots are empty."""
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.normal(size=(1, 3, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(1, 24, 2, 8)), jnp.float32) for _ in range(2))
    kv_segments = jnp.asarray([[1] * 13 + [0] * 11])
    masking = dict(q_positions=jnp.asarray([[10, 11, 12]]), kv_positions=jnp.asarray([list(range(13)) + [0] * 11]),
                   q_segment_ids=jnp.ones((1, 3), jnp.int32), kv_segment_ids=kv_segments)
    np.testing.assert_allclose(chunked_attention(q, k, v, sliding_window=None, block_q=2, block_kv=8, **masking),
                               xla_attention(q, k, v, sliding_window=None, **masking), rtol=1e-5, atol=1e-5)


def test_training_memory_is_linear_in_sequence_length():
    """Compiled temporary memory of attention's gradient at T = 4096: the reference holds [H, T, T] scores."""
    batch, length, heads, kv_heads, dim = 1, 4096, 8, 2, 64
    spec = jax.ShapeDtypeStruct
    args = (spec((batch, length, heads, dim), jnp.float32), spec((batch, length, kv_heads, dim), jnp.float32),
            spec((batch, length, kv_heads, dim), jnp.float32), spec((batch, length), jnp.int32),
            spec((batch, length), jnp.int32))

    def temp_bytes(kernel):
        def loss(q, k, v, positions, segments):
            return kernel(q, k, v, q_positions=positions, kv_positions=positions, q_segment_ids=segments,
                          kv_segment_ids=segments, sliding_window=None).sum()
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile().memory_analysis().temp_size_in_bytes

    one_score_matrix = batch * heads * length * length * 4
    reference, chunked = temp_bytes(xla_attention), temp_bytes(chunked_attention)
    assert reference > one_score_matrix  # what the chunked kernel avoids
    assert chunked < one_score_matrix / 8 and chunked < reference / 10, (chunked, reference)


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_a_differentiated_layer_scan_keeps_no_stack_of_attention_tiles(remat_policy):
    """Positions and segment ids are constants of the layer scan. Left so, JAX's partial evaluation of the
    differentiated scan hoists every tile's mask computation out of the loop and keeps the results, stacked
    [q tiles, kv tiles, B, K, G, bq, bk] (4 GiB each for Devstral at T = 4096), instead of recomputing them."""
    config = TINY.replace(attention_impl="chunked", remat_policy=remat_policy, num_layers=2, lora_rank=2)
    model = Transformer(config, rngs=nnx.Rngs(0))
    graphdef, adapters, frozen = nnx.split(model, LoRAParam, ...)
    tokens = jnp.ones((1, 64), jnp.int32)

    def loss(adapters):
        return nnx.merge(graphdef, adapters, frozen)(tokens)[0].sum()

    KERNELS["chunked"] = functools.partial(chunked_attention, block_q=16, block_kv=16)  # 4 x 4 tiles
    try:
        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(adapters))
    finally:
        KERNELS["chunked"] = chunked_attention
    assert "scan[" in jaxpr and not re.findall(r"\[4,4,[\d,]*16,16\]", jaxpr)


@pytest.fixture
def small_tiles():
    """The chunked kernel with 8 x 8 tiles, registered like any kernel, so that short test sequences span tiles."""
    KERNELS["chunked_8"] = functools.partial(chunked_attention, block_q=8, block_kv=8)
    yield "chunked_8"
    del KERNELS["chunked_8"]


@pytest.mark.parametrize("sliding_window", [None, 7])
def test_model_logits_match_transformers(small_tiles, sliding_window):
    config = TINY.replace(attention_impl=small_tiles, sliding_window=sliding_window)
    hf = hf_model(config, seed=4)
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, config.vocab_size, (2, 30))
    mask = np.ones((2, 30), np.int64)
    mask[1, :9] = 0  # left padding, as in generation
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    ours = np.asarray(ours_from_hf(config, hf)(tokens, positions, mask)[0])
    reference = hf_logits(hf, tokens, attention_mask=mask, position_ids=positions)
    assert max_relative_error(ours[mask.astype(bool)], reference[mask.astype(bool)]) < 1e-4


def test_greedy_generation_equals_transformers(small_tiles):
    config = TINY.replace(attention_impl=small_tiles, remat_policy="none")
    hf = hf_model(config, seed=5)
    prompts = [np.random.default_rng(5).integers(1, config.vocab_size, n).tolist() for n in (5, 17)]
    sampling = SamplingConfig(max_new_tokens=12, steps_per_call=4, prompt_bucket=16)
    for prompt, completion in zip(prompts, Sampler(ours_from_hf(config, hf)).generate_tokens(prompts, sampling)):
        assert completion.tokens == hf_greedy(hf, prompt, sampling.max_new_tokens)
