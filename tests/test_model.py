"""Behaviour of our decoder that has no transformers counterpart: packing, scan vs unrolled, remat, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from devstral_jax.hf import param_map
from devstral_jax.model import Transformer
from tests.model_helpers import TINY, max_relative_error


def _copy_weights(source: Transformer, config) -> Transformer:
    """The same weights in a model with other execution settings, through the HF name mapping."""
    target = Transformer(config, rngs=nnx.Rngs(99))
    param_map.load_state_dict(target, dict(param_map.state_dict(source)).__getitem__)
    return target


def test_packed_row_equals_each_document_alone():
    model = Transformer(TINY, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    doc_a, doc_b = rng.integers(0, TINY.vocab_size, 13), rng.integers(0, TINY.vocab_size, 9)
    pad = 3
    tokens = np.concatenate([doc_a, doc_b, np.zeros(pad, np.int64)])[None]
    segment_ids = np.array([[1] * 13 + [2] * 9 + [0] * pad])
    positions = np.array([list(range(13)) + list(range(9)) + [0] * pad])
    packed = np.asarray(model(tokens, positions, segment_ids)[0])[0]
    alone_a = np.asarray(model(doc_a[None])[0])[0]
    alone_b = np.asarray(model(doc_b[None])[0])[0]
    assert max_relative_error(packed[:13], alone_a) < 1e-5
    assert max_relative_error(packed[13:22], alone_b) < 1e-5
    # Without segment ids, doc B sees doc A (and its restarted positions alone do not isolate it).
    leaky = np.asarray(model(tokens, positions)[0])[0]
    assert max_relative_error(leaky[13:22], alone_b) > 1e-2


def test_scanned_and_unrolled_layers_give_the_same_logits():
    scanned = Transformer(TINY.replace(scan_layers=True), rngs=nnx.Rngs(0))
    unrolled = _copy_weights(scanned, TINY.replace(scan_layers=False))
    assert isinstance(unrolled.layers, nnx.List) and len(unrolled.layers) == TINY.num_layers
    tokens = np.random.default_rng(1).integers(0, TINY.vocab_size, (2, 17))
    np.testing.assert_allclose(scanned(tokens)[0], unrolled(tokens)[0], rtol=1e-5, atol=1e-5)


def _loss_and_grads(model: Transformer, tokens: jax.Array):
    def loss_fn(model):
        logits, _ = model(tokens[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1))

    return nnx.jit(nnx.value_and_grad(loss_fn))(model)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_remat_policy_gives_the_same_gradients(scan_layers):
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, TINY.vocab_size, (2, 12)))
    base = Transformer(TINY.replace(remat_policy="none", scan_layers=scan_layers), rngs=nnx.Rngs(3))
    ref_loss, ref_grads = _loss_and_grads(base, tokens)
    for policy in ("full", "dots_saveable", "offload"):
        model = _copy_weights(base, TINY.replace(remat_policy=policy, scan_layers=scan_layers))
        loss, grads = _loss_and_grads(model, tokens)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        ours = dict(param_map.state_dict(_grads_as_model(grads, model.config)))
        for name, reference in param_map.state_dict(_grads_as_model(ref_grads, base.config)):
            np.testing.assert_allclose(ours[name], reference, rtol=1e-5, atol=1e-7, err_msg=f"{policy} {name}")


def _grads_as_model(grads: nnx.State, config) -> Transformer:
    model = Transformer(config, rngs=nnx.Rngs(0))
    nnx.update(model, grads)
    return model


def test_remat_actually_changes_what_is_saved():
    # With 'full' remat the backward pass recomputes the layer: the jaxpr holds a checkpoint (remat) primitive.
    tokens = jnp.zeros((1, 8), jnp.int32)
    for policy, expected in (("none", False), ("full", True)):
        model = Transformer(TINY.replace(remat_policy=policy), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        jaxpr = jax.make_jaxpr(jax.grad(lambda s: nnx.merge(graphdef, s)(tokens)[0].sum()))(state)
        assert ("remat" in str(jaxpr) or "checkpoint" in str(jaxpr)) == expected, policy


def test_bf16_compute_with_f32_params():
    config = TINY.replace(dtype="bfloat16", param_dtype="float32")
    model = Transformer(config, rngs=nnx.Rngs(0))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    tokens = np.random.default_rng(4).integers(0, TINY.vocab_size, (1, 16))
    hidden, _ = model(tokens, return_hidden=True)
    assert hidden.dtype == jnp.bfloat16
    logits, _ = model(tokens)
    assert logits.dtype == jnp.float32
    reference, _ = _copy_weights(model, TINY)(tokens)
    assert max_relative_error(logits, reference) < 5e-2  # bf16 rounding, not a different function

    bf16_params = Transformer(TINY.replace(dtype="bfloat16", param_dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(nnx.state(bf16_params, nnx.Param)))


def test_parameters_carry_logical_axis_names():
    model = nnx.eval_shape(lambda: Transformer(TINY, rngs=nnx.Rngs(0)))
    axes = {path: v.get_metadata()["logical_axes"] for path, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}
    assert axes[("layers", "attn", "q_proj", "kernel")] == ("layers", "embed", "heads")
    assert axes[("layers", "attn", "k_proj", "kernel")] == ("layers", "embed", "kv")
    assert axes[("layers", "mlp", "down_proj", "kernel")] == ("layers", "mlp", "embed")
    assert axes[("embedder", "embedding")] == ("vocab", "embed")
    assert axes[("lm_head", "kernel")] == ("embed", "vocab")
    for path, v in nnx.iter_graph(model):
        if isinstance(v, nnx.Param):
            assert len(axes[path]) == len(v.shape), path


def test_unknown_attention_kernel_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown attention_impl 'flash'.*available.*xla"):
        Transformer(TINY.replace(attention_impl="flash"), rngs=nnx.Rngs(0))
