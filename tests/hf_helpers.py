"""Checkpoint directories for the HF import/export tests, written by transformers itself (or, for Mistral's
consolidated format, by hand from a transformers model, with transformers' RoPE permutation inverted)."""

from __future__ import annotations

import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file

from devstral_jax.config import ModelConfig
from devstral_jax.tokenizers.tekken import PACKAGED_TEKKEN
from tests.model_helpers import hf_model

# HF name suffix -> consolidated suffix (written out here independently of devstral_jax.hf.param_map).
CONSOLIDATED = {
    "self_attn.q_proj.weight": "attention.wq.weight", "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight", "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def save_hf_checkpoint(config: ModelConfig, path, seed: int = 0,
                       max_shard_size: str = "100KB") -> transformers.MistralForCausalLM:
    """A random tiny MistralForCausalLM saved by transformers (sharded), with Tekken beside it (as Devstral ships)."""
    model = hf_model(config, seed)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    shutil.copy(PACKAGED_TEKKEN, os.path.join(path, "tekken.json"))
    return model


def interleave_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of transformers' convert_mistral_weights_to_hf.permute, which is
    `w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)`."""
    dim1, dim2 = w.shape
    return w.view(n_heads, 2, dim1 // n_heads // 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def save_consolidated_checkpoint(model: transformers.MistralForCausalLM, config: ModelConfig, path) -> None:
    """The model's weights as Mistral ships them: params.json + consolidated.safetensors (interleaved q/k rows)."""
    os.makedirs(path, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("model.layers."):
            layer, suffix = name.removeprefix("model.layers.").split(".", 1)
            if suffix == "self_attn.q_proj.weight":
                tensor = interleave_rope(tensor, config.num_heads)
            elif suffix == "self_attn.k_proj.weight":
                tensor = interleave_rope(tensor, config.num_kv_heads)
            tensors[f"layers.{layer}.{CONSOLIDATED[suffix]}"] = tensor.contiguous()
        else:
            tensors[{"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
                     "lm_head.weight": "output.weight"}[name]] = tensor.contiguous()
    save_file(tensors, os.path.join(path, "consolidated.safetensors"))
    params = {"dim": config.hidden_size, "n_layers": config.num_layers, "head_dim": config.head_dim,
              "hidden_dim": config.intermediate_size, "n_heads": config.num_heads, "n_kv_heads": config.num_kv_heads,
              "norm_eps": config.rms_norm_eps, "vocab_size": config.vocab_size, "rope_theta": config.rope_theta}
    with open(os.path.join(path, "params.json"), "w") as f:
        json.dump(params, f)
    shutil.copy(PACKAGED_TEKKEN, os.path.join(path, "tekken.json"))
