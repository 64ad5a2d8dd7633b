"""Our Flax decoder against transformers' MistralForCausalLM (torch CPU, float32) on the same weights."""

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from devstral_jax.config import preset, to_hf_config
from devstral_jax.hf import param_map
from devstral_jax.model import Transformer
from tests.model_helpers import TINY, hf_logits, hf_model, max_relative_error, ours_from_hf
from tests.model_helpers import padded_batch

RTOL = 1e-4


@pytest.mark.parametrize("scan_layers", [True, False])
def test_logits_match_transformers_gqa_theta_1e9(scan_layers):
    config = TINY.replace(scan_layers=scan_layers)
    hf = hf_model(config)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (1, 40))
    ours, _ = ours_from_hf(config, hf)(tokens)
    reference = hf_logits(hf, tokens)
    assert ours.shape == reference.shape == (1, 40, config.vocab_size)
    assert max_relative_error(ours, reference) < RTOL


def test_logits_match_transformers_with_sliding_window_shorter_than_sequence():
    config = TINY.replace(sliding_window=7, rope_theta=1e4)
    hf = hf_model(config, seed=1)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, (2, 30))
    ours = np.asarray(ours_from_hf(config, hf)(tokens)[0])
    assert max_relative_error(ours, hf_logits(hf, tokens)) < RTOL
    # The window really acts: without it the late positions differ.
    unwindowed, _ = ours_from_hf(config.replace(sliding_window=None), hf)(tokens)
    assert max_relative_error(unwindowed[:, 7:], ours[:, 7:]) > 1e-2
    np.testing.assert_allclose(unwindowed[:, :7], ours[:, :7], rtol=1e-5, atol=1e-5)


def test_batch_with_left_and_right_padding_matches_transformers():
    config = TINY
    hf = hf_model(config, seed=2)
    tokens, mask, positions = padded_batch(config.vocab_size, seed=2)
    reference = hf_logits(hf, tokens, attention_mask=mask, position_ids=positions)
    ours = np.asarray(ours_from_hf(config, hf)(tokens, positions, mask)[0])
    real = mask.astype(bool)
    assert max_relative_error(ours[real], reference[real]) < RTOL
    # Each padded row equals that row run alone without padding.
    alone = np.asarray(ours_from_hf(config, hf)(tokens[1:2, 9:])[0])
    assert max_relative_error(ours[1, 9:], alone[0]) < 1e-5


def test_state_dict_round_trips_hf_names_and_layouts():
    hf = hf_model(TINY, seed=3)
    ours = ours_from_hf(TINY, hf)
    exported = dict(param_map.state_dict(ours))
    expected = {name: t.numpy() for name, t in hf.state_dict().items()}
    assert exported.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_loading_a_tensor_of_the_wrong_shape_names_it():
    hf = hf_model(TINY, seed=4)
    tensors = {name: t.numpy() for name, t in hf.state_dict().items()}
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:, :10]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight has shape \(192, 10\)"):
        param_map.load_state_dict(Transformer(TINY, rngs=nnx.Rngs(0)), tensors.__getitem__)


def test_mistral_7b_mapping_covers_every_transformers_tensor():
    config = preset("mistral_7b")
    with torch.device("meta"):
        hf = transformers.MistralForCausalLM(transformers.MistralConfig(**to_hf_config(config)))
    expected = {name: tuple(t.shape) for name, t in hf.state_dict().items()}
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    ours = {}
    for name in param_map.param_names(config):
        shape = param_map.get_variable(abstract, name).shape
        ours[name.hf_name] = name.hf_shape(shape[1:] if name.layer is not None else shape)
    assert ours == expected
