"""The train step: sharding, multi-process, accumulation, chunked loss, packing isolation, NaN guard."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from devstral_jax import sharding
from devstral_jax.config import preset, to_config_dict
from devstral_jax.model import Transformer
from devstral_jax.train.loss import chunked_loss_sum, token_losses
from devstral_jax.train.step import TrainState
from tests.train_helpers import lora_arrays, packed_batch, place, step_setup, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses(config, mesh, batches):
    step, state, frozen, _ = step_setup(config, mesh)
    losses = []
    for batch in batches:
        state, metrics = step(state, frozen, place(batch, mesh))
        losses.append(float(metrics["loss"]))
    return losses, state, frozen


def test_8_device_mesh_trains_like_one_device_and_really_shards():
    config = tiny_config()
    config.model.update(hidden_size=128, intermediate_size=256)  # NF4 blocks of 64 rows, whole on each device
    batches = [packed_batch(seed=i, rows=8, seq=32) for i in range(3)]
    single, _, _ = _losses(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]), batches)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded, state, frozen = _losses(config, mesh, batches)
    np.testing.assert_allclose(sharded, single, rtol=1e-5)
    assert single[2] < single[0]  # it learns

    # Parameters, LoRA params and Adam's moments are split over the mesh as the logical rules say.
    assert frozen["lm_head"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert frozen["embedder"]["embedding"].sharding.spec == P("tensor", "fsdp")
    codes = frozen["layers"]["mlp"]["up_proj"]["kernel"]["codes"]
    assert codes.sharding.spec == P(None, "fsdp", "tensor")
    assert {s.data.shape for s in codes.addressable_shards} == {(2, 128 // 2 // 2, 256 // 2)}
    lora_a = state.lora["layers"]["attn"]["q_proj"]["lora"]["a"]
    assert lora_a.sharding.spec == P(None, "fsdp", None)
    adam_mu = jax.tree.leaves(state.opt_state[1][0].mu)  # chain(clip, adamw): adamw's ScaleByAdamState
    assert any(x.sharding.spec == P(None, "fsdp", None) for x in adam_mu)
    assert any(x.sharding.spec == P(None, None, "tensor") for x in adam_mu)  # a B [layers, r, heads]


def test_mesh_that_does_not_divide_the_devices_is_a_clear_error():
    with pytest.raises(sharding.ConfigError, match="does not divide the 8 devices"):
        sharding.make_mesh({"data": 3, "fsdp": 1, "tensor": 1})
    with pytest.raises(sharding.ConfigError, match="at most one is -1"):
        sharding.make_mesh({"data": -1, "fsdp": -1})
    assert sharding.mesh_shape({"data": -1, "tensor": 2}, 8) == {"data": 4, "fsdp": 1, "tensor": 2}


def test_two_processes_train_like_one_process_on_the_same_global_batch():
    port = str(20000 + os.getpid() % 10000)
    worker = os.path.join(ROOT, "tests", "distributed_train_worker.py")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, worker, str(i), "2", port], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    alone = subprocess.run([sys.executable, worker, "-1", "2", port], capture_output=True, text=True, env=env,
                           timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    reference = json.loads(alone.stdout.strip().splitlines()[-1])
    for out, _ in outputs:
        np.testing.assert_allclose(json.loads(out.strip().splitlines()[-1]), reference, rtol=1e-5)


def test_gradient_accumulation_4x2_equals_one_batch_of_8():
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    config = tiny_config()
    whole = packed_batch(seed=5, rows=8, seq=32, microbatches=1)
    accumulated = {k: v.reshape(4, 2, 32) for k, v in whole.items()}
    loss_whole, state_whole, _ = _losses(config, mesh, [whole])
    loss_accum, state_accum, _ = _losses(config, mesh, [accumulated])
    np.testing.assert_allclose(loss_accum, loss_whole, rtol=1e-5)
    for a, b in zip(lora_arrays(state_accum), lora_arrays(state_whole)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_chunked_loss_equals_full_logits_loss_and_never_holds_them():
    model = Transformer(preset("tiny", vocab_size=1000, dtype="float32"), rngs=nnx.Rngs(0))
    batch = packed_batch(seed=1, rows=2, seq=32)
    inputs, targets, mask = (jnp.asarray(batch[k][0]) for k in ("inputs", "targets", "loss_mask"))
    targets = targets % 1000
    hidden, _ = model(inputs % 1000, return_hidden=True)
    full = jnp.sum(token_losses(model.logits(hidden), targets) * mask)
    chunked, count = chunked_loss_sum(hidden, targets, mask, model.logits, chunk_size=8)
    np.testing.assert_allclose(chunked, full, rtol=1e-6)
    assert count == mask.sum()
    with pytest.raises(ValueError, match="not a multiple of the loss chunk size 12"):
        chunked_loss_sum(hidden, targets, mask, model.logits, chunk_size=12)



def _train_step_temp_bytes(loss_chunk: int) -> int:
    """Compiled temporary memory of the real train step for B=1, T=4096, V=131072 at tiny width (one head,
    so attention's [T, T] scores stay small next to the [T, V] logits this is about)."""
    config = tiny_config(loss_chunk=loss_chunk)
    config.model = to_config_dict(preset("tiny", dtype="float32", num_layers=1, num_heads=1, num_kv_heads=1,
                                         head_dim=64, remat_policy="full", attn_storage="nf4", mlp_storage="nf4",
                                         lora_rank=4))
    config.data.seq_len = 4096
    step, state, frozen, _ = step_setup(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))
    batch = {k: jax.ShapeDtypeStruct((1, 1, 4096), jnp.int32) for k in
             ("inputs", "targets", "loss_mask", "segment_ids", "positions")}
    return step.lower(state, frozen, batch).compile().memory_analysis().temp_size_in_bytes


def test_train_step_memory_stays_far_below_one_float32_logits_array():
    one_logits_array = 4096 * 131072 * 4  # 2 GiB
    assert _train_step_temp_bytes(loss_chunk=256) < one_logits_array / 4
    assert _train_step_temp_bytes(loss_chunk=4096) > one_logits_array  # unchunked, the logits dominate


def test_packing_never_lets_one_documents_loss_depend_on_another():
    model = Transformer(preset("tiny", vocab_size=512, dtype="float32"), rngs=nnx.Rngs(2))
    batch = {k: jnp.asarray(v[0]) for k, v in packed_batch(seed=3, rows=1, seq=32).items()}
    first_doc = batch["segment_ids"] == 1

    def per_token_losses(inputs):
        hidden, _ = model(inputs, batch["positions"], batch["segment_ids"], return_hidden=True)
        return token_losses(model.logits(hidden), batch["targets"])

    changed = jnp.where(batch["segment_ids"] == 2, (batch["inputs"] * 7 + 1) % 512, batch["inputs"])
    np.testing.assert_array_equal(per_token_losses(batch["inputs"])[first_doc], per_token_losses(changed)[first_doc])
    assert not np.allclose(per_token_losses(batch["inputs"])[~first_doc], per_token_losses(changed)[~first_doc])


def test_non_finite_step_is_skipped_and_counted():
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    step, state, frozen, _ = step_setup(tiny_config(), mesh)
    poisoned = jax.tree.map(lambda x: x, frozen)
    poisoned["final_norm"]["scale"].set_value(jnp.full_like(poisoned["final_norm"]["scale"][...], jnp.nan))
    before = lora_arrays(state)
    batch = place(packed_batch(seed=0, rows=8, seq=32), mesh)
    for expected in (1, 2):
        state, metrics = step(state, poisoned, batch)
        assert not bool(metrics["finite"])
        assert int(state.bad_steps_in_a_row) == expected and int(state.skipped_steps) == expected
    for a, b in zip(lora_arrays(state), before):
        np.testing.assert_array_equal(a, b)  # the update was not applied
    state, metrics = step(state, frozen, batch)
    assert bool(metrics["finite"]) and int(state.bad_steps_in_a_row) == 0 and int(state.skipped_steps) == 2
    assert isinstance(state, TrainState)
