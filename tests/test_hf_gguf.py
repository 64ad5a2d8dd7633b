"""GGUF export read back with gguf's own reader and run by real llama.cpp (llama-cpp-python, installed by
`make test`): its tokens equal Tekken's, its chat template renders mistral-common's instruct encoding, its
logits and greedy tokens are our JAX model's (F16, Q8_0), and llama.cpp's own quantizer makes K-quants that
stay within a stated distance of our model."""

import ctypes

import llama_cpp
import numpy as np
import pytest
from flax import nnx
from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType, quants
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from devstral_jax.config import preset
from devstral_jax.hf import consolidated, param_map
from devstral_jax.hf import llama_cpp as engine
from devstral_jax.hf.chat_template import jinja_template
from devstral_jax.model import Transformer
from devstral_jax.tokenizers.tekken import PACKAGED_TEKKEN, load_tekken
from tests.model_helpers import hf_model, max_relative_error, ours_from_hf
from tests.serving_helpers import CONVERSATION, SNIPPETS, instruct_tokens, random_gguf

CONFIG = preset("tiny")  # Tekken's full 131,072-token vocabulary, as llama.cpp requires the tokenizer to match
# K-quants work on rows of 256 weights (a narrower matrix falls back to another type): the same model, wider.
WIDE = preset("tiny", hidden_size=256, intermediate_size=512, head_dim=64)
PROMPT = "defmodule Greeter do\n  def hello(name), do: \"Hello, #{name}!\"\nend\n"
NEW_TOKENS = 16
# max |llama.cpp - ours| / max |ours| over the prompt's logits, with our model on the weights the file holds: what
# remains is llama.cpp's arithmetic (F16 activations; for quantized weights, activations quantized to Q8_0 in
# each dot product, coarse on this 64-wide model).
ARITHMETIC = {"f16": 2e-3, "q8_0": 6e-2}
# The same against our model on the original float32 weights: the quantization's own error, on random weights.
QUALITY = {"f16": 4e-3, "q8_0": 1e-1}
# The K-quants, on the wider model. ARITHMETIC as above (activations quantized to Q8_K in each dot product;
# measured 3.8e-3 for F16, 0.07-0.11 for the K-quants). Against the original weights, the random model (weights
# of std 0.15, so attention is nearly one-hot) turns the quantization's noise into large changes in a few logits:
# the root-mean-square relative error is bounded instead (measured 2.8e-3, 0.17, 0.32, 0.49), and falls with
# every bit per weight.
K_ARITHMETIC = {"f16": 6e-3, "q6_k": 0.15, "q5_k_m": 0.15, "q4_k_m": 0.15}
K_QUALITY_RMS = {"f16": 5e-3, "q6_k": 0.25, "q5_k_m": 0.45, "q4_k_m": 0.65}


def _export(config, seed, directory, outtypes):
    """A random transformers model's tensors and our model on them; GGUF files of `outtypes` written from them."""
    hf = hf_model(config, seed=seed)
    tensors = {name: t.detach().numpy() for name, t in hf.state_dict().items()}
    paths = {outtype: directory / f"model-{outtype}.gguf" for outtype in outtypes}
    for outtype, path in paths.items():
        random_gguf(path, config, seed, outtype, tensors)
    return tensors, ours_from_hf(config, hf), paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """F16 and Q8_0 of the tiny model, and gguf's readers of them (slow to parse: ~14 s each for Tekken's 131k
    tokens and 270k merges, so once per file)."""
    tensors, ours, paths = _export(CONFIG, 5, tmp_path_factory.mktemp("gguf"), ("f16", "q8_0"))
    return tensors, ours, paths, {outtype: GGUFReader(path) for outtype, path in paths.items()}


@pytest.fixture(scope="module")
def k_quants(tmp_path_factory):
    """The wide model as F16 and Q4_K_M (through save_gguf), Q5_K_M and Q6_K (llama_model_quantize on the F16)."""
    directory = tmp_path_factory.mktemp("kquant")
    tensors, ours, paths = _export(WIDE, 7, directory, ("f16", "q4_k_m"))
    for kind in ("q5_k_m", "q6_k"):
        paths[kind] = directory / f"model-{kind}.gguf"
        engine.quantize(paths["f16"], paths[kind], kind)
    return ours, paths


def _field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def _weights(reader: GGUFReader, config) -> dict[str, np.ndarray]:
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
            heads = config.num_heads if stem.endswith("attn_q") else config.num_kv_heads
            values = consolidated.to_rotate_half(values, heads)
        weights[hf_name] = values
    return weights


def test_gguf_metadata_tokenizer_and_tensors_read_back(exported):
    tensors, ours, paths, readers = exported
    reader = readers["q8_0"]
    expected = {
        "general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 131072,
        "llama.embedding_length": 64, "llama.feed_forward_length": 192, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.attention.key_length": 16, "llama.attention.value_length": 16,
        "llama.rope.dimension_count": 16, "llama.rope.freq_base": 1e9, "llama.vocab_size": 131072,
        "general.file_type": 7, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "tekken",
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.add_bos_token": True,
        "tokenizer.chat_template": jinja_template(PACKAGED_TEKKEN),
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
    for name, restored in _weights(reader, CONFIG).items():
        original = tensors[name]
        if original.ndim == 1:
            np.testing.assert_array_equal(restored, original, err_msg=name)
            continue
        step = np.abs(original.reshape(original.shape[0], -1, 32)).max(-1, keepdims=True) / 127
        error = np.abs(restored - original).reshape(step.shape[:-1] + (32,))
        assert (error <= step * 0.5 * (1 + 2**-9) + step * 127 * 2**-11).all(), name

    f16 = _weights(readers["f16"], CONFIG)
    for name, original in tensors.items():
        expected = original if original.ndim == 1 else original.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(f16[name], expected, err_msg=name)


def _llama_cpp_run(path, prompt: list[int]) -> tuple[np.ndarray, list[int]]:
    """llama.cpp's logits over `prompt` and its greedy continuation (NEW_TOKENS tokens)."""
    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(prompt)
        logits = np.array(llm.scores[: len(prompt)])
        greedy = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            greedy.append(token)
            if len(greedy) == NEW_TOKENS:
                break
    finally:
        llm.close()
    return logits, greedy


def _model(config, weights: dict[str, np.ndarray]) -> Transformer:
    model = Transformer(config, rngs=nnx.Rngs(0))
    param_map.load_state_dict(model, weights.__getitem__)
    return model


def _assert_greedy_is_ours(model, prompt: list[int], greedy: list[int], tolerance: float) -> None:
    """Each of llama.cpp's greedy tokens is our argmax after the same prefix (our model teacher-forced on
    llama.cpp's sequence). Where our best two logits are closer than the numerical tolerance, llama.cpp may take
    either: its token must then score within the tolerance of our best."""
    logits = np.asarray(model(np.array([prompt + greedy]))[0][0])
    slack = 2 * tolerance * np.abs(logits[: len(prompt)]).max()
    for step, token in enumerate(greedy):
        scores = logits[len(prompt) - 1 + step]
        best, runner_up = np.sort(scores)[-2:][::-1]
        if best - runner_up > slack:
            assert token == int(np.argmax(scores)), (step, greedy)
        else:
            assert scores[token] >= best - slack, (step, greedy)


def test_llama_cpp_runs_the_gguf_with_our_logits_and_greedy_tokens(exported):
    tensors, ours, paths, readers = exported
    prompt = load_tekken().encode(PROMPT, bos=True, eos=False)
    original = np.asarray(ours(np.array([prompt]))[0][0])
    for outtype in ("f16", "q8_0"):
        logits, greedy = _llama_cpp_run(paths[outtype], prompt)
        held = _model(CONFIG, _weights(readers[outtype], CONFIG))  # our model on the weights the file holds
        assert max_relative_error(logits, np.asarray(held(np.array([prompt]))[0][0])) < ARITHMETIC[outtype], outtype
        assert max_relative_error(logits, original) < QUALITY[outtype], outtype
        _assert_greedy_is_ours(held, prompt, greedy, ARITHMETIC[outtype])


def _rms_relative_error(values: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean((values - reference) ** 2) / np.mean(reference ** 2)))


def test_llama_cpp_quantizes_k_quants_that_stay_close_to_our_model(k_quants):
    """llama.cpp runs each K-quant as our model runs the weights the file holds (llama.cpp's quantizer wrote what
    gguf's reader dequantizes), with its greedy tokens; the error from the original weights falls with each bit."""
    ours, paths = k_quants
    prompt = load_tekken().encode(PROMPT, bos=True, eos=False)
    original = np.asarray(ours(np.array([prompt]))[0][0])
    sizes = {kind: path.stat().st_size for kind, path in paths.items()}
    assert sizes["q4_k_m"] < sizes["q5_k_m"] < sizes["q6_k"] < sizes["f16"] / 2
    file_types = {"f16": LlamaFileType.MOSTLY_F16, "q6_k": LlamaFileType.MOSTLY_Q6_K,
                  "q5_k_m": LlamaFileType.MOSTLY_Q5_K_M, "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M}
    errors = []
    for kind, file_type in file_types.items():
        llm = llama_cpp.Llama(str(paths[kind]), vocab_only=True, verbose=False)
        metadata = llm.metadata
        llm.close()
        assert int(metadata["general.file_type"]) == file_type, kind
        assert metadata["tokenizer.chat_template"] == jinja_template(PACKAGED_TEKKEN), kind  # copied by the quantizer
        reader = GGUFReader(paths[kind])
        if kind != "f16":
            types = {t.tensor_type for t in reader.tensors if not t.name.endswith("norm.weight")}
            assert types <= {GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K}, kind
        logits, greedy = _llama_cpp_run(paths[kind], prompt)
        held = _model(WIDE, _weights(reader, WIDE))
        assert max_relative_error(logits, np.asarray(held(np.array([prompt]))[0][0])) < K_ARITHMETIC[kind], kind
        _assert_greedy_is_ours(held, prompt, greedy, K_ARITHMETIC[kind])
        errors.append(_rms_relative_error(logits, original))
        assert errors[-1] < K_QUALITY_RMS[kind], kind
    assert errors == sorted(errors), errors


def test_llama_cpp_tokenizes_like_tekken(exported):
    tensors, ours, paths, readers = exported
    tekken = load_tekken()
    vocabulary = llama_cpp.Llama(str(paths["q8_0"]), vocab_only=True, verbose=False)
    try:
        for text in SNIPPETS:  # control-token text (`<s>` in a string) stays text, as in Tekken
            assert vocabulary.tokenize(text.encode(), add_bos=True, special=False) == \
                tekken.encode(text, bos=True, eos=False), text
    finally:
        vocabulary.close()


def test_the_gguf_chat_template_renders_the_instruct_format_in_llama_cpp(exported):
    """llama-cpp-python formats chats with the GGUF's Jinja template; llama.cpp's built-in fallback (llama-cli,
    `llama-server --no-jinja`) recognises it as mistral-v3-tekken: both give mistral-common's tokens."""
    tensors, ours, paths, readers = exported
    vocabulary = llama_cpp.Llama(str(paths["q8_0"]), vocab_only=True, verbose=False)
    try:
        template = vocabulary.metadata["tokenizer.chat_template"]
        formatter = Jinja2ChatFormatter(template, eos_token="</s>", bos_token="<s>")
        single_turn = CONVERSATION[:2]
        for conversation in (CONVERSATION, single_turn):
            prompt = formatter(messages=conversation).prompt
            assert vocabulary.tokenize(prompt.encode(), add_bos=False, special=True) == \
                instruct_tokens(PACKAGED_TEKKEN, conversation)
        messages = (llama_cpp.llama_chat_message * 2)(*(
            llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in single_turn))
        buffer = ctypes.create_string_buffer(4096)
        length = llama_cpp.llama_chat_apply_template(template.encode(), messages, 2, True, buffer, len(buffer))
        fallback = buffer.raw[:length].decode()
        assert vocabulary.tokenize(fallback.encode(), add_bos=True, special=True) == \
            instruct_tokens(PACKAGED_TEKKEN, single_turn), fallback
    finally:
        vocabulary.close()
