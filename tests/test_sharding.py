"""Sharding is explicit and loud: parameters that a mesh cannot split as their logical axes ask are errors that
name them (never silently replicated), and activations carry logical constraints at the block boundaries."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from devstral_jax import sharding
from devstral_jax.config import from_config_dict, preset
from devstral_jax.errors import ConfigError
from devstral_jax.hf.load import load
from devstral_jax.model import Transformer
from devstral_jax.train.trainer import build_model
from tests.hf_helpers import save_hf_checkpoint
from tests.train_helpers import packed_batch, step_setup, tiny_config

MESH_2x2x2 = {"data": 2, "fsdp": 2, "tensor": 2}


def _abstract(**overrides):
    return nnx.eval_shape(lambda: Transformer(preset("tiny", **overrides), rngs=nnx.Rngs(0)))


def test_a_dimension_its_mesh_axis_does_not_divide_is_an_error_naming_the_parameter():
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 8})
    model = _abstract(vocab_size=100)  # vocab -> tensor: 100 rows cannot be split 8 ways
    with pytest.raises(ConfigError, match=r"embedder/embedding \(100, 64\): its 'vocab' dimension \(100\) cannot be "
                                          r"split 8 ways over mesh axes \('tensor',\)"):
        sharding.check_params(model, mesh)
    with pytest.raises(ConfigError, match=r"\['embedder'\]\['embedding'\]"):
        sharding.state_shardings(nnx.state(model), mesh)
    sharding.check_params(_abstract(vocab_size=128), mesh)  # divisible: fine


def test_a_quantized_kernel_whose_shards_would_split_its_blocks_is_an_error_at_build_and_load(tmp_path):
    """NF4 keeps one scale per 64 rows: 64 input rows over fsdp=2 would leave each device half a block."""
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    config = tiny_config()  # hidden 64, NF4 attention and MLP
    with pytest.raises(ConfigError, match=r"Parameter layers/(attn|mlp)/\w+_proj/kernel: Cannot shard the nf4 kernel "
                                          r"of shape \(2, \d+, \d+\) 2 ways along its input axis"):
        build_model(config, from_config_dict(config.model), mesh)
    save_hf_checkpoint(preset("tiny", vocab_size=256, num_layers=1), tmp_path)
    with pytest.raises(ConfigError, match=r"Parameter layers/mlp/\w+_proj/kernel: Cannot shard the nf4 kernel"):
        load(tmp_path, mesh=mesh, mlp_storage="nf4", progress=False)
    wide = tiny_config()
    wide.model.update(hidden_size=128, intermediate_size=256)  # 128 rows over 2 devices: a whole block each
    build_model(wide, from_config_dict(wide.model), mesh)


def test_the_train_step_constrains_activations_at_block_boundaries_by_logical_axes():
    config = tiny_config()
    config.model.update(hidden_size=128, intermediate_size=256)
    mesh = sharding.make_mesh(MESH_2x2x2)
    step, state, frozen, _ = step_setup(config, mesh)
    batch = sharding.place_batch(packed_batch(seed=0, rows=8, seq=32), mesh)
    text = step.lower(state, frozen, batch).as_text()
    constraints = [line for line in text.splitlines() if "sdy.sharding_constraint" in line]
    # Block inputs and outputs: rows over data x fsdp, the residual stream whole on each device.
    assert any('[{"data", "fsdp"}, {}, {}]> : tensor<8x32x128xf32>' in line for line in constraints), constraints
    # Queries, keys and values: heads over tensor; the MLP's hidden units over tensor.
    assert any('[{"data", "fsdp"}, {}, {"tensor"}, {}]> : tensor<8x32x4x32xf32>' in line for line in constraints)
    assert any('[{"data", "fsdp"}, {}, {"tensor"}]> : tensor<8x32x256xf32>' in line for line in constraints)


def test_an_activation_its_mesh_axes_do_not_divide_is_an_error_naming_it():
    mesh = sharding.make_mesh(MESH_2x2x2)
    x = jnp.zeros((6, 3, 8))  # 6 rows cannot be split 4 ways over data x fsdp
    with pytest.raises(ConfigError, match=r"Activation block input \(6, 3, 8\): its 'batch' dimension \(6\) cannot "
                                          r"be split 4 ways"):
        jax.jit(sharding.traced_on(lambda x: sharding.constrain(x, ("batch", "seq", "act_embed"), "block input"),
                                   mesh)).lower(x)
    assert sharding.constrain(x, ("batch", "seq", "act_embed"), "block input") is x  # no mesh: nothing to do
