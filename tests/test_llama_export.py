"""Exports of a fine-tuned Llama-family model from a GGUF base: a tiny random Llama with tied embeddings and SmolLM2's
real tokenizer (its GGUF metadata), LoRA-trained a few steps, then launch/export.py's PEFT adapter (peft on
transformers' GGUF loading), merged LlamaForCausalLM directory (transformers, and back into ours) and GGUF (read
back by us and transformers, and run by llama.cpp where installed), each with our logits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from gguf import GGUFReader
from peft import PeftModel

from devstral_jax.data.records import Message
from devstral_jax.hf import safetensors_io
from devstral_jax.hf.load import load
from devstral_jax.hf.peft import adapter_from_model, save_adapter
from devstral_jax.tokenizers import HFTokenizer
from tests.gguf_helpers import TINY_SMOLLM2 as CONFIG
from tests.gguf_helpers import real_smollm2, write_gguf
from tests.model_helpers import hf_logits, hf_model, max_relative_error
from tests.test_hf_export import _train_lora

ROOT = Path(__file__).resolve().parents[1]
TOKENS = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 24))
CHAT = [Message("user", "Reverse a list in Elixir."), Message("assistant", "Enum.reverse(list)")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(the base GGUF, our model: that base + LoRA trained a few steps, the PEFT adapter directory)."""
    root = tmp_path_factory.mktemp("llama_export")
    base = root / "tiny-smollm2.gguf"
    write_gguf(hf_model(CONFIG, seed=11), CONFIG, base, "Q8_0", name="tiny-smollm2", tokenizer_from=real_smollm2())
    model = load(base, dtype="float32", lora_rank=4, lora_alpha=8.0, progress=False).model
    _train_lora(model)
    save_adapter(adapter_from_model(model), root / "peft", base_model="tiny-smollm2")
    return base, model, root / "peft"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    base, model, peft_dir = trained
    out = tmp_path_factory.mktemp("out") / "export"
    result = subprocess.run([sys.executable, "launch/export.py", f"--base={base}", f"--adapter={peft_dir}",
                             f"--out={out}", "--config.formats=peft,merged,gguf_f16", "--config.dtype=float32",
                             "--config.name=tiny-smollm2-elixir"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "tiny-smollm2-elixir" / "v1"  # exports are versioned: <out>/<name>/<version>/


def test_peft_adapter_on_transformers_gguf_base_gives_our_logits(trained, exported):
    base, model, _ = trained
    transformers_base = transformers.AutoModelForCausalLM.from_pretrained(base.parent, gguf_file=base.name,
                                                                          dtype=torch.float32)
    ours = np.asarray(model(TOKENS)[0])
    assert max_relative_error(ours, hf_logits(transformers_base, TOKENS)) > 1e-3  # the adapter changes the model
    peft_model = PeftModel.from_pretrained(transformers_base, exported / "adapter").eval()
    assert max_relative_error(hf_logits(peft_model, TOKENS), ours) < 1e-4


def test_merged_llama_directory_loads_in_transformers_with_tied_embeddings_and_the_tokenizer(trained, exported):
    base, model, _ = trained
    merged = exported / "merged"
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    stored = {name for f in merged.glob("*.safetensors") for name in safetensors_io.read_header(f)}
    assert "lm_head.weight" not in stored and "model.embed_tokens.weight" in stored
    hf = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    assert type(hf) is transformers.LlamaForCausalLM and hf.lm_head.weight is hf.model.embed_tokens.weight
    ours = np.asarray(model(TOKENS)[0])
    assert max_relative_error(hf_logits(hf, TOKENS), ours) < 1e-4
    reloaded = load(merged, dtype="float32", progress=False)  # back into ours, with the shipped tokenizer
    assert max_relative_error(reloaded.model(TOKENS)[0], ours) < 1e-4
    assert isinstance(reloaded.tokenizer, HFTokenizer)
    # The shipped tokenizer and chat template are SmolLM2's: transformers encodes a chat as our tokenizer does.
    shipped = transformers.AutoTokenizer.from_pretrained(merged)
    expected = shipped.apply_chat_template([{"role": m.role, "content": m.content} for m in CHAT], tokenize=True,
                                           return_dict=True)["input_ids"]
    assert reloaded.tokenizer.encode_chat(CHAT)[0] == expected == HFTokenizer(base).encode_chat(CHAT)[0]
    generation = json.loads((merged / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)


def test_gguf_export_keeps_the_tokenizer_and_loads_with_our_logits(trained, exported):
    base, model, _ = trained
    path = exported / "tiny-smollm2-elixir-f16.gguf"
    reader, original = GGUFReader(path), GGUFReader(base)
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied: llama.cpp uses token_embd
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"):
        assert reader.fields[key].contents() == original.fields[key].contents(), key
    ours = np.asarray(model(TOKENS)[0])
    ours_from_gguf = np.asarray(load(path, dtype="float32", progress=False).model(TOKENS)[0])
    assert max_relative_error(ours_from_gguf, ours) < 1e-2  # F16 rounding of the merged weights
    transformers_gguf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                          dtype=torch.float32)
    assert max_relative_error(hf_logits(transformers_gguf, TOKENS), ours_from_gguf) < 1e-4


def test_llama_cpp_runs_the_exported_gguf_with_our_tokens_and_logits(trained, exported):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    base, model, _ = trained
    path = exported / "tiny-smollm2-elixir-f16.gguf"
    text = "defmodule Greeter do\n  def hello(name), do: \"Hello, #{name}!\"\nend\n"
    tokens = HFTokenizer(base).encode(text)
    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokens
        llm.eval(tokens)
        logits = np.array(llm.scores[: len(tokens)])
    finally:
        llm.close()
    reference = np.asarray(load(path, dtype="float32", progress=False).model(np.array([tokens]))[0])[0]
    assert max_relative_error(logits, reference) < 1e-2
    assert os.path.getsize(path) > 0
