"""The model's one forward call: scoring a whole batch (what training does) and decoding through a KV cache
(a prefill, then one token per call) are the same call and give the same logits, for packed and padded rows."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from devstral_jax.model import Transformer, init_cache
from tests.model_helpers import TINY, max_relative_error

LENGTH, PREFILL = 16, 5


@nnx.jit
def _forward(model: Transformer, tokens, positions, segment_ids, cache=None):
    return model(tokens, positions, segment_ids, cache)


def _decoded_logits(model: Transformer, tokens: np.ndarray, positions: np.ndarray, segment_ids: np.ndarray):
    """Logits of every position from a prefill of the first `PREFILL` tokens, then one token per call, each call
    attending to the others only through the cache."""
    cache = init_cache(model.config, tokens.shape[0], tokens.shape[1])
    pieces = []
    for start, end in [(0, PREFILL)] + [(t, t + 1) for t in range(PREFILL, tokens.shape[1])]:
        logits, cache = _forward(model, tokens[:, start:end], positions[:, start:end], segment_ids[:, start:end],
                                 cache)
        pieces.append(np.asarray(logits))
    assert int(cache.index) == tokens.shape[1]
    return np.concatenate(pieces, axis=1)


def _packed_rows() -> tuple[np.ndarray, np.ndarray]:
    """Two rows, each two documents (segment ids 1 and 2, positions restarting); the second document of row 0
    starts during the decode steps, that of row 1 inside the prefill."""
    segment_ids = np.array([[1] * 9 + [2] * 7, [1] * 3 + [2] * 13])
    positions = np.array([list(range(9)) + list(range(7)), list(range(3)) + list(range(13))])
    return positions, segment_ids


def _left_padded_rows() -> tuple[np.ndarray, np.ndarray]:
    """Row 0 left-padded by 7 (segment id 0, as the sampler pads prompts), row 1 unpadded."""
    segment_ids = np.array([[0] * 7 + [1] * 9, [1] * 16])
    positions = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0)
    return positions, segment_ids


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("rows", [_packed_rows, _left_padded_rows], ids=["packed", "left_padded"])
def test_training_forward_equals_prefill_plus_cached_decode(scan_layers, rows):
    model = Transformer(TINY.replace(scan_layers=scan_layers), rngs=nnx.Rngs(0))
    positions, segment_ids = rows()
    tokens = np.random.default_rng(0).integers(1, TINY.vocab_size, (2, LENGTH))
    whole, cache = _forward(model, tokens, positions, segment_ids)
    assert cache is None
    decoded = _decoded_logits(model, tokens, positions, segment_ids)
    real = segment_ids > 0  # padding's own logits are never used
    assert max_relative_error(decoded[real], np.asarray(whole)[real]) < 1e-5
    # The decode steps really depend on the cache: without it each token would see itself alone.
    alone = np.asarray(_forward(model, tokens[:, -1:], positions[:, -1:], segment_ids[:, -1:])[0])
    assert max_relative_error(alone[:, 0], decoded[:, -1]) > 1e-2


def test_hidden_states_are_what_the_logits_are_made_of():
    model = Transformer(TINY, rngs=nnx.Rngs(1))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, TINY.vocab_size, (2, 12)))
    hidden, _ = model(tokens, return_hidden=True)
    logits, _ = model(tokens)
    assert hidden.shape == (2, 12, TINY.hidden_size)
    np.testing.assert_array_equal(model.logits(hidden), logits)


def test_a_cache_needs_the_new_tokens_positions():
    model = Transformer(TINY, rngs=nnx.Rngs(2))
    with pytest.raises(ValueError, match="With a cache, pass the new tokens' positions"):
        model(jnp.ones((1, 3), jnp.int32), cache=init_cache(TINY, 1, 8))
