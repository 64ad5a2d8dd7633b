"""GGUF export (F16, Q8_0) read back with gguf's own reader, and, where llama-cpp-python is installed, run by
llama.cpp: its tokens equal Tekken's and its logits transformers' on the same weights."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, quants

from devstral_jax.config import preset
from devstral_jax.hf import consolidated, param_map
from devstral_jax.hf.gguf_export import save_gguf
from devstral_jax.tokenizer import PACKAGED_TEKKEN, load_tekken
from tests.model_helpers import hf_logits, hf_model, max_relative_error

CONFIG = preset("tiny")  # Tekken's full 131,072-token vocabulary, as llama.cpp requires the tokenizer to match
PROMPT = "defmodule Greeter do\n  def hello(name), do: \"Hello, #{name}!\"\nend\n"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random transformers model's tensors, its F16 and Q8_0 GGUF files, and their readers (slow to parse:
    ~14 s each for Tekken's 131k tokens and 270k merges, so once per file)."""
    root = tmp_path_factory.mktemp("gguf")
    tensors = {name: t.numpy() for name, t in hf_model(CONFIG, seed=5).state_dict().items()}
    paths, readers = {}, {}
    for outtype in ("f16", "q8_0"):
        paths[outtype] = root / f"tiny-{outtype}.gguf"
        stream = ((n.hf_name, tensors[n.hf_name]) for n in param_map.param_names(CONFIG))
        save_gguf(paths[outtype], CONFIG, stream, tokenizer=str(PACKAGED_TEKKEN), outtype=outtype, progress=False)
        readers[outtype] = GGUFReader(paths[outtype])
    return tensors, paths, readers


def _field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def _weights(reader: GGUFReader) -> dict[str, np.ndarray]:
    """The GGUF's tensors dequantized to float32, under HF names, q/k rows back in HF's rotate-half order."""
    by_name = {t.name: t for t in reader.tensors}
    gguf_names = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
    blocks = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    weights = {}
    for name, tensor in by_name.items():
        stem = name.removesuffix(".weight")
        if stem.startswith("blk."):
            _, layer, kind = stem.split(".")
            hf_name = f"model.layers.{layer}.{blocks[kind]}.weight"
        else:
            hf_name = f"{gguf_names[stem]}.weight"
        values = np.asarray(quants.dequantize(tensor.data, tensor.tensor_type), np.float32)
        if blocks.get(stem.split(".")[-1]) in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = CONFIG.num_heads if stem.endswith("attn_q") else CONFIG.num_kv_heads
            values = consolidated.to_rotate_half(values, heads)
        weights[hf_name] = values
    return weights


def test_gguf_metadata_tokenizer_and_tensors_read_back(exported):
    tensors, paths, readers = exported
    reader = readers["q8_0"]
    expected = {
        "general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 131072,
        "llama.embedding_length": 64, "llama.feed_forward_length": 192, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.attention.key_length": 16, "llama.attention.value_length": 16,
        "llama.rope.dimension_count": 16, "llama.rope.freq_base": 1e9, "llama.vocab_size": 131072,
        "general.file_type": 7, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "tekken",
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.add_bos_token": True,
    }
    assert {key: _field(reader, key) for key in expected} == expected
    assert abs(_field(reader, "llama.attention.layer_norm_rms_epsilon") - 1e-5) < 1e-10
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 131072 and tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert len(_field(reader, "tokenizer.ggml.merges")) > 100_000

    types = {t.name: t.tensor_type for t in reader.tensors}
    assert len(types) == len(tensors) == 2 + 9 * CONFIG.num_layers + 1
    assert types["blk.1.ffn_norm.weight"] == GGMLQuantizationType.F32
    assert {types[n] for n in types if not n.endswith("norm.weight")} == {GGMLQuantizationType.Q8_0}
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}  # ggml order: [in, out]
    assert shapes["blk.0.attn_q.weight"] == (64, 64) and shapes["blk.0.attn_k.weight"] == (64, 32)
    assert shapes["token_embd.weight"] == (64, 131072) and shapes["blk.1.ffn_down.weight"] == (192, 64)

    # Q8_0: each weight within half a step (plus the f16 rounding of its block's scale) of the original.
    for name, restored in _weights(reader).items():
        original = tensors[name]
        if original.ndim == 1:
            np.testing.assert_array_equal(restored, original, err_msg=name)
            continue
        step = np.abs(original.reshape(original.shape[0], -1, 32)).max(-1, keepdims=True) / 127
        error = np.abs(restored - original).reshape(step.shape[:-1] + (32,))
        assert (error <= step * 0.5 * (1 + 2**-9) + step * 127 * 2**-11).all(), name

    f16 = _weights(readers["f16"])
    for name, original in tensors.items():
        expected = original if original.ndim == 1 else original.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(f16[name], expected, err_msg=name)


def test_llama_cpp_runs_the_gguf_with_tekken_tokens_and_transformers_logits(exported):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it builds llama.cpp "
                                                        "from source, ~25 min on 2 cores)")
    tensors, paths, readers = exported
    tekken = load_tekken()
    tokens = tekken.encode(PROMPT, bos=True, eos=False)
    for outtype, tolerance in (("f16", 1e-2), ("q8_0", 0.1)):
        llm = llama_cpp.Llama(str(paths[outtype]), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
        try:
            assert llm.tokenize(PROMPT.encode(), add_bos=True) == tokens
            llm.eval(tokens)
            logits = np.array(llm.scores[: len(tokens)])
        finally:
            llm.close()
        # The reference: transformers on the weights the file holds (F16 rounding / Q8_0 quantization included),
        # so what remains is llama.cpp's arithmetic (f16/q8 activations), not a layout or metadata error.
        reference = hf_model(CONFIG, seed=5)
        reference.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in _weights(readers[outtype]).items()})
        assert max_relative_error(logits, hf_logits(reference, np.array([tokens]))[0]) < tolerance, outtype
