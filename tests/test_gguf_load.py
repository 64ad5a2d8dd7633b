"""GGUF in: small GGUFs written with gguf's own writer in every supported type, and the real SmolLM2-135M-Instruct
Q4_1 file, loaded into our model against transformers' own GGUF loading (which dequantizes) of the same file."""

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers

from devstral_jax.config import ConfigError, preset
from devstral_jax.hf import param_map
from devstral_jax.hf.load import load
from devstral_jax.hf.model_dir import ModelDirError, open_model_dir
from devstral_jax.model.linear import QuantizedKernel
from devstral_jax.quant import nf4
from tests.gguf_helpers import TINY_GGUF_LLAMA, TINY_GGUF_MISTRAL, TYPES, real_smollm2, write_gguf
from tests.model_helpers import hf_logits, hf_model, max_relative_error

F32 = dict(dtype="float32", progress=False)
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 20))


def transformers_gguf(path) -> transformers.PreTrainedModel:
    """transformers' own GGUF loading (dequantized to float32)."""
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny_models():
    return {config.family: (config, hf_model(config, seed=7)) for config in (TINY_GGUF_LLAMA, TINY_GGUF_MISTRAL)}


@pytest.mark.parametrize("family", ["llama", "mistral"])
@pytest.mark.parametrize("matrix_type", list(TYPES))
def test_tiny_gguf_logits_equal_transformers_gguf_loading(tmp_path, tiny_models, family, matrix_type):
    config, hf = tiny_models[family]
    path = tmp_path / f"tiny-{matrix_type}.gguf"
    write_gguf(hf, config, path, matrix_type)
    loaded = load(path, **F32)
    assert loaded.config == config.replace(family="llama")  # llama.cpp stores Mistral models as `llama` too
    assert (loaded.model.lm_head is None) == config.tie_word_embeddings  # tied exactly when output.weight is absent
    reference = hf_logits(transformers_gguf(path), TOKENS)
    assert max_relative_error(loaded.model(TOKENS)[0], reference) < 1e-4
    # What the file stores is what both read: exact for F32, quantized (so not the original weights) otherwise.
    quantization_error = max_relative_error(hf_logits(hf, TOKENS), reference)
    assert quantization_error < 1e-5 if matrix_type == "F32" else quantization_error > 1e-4


def test_nf4_on_load_quantizes_the_dequantized_gguf_weights(tmp_path, tiny_models):
    config, hf = tiny_models["llama"]
    path = tmp_path / "tiny-q8_0.gguf"
    write_gguf(hf, config, path, "Q8_0")
    dense = load(path, **F32).model
    quantized = load(path, attn_storage="nf4", mlp_storage="nf4", **F32)
    assert len(quantized.quant_report) == 7 * config.num_layers
    for name in param_map.param_names(config):
        if name.lora_target is None or name.layer != 1:
            continue
        got = param_map.get_variable(quantized.model, name)
        assert isinstance(got, QuantizedKernel) and got.storage == "nf4"
        got = jax.tree.map(lambda x: x[1], got.quantized())
        want = nf4.quantize(param_map.get_variable(dense, name)[...][1])
        np.testing.assert_array_equal(got.codes, want.codes, err_msg=name.hf_name)
        np.testing.assert_array_equal(got.scale_codes, want.scale_codes, err_msg=name.hf_name)


@pytest.fixture(scope="module")
def smollm2():
    path = real_smollm2()
    return path, hf_logits(transformers_gguf(path), TOKENS * 100 + 7)


def test_real_smollm2_q4_1_loads_with_transformers_logits(smollm2):
    path, reference = smollm2
    model_dir = open_model_dir(path)
    assert {model_dir.gguf.tensors[info.name].tensor_type.name for info in model_dir.stored.values()} == \
        {"Q4_1", "Q8_0", "F32"}
    assert "lm_head.weight" not in model_dir.stored  # the file has no output.weight: tied embeddings
    loaded = load(path, **F32)
    assert loaded.config == preset("smollm2_135m", dtype="float32")
    assert max_relative_error(loaded.model(TOKENS * 100 + 7)[0], reference) < 1e-4


def _rewrite(path, out, *, architecture="llama", skip=(), extra=None, retype=None):
    """`path`'s tensors and hyperparameters rewritten with one change, to show each problem is named."""
    reader = gguf.GGUFReader(path)
    writer = gguf.GGUFWriter(str(out), architecture)
    for key, field in reader.fields.items():
        if key.startswith("llama."):
            value = field.contents()
            kind = field.types[0]
            writer.add_key_value(key.replace("llama.", f"{architecture}.", 1), value, kind)
    for tensor in reader.tensors:
        if tensor.name in skip:
            continue
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if tensor.name == retype:
            writer.add_tensor(tensor.name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q5_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q5_0)
        else:
            writer.add_tensor(tensor.name, data)
    for name, data in (extra or {}).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_broken_or_unsupported_gguf_files_are_named(tmp_path, tiny_models):
    config, hf = tiny_models["llama"]
    good = tmp_path / "good.gguf"
    write_gguf(hf, config, good, "F32")
    with pytest.raises(ConfigError, match="'qwen2' model; only 'llama'"):
        open_model_dir(_rewrite(good, tmp_path / "qwen.gguf", architecture="qwen2"))
    with pytest.raises(ModelDirError, match=r"missing tensor blk\.1\.ffn_up\.weight"):
        open_model_dir(_rewrite(good, tmp_path / "missing.gguf", skip={"blk.1.ffn_up.weight"}))
    with pytest.raises(ModelDirError, match=r"blk\.2\.attn_v\.weight \(Q5_0\)"):
        open_model_dir(_rewrite(good, tmp_path / "q5.gguf", retype="blk.2.attn_v.weight"))
    with pytest.raises(ConfigError, match="RoPE scaling"):
        open_model_dir(_rewrite(good, tmp_path / "rope.gguf", extra={"rope_freqs.weight": np.ones(16, np.float32)}))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ModelDirError, match="Cannot read .*truncated.gguf as a GGUF file"):
        open_model_dir(truncated)
    with pytest.raises(ModelDirError, match="nor a GGUF file"):
        open_model_dir(tmp_path / "absent.gguf")
