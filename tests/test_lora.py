"""LoRA / QLoRA: zero-init equivalence, frozen base under an optimizer, NF4 gradients, merge/unmerge, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from devstral_jax import lora
from devstral_jax.config import ConfigError
from devstral_jax.hf import param_map
from devstral_jax.lora import LoRAParam
from devstral_jax.model import Transformer
from devstral_jax.model.linear import QuantizedKernel
from devstral_jax.quant import nf4
from tests.model_helpers import TINY, max_relative_error

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 16)))
NF4_READY = TINY.replace(head_dim=32)  # every kernel's input dimension a multiple of NF4's 64-row blocks
QLORA = NF4_READY.replace(attn_storage="nf4", mlp_storage="nf4", lora_rank=4, lora_alpha=8.0)


def _with_base_of(source: Transformer, config) -> Transformer:
    """A model for `config` whose base weights are `source`'s (dequantized if quantized there)."""
    target = Transformer(config, rngs=nnx.Rngs(7))
    param_map.load_state_dict(target, dict(param_map.state_dict(source)).__getitem__)
    return target


def _loss(model: Transformer, tokens=TOKENS) -> jax.Array:
    logits, _ = model(tokens[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1))


def _randomize_b(model: Transformer, seed: int = 0) -> None:
    for i, (_, var) in enumerate(nnx.iter_graph(model)):
        if isinstance(var, LoRAParam) and var.get_metadata()["logical_axes"][-2] == "lora":
            var.set_value(0.05 * jax.random.normal(jax.random.key(seed + i), var.shape))


def test_zero_initialised_adapters_leave_the_base_model_unchanged():
    base = Transformer(TINY, rngs=nnx.Rngs(0))
    adapted = _with_base_of(base, TINY.replace(lora_rank=8))
    assert len(jax.tree.leaves(nnx.state(adapted, LoRAParam))) == 2 * 7 and TINY.num_layers > 1
    np.testing.assert_array_equal(adapted(TOKENS)[0], base(TOKENS)[0])


@pytest.mark.parametrize("storage", ["dense", "nf4"])
def test_one_optimizer_step_changes_only_lora_params(storage):
    config = NF4_READY.replace(attn_storage=storage, mlp_storage=storage, lora_rank=4)
    model = Transformer(config, rngs=nnx.Rngs(1))
    frozen_before = jax.tree.map(np.array, nnx.state(model, nnx.Not(LoRAParam)))
    lora_before = jax.tree.map(np.array, nnx.state(model, LoRAParam))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=LoRAParam)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(_loss, argnums=nnx.DiffState(0, LoRAParam))(model)
        optimizer.update(model, grads)

    step(model, optimizer)
    for before, after in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(nnx.state(model, nnx.Not(LoRAParam)))):
        np.testing.assert_array_equal(before, after)  # bit-identical base (and norms, embeddings, lm_head)
    changed = [not np.array_equal(b, a) for b, a in zip(jax.tree.leaves(lora_before),
                                                         jax.tree.leaves(nnx.state(model, LoRAParam)))]
    assert all(changed)
    # The optimizer state holds LoRA-shaped moments and scalars only: nothing the size of the base.
    lora_shapes = {x.shape for x in jax.tree.leaves(nnx.state(model, LoRAParam))}
    opt_shapes = [x.shape for x in jax.tree.leaves(nnx.state(optimizer, nnx.optimizer.OptState))]
    assert opt_shapes and all(s in lora_shapes or s == () for s in opt_shapes), opt_shapes
    n_lora = sum(x.size for x in jax.tree.leaves(nnx.state(model, LoRAParam)))
    n_opt = sum(int(np.prod(s)) for s in opt_shapes)
    assert n_opt <= 2 * n_lora + 16  # Adam's two moments + counters


def test_lora_gradients_on_nf4_base_equal_those_on_its_dequantized_dense_copy():
    qlora = Transformer(QLORA, rngs=nnx.Rngs(2))
    _randomize_b(qlora)  # so gradients reach A as well as B
    dense = _with_base_of(qlora, QLORA.replace(attn_storage="dense", mlp_storage="dense"))
    nnx.update(dense, nnx.state(qlora, LoRAParam))
    grad_fn = nnx.grad(_loss, argnums=nnx.DiffState(0, LoRAParam))
    ours, reference = grad_fn(qlora), grad_fn(dense)
    for g_q, g_d in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        assert g_q.shape == g_d.shape
        assert max_relative_error(g_q, g_d) < 1e-4


def test_merge_then_forward_equals_the_adapted_forward_and_unmerge_restores_the_base():
    model = Transformer(TINY.replace(lora_rank=4), rngs=nnx.Rngs(3))
    _randomize_b(model)
    base_before = jax.tree.map(np.array, nnx.state(model, nnx.Not(LoRAParam)))
    adapted = np.asarray(model(TOKENS)[0])
    lora.merge(model)
    assert max_relative_error(model(TOKENS)[0], adapted) <= 1e-5
    with pytest.raises(ValueError, match="already merged"):
        lora.merge(model)
    lora.unmerge(model)
    for before, after in zip(jax.tree.leaves(base_before), jax.tree.leaves(nnx.state(model, nnx.Not(LoRAParam)))):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert max_relative_error(model(TOKENS)[0], adapted) <= 1e-5


def test_merging_into_a_quantized_base_dense_or_requantized():
    model = Transformer(QLORA, rngs=nnx.Rngs(4))
    _randomize_b(model)
    adapted = np.asarray(model(TOKENS)[0])
    requantized = Transformer(QLORA, rngs=nnx.Rngs(4))
    _randomize_b(requantized)

    lora.merge(model)  # NF4 base -> dense float32 kernels holding dequantized W + scale A B
    assert isinstance(model.layers.attn.q_proj.kernel, nnx.Param)
    assert max_relative_error(model(TOKENS)[0], adapted) <= 1e-5

    lora.merge(requantized, requantize=True)  # back to NF4: smaller, lossy, not unmergeable
    kernel = requantized.layers.attn.q_proj.kernel
    assert isinstance(kernel, QuantizedKernel) and kernel.storage == "nf4"
    for name in ("q_proj", "o_proj"):  # exactly NF4 of the dense merge
        expected = nf4.quantize(getattr(model.layers.attn, name).kernel[...])
        got = getattr(requantized.layers.attn, name).kernel.quantized()
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="re-quantized"):
        lora.unmerge(requantized)


def test_int8_base_computes_with_its_dequantized_weights():
    config = TINY.replace(attn_storage="int8", mlp_storage="int8", lora_rank=2)
    model = Transformer(config, rngs=nnx.Rngs(5))
    _randomize_b(model)
    dense = _with_base_of(model, config.replace(attn_storage="dense", mlp_storage="dense"))
    nnx.update(dense, nnx.state(model, LoRAParam))
    assert max_relative_error(model(TOKENS)[0], dense(TOKENS)[0]) < 1e-5


def test_lora_dropout_is_seeded_and_only_on_when_asked():
    model = Transformer(TINY.replace(lora_rank=4, lora_dropout=0.5), rngs=nnx.Rngs(6))
    _randomize_b(model)
    plain = np.asarray(model(TOKENS)[0])
    key = jax.random.key(0)
    dropped = np.asarray(model(TOKENS, dropout_rng=key)[0])
    assert max_relative_error(dropped, plain) > 1e-3
    np.testing.assert_array_equal(model(TOKENS, dropout_rng=key)[0], dropped)
    assert max_relative_error(model(TOKENS, dropout_rng=jax.random.key(1))[0], dropped) > 1e-3


def test_unknown_target_module_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"Unknown LoRA target module\(s\) \['qkv_proj'\]"):
        TINY.replace(lora_rank=4, lora_targets=("q_proj", "qkv_proj"))
    only_q = Transformer(TINY.replace(lora_rank=4, lora_targets=("q_proj",)), rngs=nnx.Rngs(0))
    assert only_q.layers.attn.q_proj.lora is not None and only_q.layers.mlp.up_proj.lora is None


def test_bf16_product_has_float32_accuracy_forward_and_backward():
    """A bfloat16 input's adapter runs on bfloat16 terms of the float32 factors (no float32 copy of the input):
    its output, rounded once to bfloat16, and its gradients match float64 arithmetic on the same values."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 16, 128)), jnp.bfloat16)
    a, b = jnp.asarray(rng.normal(size=(128, 8)) * 0.1, jnp.float32), jnp.asarray(rng.normal(size=(8, 96)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(2, 16, 96)), jnp.bfloat16)
    out, vjp = jax.vjp(lambda x, a, b: lora.bf16_product(x, a, b, 2.0), x, a, b)
    dx, da, db = vjp(dy)
    assert out.dtype == dx.dtype == jnp.bfloat16 and da.dtype == db.dtype == jnp.float32
    x64, a64, b64, dy64 = (np.asarray(t, np.float64).reshape(-1, t.shape[-1]) for t in (x, a, b, dy))
    want_dh = dy64 @ b64.T * 2.0
    for ours, want in [(out, x64 @ a64 @ b64 * 2.0), (dx, want_dh @ a64.T)]:  # bfloat16: rounded once
        np.testing.assert_allclose(np.asarray(ours, np.float64).reshape(want.shape), want, rtol=2**-8, atol=1e-6)
    np.testing.assert_allclose(da, x64.T @ want_dh, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, (x64 @ a64 * 2.0).T @ dy64, rtol=1e-5, atol=1e-5)
