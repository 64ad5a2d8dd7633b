"""EWC: the Fisher estimate against brute force, the penalty's gradient against its closed form, the online
anchor, the strength schedules, and a two-task problem where EWC measurably protects the first task."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from devstral_jax import sharding
from devstral_jax.config import from_config_dict
from devstral_jax.train import ewc, fisher
from devstral_jax.train.optim import make_optimizer
from devstral_jax.train.step import init_state, jit_train_step, make_eval_step, make_train_step
from devstral_jax.train.trainer import build_model
from tests.train_helpers import packed_batch, tiny_config

SEQ, ROWS = 32, 8


@pytest.fixture(scope="module")
def tiny():
    """(config, mesh, graphdef, lora with non-zero B, frozen) of the tiny QLoRA model on one device."""
    config = tiny_config(steps=200, loss_chunk=16)
    config.model.initializer_range = 0.125  # a lm_head strong enough to express peaked predictions (see tiny_cpu)
    config.optim.learning_rate = 2e-2
    config.optim.warmup_steps = 0
    config.optim.schedule = "constant"
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    graphdef, lora, frozen, _ = build_model(config, from_config_dict(config.model), mesh)
    keys = iter(jax.random.split(jax.random.PRNGKey(7), 64))
    lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), lora)
    return config, mesh, graphdef, lora, frozen


def _random_like(tree, seed, scale=1.0, positive=False):
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 64))
    draw = lambda x: scale * jax.random.normal(next(keys), x.shape, x.dtype)  # noqa: E731
    return jax.tree.map(lambda x: jnp.abs(draw(x)) if positive else draw(x), tree)


def test_fisher_equals_brute_force_per_row_gradients_on_a_tiny_model(tiny):
    config, _, graphdef, lora, frozen = tiny
    batches = [packed_batch(seed, ROWS, SEQ, microbatches=2) for seed in (1, 2)]
    batches[1]["loss_mask"][0, 0] = 0  # a row with no target token counts nothing

    def row_nll(lora, row):  # full logits, no chunking: an independent path to each row's mean NLL
        logits, _ = nnx.merge(graphdef, lora, frozen)(row["inputs"][None], row["positions"][None],
                                                       row["segment_ids"][None])
        logp = jax.nn.log_softmax(logits[0].astype(jnp.float32))
        nll = -jnp.take_along_axis(logp, row["targets"][:, None], axis=1)[:, 0]
        return jnp.sum(nll * row["loss_mask"]) / jnp.sum(row["loss_mask"])

    squares, count = jax.tree.map(jnp.zeros_like, lora), 0
    for batch in batches:
        rows = {k: v.reshape(-1, SEQ) for k, v in batch.items()}
        for i in range(rows["inputs"].shape[0]):
            row = {k: jnp.asarray(v[i]) for k, v in rows.items()}
            if row["loss_mask"].sum() == 0:
                continue
            squares = jax.tree.map(lambda s, g: s + g * g, squares, jax.grad(row_nll)(lora, row))
            count += 1
    expected = jax.tree.map(lambda s: s / count, squares)
    got = fisher.estimate(graphdef, lora, frozen, batches, config.train.loss_chunk)
    assert count == 2 * ROWS - 1
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-4, atol=1e-12)
    assert all(float(jnp.max(g)) > 0 for g in jax.tree.leaves(got))


def test_penalty_gradient_equals_its_closed_form(tiny):
    _, _, _, lora, _ = tiny
    anchor = ewc.Anchor(fisher=_random_like(lora, 1, positive=True), params=_random_like(lora, 2, 0.1))
    strength = 3.5
    grads = jax.grad(lambda theta: strength * ewc.penalty(theta, anchor))(lora)
    closed = jax.tree.map(lambda f, p, q: strength * f * (p - q), anchor.fisher, lora, anchor.params)
    for g, c in zip(jax.tree.leaves(grads), jax.tree.leaves(closed)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(c), rtol=1e-6, atol=1e-7)
    value = 0.5 * sum(float(jnp.sum(f * (p - q) ** 2)) for f, p, q in zip(
        jax.tree.leaves(anchor.fisher), jax.tree.leaves(lora), jax.tree.leaves(anchor.params)))
    assert float(ewc.penalty(lora, anchor)) == pytest.approx(value, rel=1e-5)


def test_online_anchor_accumulates_and_round_trips_through_its_file(tiny, tmp_path):
    _, _, _, lora, _ = tiny
    f1, f2 = _random_like(lora, 3, positive=True), _random_like(lora, 4, positive=True)
    first = ewc.accumulate(None, f1, _random_like(lora, 5), gamma=0.5)
    second = ewc.accumulate(first, f2, lora, gamma=0.5)
    for a, b, s in zip(jax.tree.leaves(f1), jax.tree.leaves(f2), jax.tree.leaves(second.fisher)):
        np.testing.assert_allclose(np.asarray(s), 0.5 * np.asarray(a) + np.asarray(b), rtol=1e-6)
    ewc.save_anchor(second, str(tmp_path))
    loaded = ewc.load_anchor(str(tmp_path), lora)
    for a, b in zip(jax.tree.leaves(second), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_strength_schedules():
    cfg = ml_collections.ConfigDict(dict(ewc.default_config(), strength=10.0, warmup_steps=4, end_ratio=0.1))
    values = lambda kind: [float(ewc.strength_schedule(  # noqa: E731
        ml_collections.ConfigDict(dict(cfg, schedule=kind)), 20)(s)) for s in (0, 2, 4, 20)]
    assert values("constant") == [10.0] * 4
    assert values("warmup") == pytest.approx([0.0, 5.0, 10.0, 10.0])
    assert values("decay") == pytest.approx([10.0, 9.1, 8.2, 1.0])


def _task_batch(rng: np.random.Generator, offset: int, stride: int) -> dict[str, np.ndarray]:
    """Rows of a counting task over its own token range: token t is followed by offset + (t - offset + stride) % 240."""
    starts = rng.integers(0, 240, (ROWS, 1))
    tokens = offset + (starts + stride * np.arange(SEQ + 1)) % 240
    ones = np.ones((ROWS, SEQ), np.int32)
    batch = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:], loss_mask=ones, segment_ids=ones,
                 positions=np.broadcast_to(np.arange(SEQ), (ROWS, SEQ)))
    return {k: v.astype(np.int32).reshape(1, ROWS, SEQ) for k, v in batch.items()}


def test_ewc_keeps_the_first_tasks_loss_lower_while_training_the_second(tiny):
    config, mesh, graphdef, lora, frozen = tiny
    _, lora, _, _ = build_model(config, from_config_dict(config.model), mesh)  # a fresh start (B = 0)
    task_a = lambda rng: _task_batch(rng, offset=3, stride=1)  # noqa: E731
    task_b = lambda rng: _task_batch(rng, offset=260, stride=7)  # noqa: E731
    tx, schedule = make_optimizer(config.optim, lora, 2, config.train.steps)
    eval_step = jax.jit(make_eval_step(graphdef, config.train.loss_chunk))
    held_out_a = [task_a(np.random.default_rng(1000 + i)) for i in range(2)]

    def loss_a(lora):
        sums = [eval_step(lora, frozen, sharding.place_batch(b, mesh)) for b in held_out_a]
        return sum(float(s) for s, _ in sums) / sum(float(n) for _, n in sums)

    copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)  # noqa: E731: the step donates its state

    def train(state, task, steps, strength=None):
        step, shardings = jit_train_step(make_train_step(graphdef, tx, schedule, config.train.loss_chunk, False,
                                                         strength), state, frozen, mesh)
        state, rng = jax.device_put(state, shardings), np.random.default_rng(0)
        for _ in range(steps):
            state, _ = step(state, frozen, sharding.place_batch(task(rng), mesh))
        return state

    after_a = train(init_state(lora, tx, 0), task_a, 60)
    learned_a = loss_a(after_a.lora)
    assert learned_a < 0.6 * np.log(512)  # task A was learned (measured: 3.19 nats, from 6.24)
    f = fisher.estimate(graphdef, after_a.lora, frozen, [task_a(np.random.default_rng(7)) for _ in range(2)],
                        config.train.loss_chunk)
    anchor = ewc.accumulate(None, f, copy(after_a.lora), gamma=1.0)

    plain = train(init_state(copy(after_a.lora), tx, 0), task_b, 60)
    protected = train(init_state(copy(after_a.lora), tx, 0, anchor), task_b, 60,
                      ewc.strength_schedule(ml_collections.ConfigDict(dict(ewc.default_config(), strength=1e3)), 60))
    forgot_plain, forgot_protected = loss_a(plain.lora) - learned_a, loss_a(protected.lora) - learned_a
    assert forgot_plain > 1.0  # without EWC, task B overwrote task A (measured: +3.3 nats) ...
    assert forgot_protected < 0.5 * forgot_plain  # ... with it, at most half as much (measured: +0.7)
