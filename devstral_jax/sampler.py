"""Batched generation with a KV cache under `jax.jit`: greedy, temperature, top-k, top-p, stop sequences.

Prompts of different lengths share one batch by left padding (positions restart at 0 in every row, padding
has segment id 0), so each row generates exactly what it would generate alone. Shapes are bucketed
(prompt length to a multiple of `prompt_bucket`, batch to a multiple of the mesh's data axes), so a whole
benchmark compiles a handful of times. The device runs `steps_per_call` decode steps per call; between
calls the host decodes the new text and retires rows that produced EOS or a stop sequence, and an optional
`stream` callback receives each row's new tokens. The returned text is cut at the earliest stop sequence
exactly as MultiPL-E cuts its completions. Prefill and decode steps are the model's one forward call with a
cache.

    sampler = Sampler(model, tokenizer)
    completions = sampler.generate(["defmodule Foo do\n"], SamplingConfig(max_new_tokens=64), stop=["\n\n"])
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Callable, Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from devstral_jax import sharding
from devstral_jax.errors import ConfigError
from devstral_jax.model import KVCache, Transformer, init_cache
from devstral_jax.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches p; 1 = all
    seed: int = 0
    steps_per_call: int = 16  # decode steps per device call between the host's stop checks
    prompt_bucket: int = 64  # prompt lengths are padded up to a multiple of this (fewer compilations)

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}.")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}.")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k!r}.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}.")
        if self.steps_per_call < 1 or self.prompt_bucket < 1:
            raise ConfigError("steps_per_call and prompt_bucket must be positive.")


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str  # decoded and cut at the earliest stop sequence
    tokens: list[int]  # every token generated (EOS excluded), including any past the cut
    finish_reason: str  # "stop" (a stop sequence), "eos" or "length"


Stream = Callable[[list[list[int]]], None]  # called with each prompt's new tokens after every device call


class TextStream:
    """A `stream` for one prompt that writes its completion's text to `out` as the tokens arrive. The bytes of a
    character that is not complete yet (decoded as U+FFFD) wait for the next call; `close` writes what is left."""

    def __init__(self, decode: Callable[[list[int]], str], out: TextIO = sys.stdout):
        self.decode = decode
        self.out = out
        self.tokens: list[int] = []
        self.written = 0

    def __call__(self, new_tokens: list[list[int]]) -> None:
        self.tokens += new_tokens[0]
        self._write(self.decode(self.tokens).rstrip("\ufffd"))

    def close(self) -> None:
        self._write(self.decode(self.tokens))

    def _write(self, text: str) -> None:
        if len(text) > self.written:
            self.out.write(text[self.written:])
            self.out.flush()
            self.written = len(text)


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """The prefix of `text` before the earliest occurrence of any stop sequence (MultiPL-E's rule)."""
    cut = len(text)
    for sequence in stop:
        index = text.find(sequence)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """One token id per row of `logits` `[B, V]`: argmax when `temperature` is 0, else a draw from the
    tempered distribution restricted to the top-k tokens and then to the top-p nucleus."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        descending = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(descending, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # The nucleus: every token whose predecessors (in probability order) hold less than top_p.
        cutoff = jnp.min(jnp.where(mass_before < top_p, descending, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 6), donate_argnums=(5,))
def _prefill(graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array, positions: jax.Array,
             segment_ids: jax.Array, cache: KVCache, sampling: tuple[float, int, float],
             key: jax.Array) -> tuple[jax.Array, KVCache]:
    """Runs the padded prompts through the model; samples the first new token from the last position."""
    model = nnx.merge(graphdef, state)
    hidden, cache = model(tokens, positions, segment_ids, cache, return_hidden=True)
    return sample_logits(model.logits(hidden[:, -1]), jax.random.fold_in(key, 0), *sampling), cache


@functools.partial(jax.jit, static_argnums=(0, 6, 7), donate_argnums=(2,))
def _decode_steps(graphdef: nnx.GraphDef, state: nnx.State, cache: KVCache, tokens: jax.Array,
                  positions: jax.Array, step: jax.Array, num_steps: int, sampling: tuple[float, int, float],
                  key: jax.Array) -> tuple[jax.Array, KVCache]:
    """`num_steps` decode steps: feed each row's last token, sample the next. Returns `[B, num_steps]` tokens."""
    model = nnx.merge(graphdef, state)
    ones = jnp.ones_like(tokens)[:, None]

    def one_step(carry, offset):
        cache, tokens = carry
        hidden, cache = model(tokens[:, None], (positions + offset)[:, None], ones, cache, return_hidden=True)
        next_tokens = sample_logits(model.logits(hidden[:, 0]), jax.random.fold_in(key, step + offset + 1),
                                    *sampling)
        return (cache, next_tokens), next_tokens

    (cache, _), new = jax.lax.scan(one_step, (cache, tokens), jnp.arange(num_steps, dtype=jnp.int32))
    return new.T, cache


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, ...]:
    """Tokens, positions (restarting at 0 in each row) and segment ids (0 = padding), each `[B, length]`."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    segment_ids = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        if prompt:
            tokens[row, length - len(prompt):] = prompt
            segment_ids[row, length - len(prompt):] = 1
    positions = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0).astype(np.int32)
    return tokens, positions, segment_ids


class Sampler:
    """Generates from a `Transformer` (dense, NF4 or int8, with or without LoRA) on one device or a mesh.

    On a mesh, the batch is split over the mesh's `data`/`fsdp` axes and the cache's KV heads over `tensor`;
    the model's parameters keep whatever sharding they already have.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer | None = None, *, mesh: Mesh | None = None,
                 pad_id: int = 0):
        self.config = model.config
        self.graphdef, self.state = nnx.split(model)
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.pad_id = pad_id

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig, stop: Sequence[str] = (),
                 stream: Stream | None = None) -> list[Completion]:
        """Completions of text prompts (each encoded with BOS), cut at the earliest of `stop`."""
        if self.tokenizer is None:
            raise ValueError("Sampler.generate needs a tokenizer; pass one to Sampler(...) or call generate_tokens.")
        encoded = [self.tokenizer.encode(prompt, bos=True, eos=False) for prompt in prompts]
        return self.generate_tokens(encoded, sampling, stop=stop, eos_id=self.tokenizer.eos_id,
                                    decode=self.tokenizer.decode, stream=stream)

    def generate_tokens(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, *,
                        stop: Sequence[str] = (), eos_id: int | None = None,
                        decode: Callable[[list[int]], str] | None = None,
                        stream: Stream | None = None) -> list[Completion]:
        """Completions of token prompts. Stop sequences need `decode` (token ids -> text); without it every
        completion's `text` is empty and only its `tokens` count.

        `stream`, if given, is called after every device call (the prefill, then each `steps_per_call` decode
        steps) with each prompt's new tokens, in prompt order: [] for a row that has finished. A row's pieces
        concatenate to its completion's `tokens`."""
        if not prompts:
            return []
        if stop and decode is None:
            raise ValueError("Stop sequences need a `decode` function to turn tokens into text.")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("Every prompt needs at least one token (e.g. BOS).")
        decode = decode or (lambda tokens: "")
        tokens, positions, segment_ids, cache = self._inputs(prompts, sampling)
        knobs = (float(sampling.temperature), int(sampling.top_k), float(sampling.top_p))
        key = jax.random.key(sampling.seed)

        generated: list[list[int]] = [[] for _ in prompts]
        finished: list[str | None] = [None] * len(prompts)

        def add(new: np.ndarray) -> None:
            """Appends one device call's tokens `new` `[B, n]` to the unfinished rows and streams what each kept."""
            kept = []
            for row, tokens_row in enumerate(generated):
                before = len(tokens_row)
                if finished[row] is None:
                    tokens_row.extend(int(t) for t in new[row])
                    finished[row] = _finish_reason(tokens_row, stop, eos_id, decode, sampling.max_new_tokens)
                kept.append(tokens_row[before:])
            if stream:
                stream(kept)

        last, cache = _prefill(self.graphdef, self.state, tokens, positions, segment_ids, cache, knobs, key)
        add(np.asarray(last)[:, None])
        next_positions = jnp.asarray(positions[:, -1] + 1)
        produced = 1
        while produced < sampling.max_new_tokens and not all(finished):
            new, cache = _decode_steps(self.graphdef, self.state, cache, last, next_positions + produced - 1,
                                       jnp.int32(produced - 1), sampling.steps_per_call, knobs, key)
            last = new[:, -1]
            take = min(sampling.steps_per_call, sampling.max_new_tokens - produced)
            add(np.asarray(new)[:, :take])
            produced += take
        return [Completion(text=truncate_at_stop(decode(tokens_row), stop), tokens=tokens_row,
                           finish_reason=reason or "length") for tokens_row, reason in zip(generated, finished)]

    def _inputs(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig) -> tuple[jax.Array, ...]:
        """Tokens, positions and segment ids of the left-padded prompts, and an empty cache, placed on the mesh.
        The batch is rounded up to the data-parallel devices and the prompt length to `prompt_bucket`."""
        batch = _round_up(len(prompts), sharding.data_parallel_size(self.mesh) if self.mesh else 1)
        prompt_length = _round_up(max(len(p) for p in prompts), sampling.prompt_bucket)
        decode_steps = _round_up(sampling.max_new_tokens - 1, sampling.steps_per_call)
        if prompt_length + decode_steps > self.config.max_position_embeddings:
            raise ConfigError(f"Prompt ({prompt_length} tokens after padding) plus {sampling.max_new_tokens} new "
                             f"tokens exceed the model's {self.config.max_position_embeddings} positions.")
        rows = list(prompts) + [[self.pad_id]] * (batch - len(prompts))
        tokens, positions, segment_ids = left_pad(rows, prompt_length, self.pad_id)
        cache = init_cache(self.config, batch, prompt_length + decode_steps)
        return self._place((tokens, positions, segment_ids, cache))

    def _place(self, tree):
        """Puts inputs and cache on the mesh: batch over data/fsdp, KV heads over tensor (when they divide)."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        batch = tuple(a for a in sharding.BATCH_AXES if a in self.mesh.shape) or None
        tensor = self.mesh.shape.get("tensor", 1)
        heads = "tensor" if tensor > 1 and self.config.num_kv_heads % tensor == 0 else None
        specs = {5: P(None, batch, None, heads, None), 2: P(batch, None), 1: P(batch), 0: P()}
        return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(self.mesh, specs[np.ndim(x)])), tree)


def _finish_reason(tokens: list[int], stop: Sequence[str], eos_id: int | None, decode: Callable[[list[int]], str],
                   max_new_tokens: int) -> str | None:
    """Why a row is done ("eos", "stop", "length"), or None; drops an EOS and the tokens after it."""
    reason = None
    if eos_id is not None and eos_id in tokens:
        del tokens[tokens.index(eos_id):]
        reason = "eos"
    if stop:
        text = decode(tokens)
        if truncate_at_stop(text, stop) != text:
            reason = "stop"
    if reason is None and len(tokens) >= max_new_tokens:
        reason = "length"
    return reason


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)
