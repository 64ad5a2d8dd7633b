"""ModelConfig presets and Hugging Face config.json conversion, including the errors users will see."""

import json

import jax
import numpy as np
import pytest
import transformers
from flax import nnx

from devstral_jax.config import (
    ConfigError,
    from_config_dict,
    from_hf_config,
    load_hf_config,
    preset,
    to_config_dict,
    to_hf_config,
)
from devstral_jax.model import Transformer


def _abstract_param_count(config) -> int:
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_devstral_small_2507_has_exactly_its_published_parameter_count():
    config = preset("devstral_small_2507")
    assert _abstract_param_count(config) == 23_572_403_200
    assert config.num_params == 23_572_403_200


def test_presets_describe_the_published_architectures():
    devstral = preset("devstral_small_2505")
    assert (devstral.num_layers, devstral.hidden_size, devstral.intermediate_size) == (40, 5120, 32768)
    assert (devstral.num_heads, devstral.num_kv_heads, devstral.head_dim, devstral.vocab_size) == (32, 8, 128, 131072)
    assert (devstral.rope_theta, devstral.rms_norm_eps, devstral.sliding_window) == (1e9, 1e-5, None)
    assert devstral.max_position_embeddings == 131072
    mistral = preset("mistral_7b")
    assert (mistral.sliding_window, mistral.rope_theta, mistral.vocab_size) == (4096, 1e4, 32000)
    with pytest.raises(ConfigError, match="Unknown model preset 'devstral_large'"):
        preset("devstral_large")
    with pytest.raises(ConfigError, match="num_layerz"):
        preset("tiny", num_layerz=3)


@pytest.mark.parametrize("name", ["devstral_small_2507", "mistral_7b", "tiny"])
def test_hf_config_round_trips_through_transformers(tmp_path, name):
    config = preset(name)
    transformers.MistralConfig(**to_hf_config(config)).save_pretrained(tmp_path)
    loaded = load_hf_config(tmp_path, dtype=config.dtype)
    assert loaded == config
    assert transformers.AutoConfig.from_pretrained(tmp_path).rope_parameters["rope_theta"] == config.rope_theta


def test_devstral_config_json_as_published_loads():
    # The config.json of mistralai/Devstral-Small-2507 (transformers 4.x era: top-level rope_theta).
    published = {
        "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120, "initializer_range": 0.02,
        "intermediate_size": 32768, "max_position_embeddings": 131072, "model_type": "mistral",
        "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_theta": 1000000000.0, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.53.1", "use_cache": True, "vocab_size": 131072,
    }
    assert from_hf_config(published, dtype="bfloat16") == preset("devstral_small_2507")


def _valid_hf() -> dict:
    return to_hf_config(preset("tiny"))


@pytest.mark.parametrize("field", ["hidden_size", "num_attention_heads", "vocab_size", "intermediate_size",
                                   "num_hidden_layers"])
def test_missing_required_field_is_named(field):
    hf = _valid_hf()
    del hf[field]
    with pytest.raises(ConfigError, match=field):
        from_hf_config(hf)


def test_heads_not_dividing_hidden_size_is_named():
    hf = _valid_hf()
    del hf["head_dim"]
    hf["num_attention_heads"] = 5  # 64 % 5 != 0
    hf["num_key_value_heads"] = 5
    with pytest.raises(ConfigError, match="'num_attention_heads'.*does not divide 'hidden_size'"):
        from_hf_config(hf)


@pytest.mark.parametrize("change, field", [
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"hidden_size": -64}, "hidden_size"),
    ({"num_hidden_layers": 2.5}, "num_hidden_layers"),
    ({"model_type": "llama"}, "model_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"rope_theta": 1e4}, "rope_theta"),  # contradicts rope_parameters.rope_theta = 1e9
    ({"sliding_window": 0}, "sliding_window"),
    ({"moe_num_experts": 8}, "moe_num_experts"),
])
def test_contradictory_or_unknown_field_is_named(change, field):
    with pytest.raises(ConfigError, match=field):
        from_hf_config({**_valid_hf(), **change})


def test_unreadable_config_json_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="No config.json"):
        load_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_hf_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        load_hf_config(tmp_path)


def test_execution_settings_are_validated():
    with pytest.raises(ConfigError, match="remat_policy"):
        preset("tiny", remat_policy="sometimes")
    with pytest.raises(ConfigError, match="param_dtype"):
        preset("tiny", param_dtype="int4")


def test_ml_collections_config_dict_round_trips_every_field():
    config = preset("mistral_7b", remat_policy="dots_saveable")
    assert from_config_dict(to_config_dict(config)) == config
    devstral = to_config_dict(preset("devstral_small_2507"))
    devstral.sliding_window = 2048  # a None field still takes an int override
    assert from_config_dict(devstral).sliding_window == 2048
    with pytest.raises(ConfigError, match="unknown: \\['num_layerz'\\]"):
        from_config_dict({**to_config_dict(config), "num_layerz": 3})
