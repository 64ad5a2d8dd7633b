"""The jitted train and eval steps: gradient accumulation over microbatches, clipping + AdamW on the LoRA
parameters only, and a NaN/Inf guard that skips a bad update instead of applying it.

The model is split once into `graphdef`, the trainable LoRA state and the frozen rest (base weights,
norms, embeddings); the step takes them as separate arguments so the frozen base is never donated,
copied or differentiated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from devstral_jax import sharding
from devstral_jax.train import ewc
from devstral_jax.train.loss import chunked_loss_sum

Batch = dict[str, jax.Array]  # int32 [microbatches, rows, seq]: inputs, targets, loss_mask, segment_ids, positions


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    step: jax.Array  # int32 []: optimizer steps taken (including skipped ones)
    lora: nnx.State  # the trainable parameters
    opt_state: Any
    rng: jax.Array  # uint32 [2]: the dropout key; folded with the step
    bad_steps_in_a_row: jax.Array  # int32 []: consecutive non-finite steps (reset by a good one)
    skipped_steps: jax.Array  # int32 []: all non-finite steps so far
    ewc: ewc.Anchor | None = None  # a later stage's EWC anchor (earlier stages' Fisher and adapters)


def init_state(lora: nnx.State, tx: optax.GradientTransformation, seed: int,
               anchor: ewc.Anchor | None = None) -> TrainState:
    zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731: distinct buffers, since the state is donated
    return TrainState(step=zero(), lora=lora, opt_state=tx.init(lora), rng=jax.random.PRNGKey(seed),
                      bad_steps_in_a_row=zero(), skipped_steps=zero(), ewc=anchor)


def micro_loss(graphdef: nnx.GraphDef, lora: nnx.State, frozen: nnx.State, micro: Batch,
                dropout_rng: jax.Array | None, chunk_size: int) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, lora, frozen)
    hidden, _ = model(micro["inputs"], micro["positions"], micro["segment_ids"], dropout_rng=dropout_rng,
                      return_hidden=True)
    return chunked_loss_sum(hidden, micro["targets"], micro["loss_mask"], model.logits, chunk_size)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    chunk_size: int, use_dropout: bool, ewc_strength: optax.Schedule | None = None
                    ) -> Callable[[TrainState, nnx.State, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """`step(state, frozen, batch) -> (state, metrics)`; wrap with `jit_train_step` for shardings. With a state
    that carries an EWC anchor, the gradient includes `ewc_strength(step) * penalty`'s (the reported loss does not)."""

    def step(state: TrainState, frozen: nnx.State, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        step_rng = jax.random.fold_in(state.rng, state.step)
        microbatches = batch["inputs"].shape[0]

        def accumulate(carry, xs):
            grads_sum, loss_sum, tokens = carry
            micro, index = xs
            rng = jax.random.fold_in(step_rng, index) if use_dropout else None
            (loss, count), grads = jax.value_and_grad(micro_loss, argnums=1, has_aux=True)(
                graphdef, state.lora, frozen, micro, rng, chunk_size)
            grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
            return (grads_sum, loss_sum + loss, tokens + count), None

        zeros = jax.tree.map(jnp.zeros_like, state.lora)
        (grads, loss_sum, tokens), _ = jax.lax.scan(
            accumulate, (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)),
            (batch, jnp.arange(microbatches)))
        # The mean over every target token of the whole batch: accumulation changes nothing numerically
        # but the summation order.
        tokens = jnp.maximum(tokens, 1.0)
        grads = jax.tree.map(lambda g: g / tokens, grads)
        loss = loss_sum / tokens
        extra = {}
        if state.ewc is not None:
            penalty, penalty_grads = jax.value_and_grad(ewc.penalty)(state.lora, state.ewc)
            strength = ewc_strength(state.step)
            grads = jax.tree.map(lambda g, p: g + strength * p, grads, penalty_grads)
            extra = dict(ewc_penalty=strength * penalty)
        grad_norm = optax.tree.norm(grads)
        # Not optax.apply_if_finite: it looks at the gradients only (this also rejects a non-finite loss); after
        # `max_consecutive_errors` bad steps it gives up and applies the non-finite update, where the trainer
        # stops the run at `train.max_bad_steps` with the adapters untouched; and its counters would sit inside
        # `opt_state` instead of being the TrainState fields the trainer reads and checkpoints keep.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        updates, opt_state = tx.update(grads, state.opt_state, state.lora)
        lora = optax.apply_updates(state.lora, updates)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731: skip a non-finite update entirely
        new_state = TrainState(
            step=state.step + 1, lora=jax.tree.map(keep, lora, state.lora),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state), rng=state.rng,
            bad_steps_in_a_row=jnp.where(finite, 0, state.bad_steps_in_a_row + 1),
            skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32), ewc=state.ewc)
        metrics = dict(loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step), tokens=tokens,
                       finite=finite, **extra)
        return new_state, metrics

    return step


def make_eval_step(graphdef: nnx.GraphDef, chunk_size: int) -> Callable[[nnx.State, nnx.State, Batch],
                                                                         tuple[jax.Array, jax.Array]]:
    """`eval_step(lora, frozen, batch) -> (loss sum, target tokens)` over all microbatches."""

    def eval_step(lora: nnx.State, frozen: nnx.State, batch: Batch) -> tuple[jax.Array, jax.Array]:
        def body(carry, micro):
            loss, count = micro_loss(graphdef, lora, frozen, micro, None, chunk_size)
            return (carry[0] + loss, carry[1] + count), None

        (loss, count), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())), batch)
        return loss, count

    return eval_step


def jit_train_step(step: Callable, state: TrainState, frozen: nnx.State, mesh: Mesh) -> tuple[Callable, Any]:
    """The step under `jax.jit` with explicit shardings and the train state donated.
    Returns (jitted step, state shardings) for placing the state."""
    state_shardings = sharding.state_shardings(state, mesh)
    frozen_shardings = sharding.state_shardings(frozen, mesh)
    jitted = jax.jit(sharding.traced_on(step, mesh),  # under the mesh: the model's activation constraints apply
                     in_shardings=(state_shardings, frozen_shardings, sharding.batch_sharding(mesh)),
                     out_shardings=(state_shardings, None), donate_argnums=(0,))
    return jitted, state_shardings
