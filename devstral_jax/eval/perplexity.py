"""Perplexity on held-out Elixir text: exp(mean negative log-likelihood per predicted token).

Each text is tokenized (BOS ... EOS) and cut into windows of `seq_len + 1` tokens that overlap by one, so
every token after BOS is predicted exactly once, from at most `seq_len` tokens of context. Logits are
computed a slice of positions at a time, never `[batch, seq, vocab]` at once.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from devstral_jax.errors import DataError
from devstral_jax.model import Transformer
from devstral_jax.tokenizers import Tokenizer

_LOGITS_SLICE = 128  # positions whose logits exist at the same time


def windows(tokens: list[int], seq_len: int) -> list[list[int]]:
    """`seq_len + 1`-token windows overlapping by one token (the last one may be shorter)."""
    return [tokens[start:start + seq_len + 1] for start in range(0, max(1, len(tokens) - 1), seq_len)]


@functools.partial(jax.jit, static_argnums=(0,))
def _nll(graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum of -log p(token | prefix) over the masked targets of `tokens` `[B, T + 1]`, and their count."""
    model = nnx.merge(graphdef, state)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
    hidden, _ = model(inputs, positions, mask[:, :-1].astype(jnp.int32), return_hidden=True)
    batch, length, features = hidden.shape
    slices = length // _LOGITS_SLICE

    def slice_nll(args):
        h, t = args
        logits = model.logits(h)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), t[..., None], axis=-1)[..., 0]

    nll = jax.lax.map(slice_nll, (hidden.reshape(batch, slices, -1, features).swapaxes(0, 1),
                                  targets.reshape(batch, slices, -1).swapaxes(0, 1)))
    weights = mask[:, 1:].reshape(batch, slices, -1).swapaxes(0, 1)
    return jnp.sum(nll * weights), jnp.sum(weights)


def perplexity(model: Transformer, tokenizer: Tokenizer, texts: Iterable[str], *, seq_len: int = 1024,
               batch_size: int = 4, max_tokens: int | None = None) -> dict:
    """{"perplexity", "nll_per_token", "tokens"} of `model` on `texts` (up to `max_tokens` predicted tokens)."""
    seq_len = -(-seq_len // _LOGITS_SLICE) * _LOGITS_SLICE
    rows: list[list[int]] = []
    budget = max_tokens or math.inf
    for text in texts:
        for window in windows(tokenizer.encode(text, bos=True, eos=True), seq_len):
            if budget <= 0:
                break
            rows.append(window[:int(min(len(window), budget + 1))])
            budget -= len(rows[-1]) - 1
    if not rows:
        raise DataError("No text to measure perplexity on.")
    graphdef, state = nnx.split(model)
    total, count = 0.0, 0.0
    for start in tqdm(range(0, len(rows), batch_size), desc="perplexity", unit="batch"):
        batch = rows[start:start + batch_size]
        tokens = np.zeros((batch_size, seq_len + 1), np.int32)
        mask = np.zeros((batch_size, seq_len + 1), np.int32)
        for i, row in enumerate(batch):
            tokens[i, :len(row)], mask[i, :len(row)] = row, 1
        nll, n = _nll(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask))
        total, count = total + float(nll), count + float(n)
    return {"perplexity": math.exp(total / count), "nll_per_token": total / count, "tokens": int(count)}
