"""The Llama family against transformers' LlamaForCausalLM (torch CPU, float32) on the same weights: tied embeddings,
GQA, Llama 3's RoPE scaling, padded batches, and the HF names and config.json both ways."""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from devstral_jax.config import ConfigError, RopeScaling, from_hf_config, load_hf_config, preset, to_hf_config
from devstral_jax.hf import param_map
from devstral_jax.model import Transformer
from devstral_jax.model.rope import inverse_frequencies
from tests.model_helpers import TINY_LLAMA, hf_logits, hf_model, max_relative_error, ours_from_hf
from tests.model_helpers import padded_batch

RTOL = 1e-4
# Llama 3's scaling squeezed into a short context, so it changes most frequencies of a 16-dim head within 40 tokens.
SCALED = TINY_LLAMA.replace(rope_theta=1e4, rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0,
                                                                      high_freq_factor=4.0,
                                                                      original_max_position_embeddings=32))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_tied_embeddings_logits_match_transformers(scan_layers):
    config = TINY_LLAMA.replace(scan_layers=scan_layers)
    hf = hf_model(config)
    assert hf.lm_head.weight is hf.model.embed_tokens.weight  # transformers ties them too
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 40))
    ours = ours_from_hf(config, hf)
    assert ours.lm_head is None and "lm_head" not in nnx.state(ours)
    logits, _ = ours(tokens)
    assert logits.shape == (2, 40, config.vocab_size)
    assert max_relative_error(logits, hf_logits(hf, tokens)) < RTOL


def test_llama3_inverse_frequencies_equal_transformers():
    config = preset("llama_3_2_1b")
    hf_config = transformers.LlamaConfig(**to_hf_config(config))
    reference, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    assert attention_factor == 1.0
    ours = np.asarray(inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling))
    np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-6)
    plain = np.asarray(inverse_frequencies(config.head_dim, config.rope_theta))
    assert (ours < plain).sum() >= 8 and (ours == plain).sum() >= 8  # low frequencies scaled, high ones kept


def test_llama3_rope_scaling_logits_match_transformers():
    hf = hf_model(SCALED, seed=1)
    tokens = np.random.default_rng(1).integers(0, SCALED.vocab_size, (1, 40))
    ours = np.asarray(ours_from_hf(SCALED, hf)(tokens)[0])
    assert max_relative_error(ours, hf_logits(hf, tokens)) < RTOL
    # The scaling really acts: the same weights without it give other logits.
    unscaled = np.asarray(ours_from_hf(SCALED.replace(rope_scaling=None), hf)(tokens)[0])
    assert max_relative_error(unscaled, ours) > 1e-2


def test_padded_batch_matches_transformers():
    hf = hf_model(SCALED, seed=2)
    tokens, mask, positions = padded_batch(SCALED.vocab_size, seed=2)
    reference = hf_logits(hf, tokens, attention_mask=mask, position_ids=positions)
    ours = np.asarray(ours_from_hf(SCALED, hf)(tokens, positions, mask)[0])
    real = mask.astype(bool)
    assert max_relative_error(ours[real], reference[real]) < RTOL


def test_state_dict_has_no_lm_head_and_round_trips_hf_names():
    hf = hf_model(TINY_LLAMA, seed=3)
    exported = dict(param_map.state_dict(ours_from_hf(TINY_LLAMA, hf)))
    expected = {name: t.numpy() for name, t in hf.state_dict().items()}
    assert "lm_head.weight" in expected and "lm_head.weight" not in exported  # transformers lists the tied alias
    assert exported.keys() == expected.keys() - {"lm_head.weight"}
    for name, value in exported.items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


@pytest.mark.parametrize("name", ["smollm2_135m", "llama_3_2_1b"])
def test_presets_map_every_transformers_tensor_and_count_the_published_parameters(name):
    config = preset(name)
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**to_hf_config(config)))
    expected = {name: tuple(t.shape) for name, t in hf.state_dict().items() if name != "lm_head.weight"}
    assert param_map.hf_shapes(config) == expected
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert count == config.num_params == {"smollm2_135m": 134_515_008, "llama_3_2_1b": 1_235_814_400}[name]


@pytest.mark.parametrize("name", ["smollm2_135m", "llama_3_2_1b"])
def test_llama_config_json_round_trips_through_transformers(tmp_path, name):
    config = preset(name)
    transformers.LlamaConfig(**to_hf_config(config)).save_pretrained(tmp_path)
    assert load_hf_config(tmp_path, dtype=config.dtype) == config
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is transformers.LlamaConfig and loaded.tie_word_embeddings
    assert loaded.rope_parameters["rope_type"] == ("llama3" if config.rope_scaling else "default")


def test_llama_3_2_config_json_as_published_loads():
    # The config.json of meta-llama/Llama-3.2-1B-Instruct (transformers 4.45 era: `rope_scaling`, top-level theta).
    published = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072,
        "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
        "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256,
    }
    assert from_hf_config(published, dtype="bfloat16") == preset("llama_3_2_1b")


@pytest.mark.parametrize("change, field", [
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"pretraining_tp": 2}, "pretraining_tp"),
    ({"sliding_window": 4096}, "sliding_window"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e5, "factor": 4.0}}, "rope_scaling"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ({"architectures": ["MistralForCausalLM"]}, "model_type"),
    ({"model_type": "qwen2", "architectures": None}, "model_type"),
])
def test_unsupported_llama_config_is_named(change, field):
    with pytest.raises(ConfigError, match=field):
        from_hf_config({**to_hf_config(preset("smollm2_135m")), **change})
