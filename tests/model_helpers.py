"""Shared by the model tests: a tiny random-weight transformers Mistral (or Llama) and the same weights in our model."""

from __future__ import annotations

import numpy as np
import torch
import transformers
from flax import nnx

from devstral_jax.config import ModelConfig, preset, to_hf_config
from devstral_jax.hf import param_map
from devstral_jax.model import Transformer

# Devstral's shape in miniature: GQA (4 query heads share 2 KV heads), q/o width 4*24 = 96 != hidden 64,
# theta 1e9, no sliding window.
TINY = preset("tiny", vocab_size=256, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=24, dtype="float32")
# SmolLM2's shape in miniature: Llama family, tied embeddings, 3 query heads per KV head, theta 1e5.
TINY_LLAMA = preset("smollm2_135m", vocab_size=256, hidden_size=48, intermediate_size=128, num_layers=3,
                    num_heads=6, num_kv_heads=2, head_dim=16, dtype="float32")
# The transformers classes of each family.
HF_CLASSES = {"mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
              "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM)}


def hf_model(config: ModelConfig, seed: int = 0) -> transformers.PreTrainedModel:
    """A float32 `MistralForCausalLM` / `LlamaForCausalLM` with random weights large enough to make the logits
    informative."""
    torch.manual_seed(seed)
    config_class, model_class = HF_CLASSES[config.family]
    hf_config = config_class(**to_hf_config(config, torch_dtype="float32"))
    model = model_class._from_config(hf_config, attn_implementation="eager", torch_dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model.eval()


def ours_from_hf(config: ModelConfig, hf: transformers.PreTrainedModel) -> Transformer:
    tensors = {name: t.detach().numpy() for name, t in hf.state_dict().items()}
    model = Transformer(config, rngs=nnx.Rngs(1))
    param_map.load_state_dict(model, tensors.__getitem__)
    return model


def hf_logits(hf: transformers.PreTrainedModel, tokens: np.ndarray, attention_mask: np.ndarray | None = None,
              position_ids: np.ndarray | None = None) -> np.ndarray:
    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = torch.from_numpy(attention_mask)
    if position_ids is not None:
        kw["position_ids"] = torch.from_numpy(position_ids)
    with torch.no_grad():
        return hf(torch.from_numpy(tokens), **kw).logits.numpy()


def hf_greedy(hf: transformers.PreTrainedModel, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy `generate` for one prompt, EOS ignored: the new tokens only."""
    with torch.no_grad():
        output = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    return output[0, len(prompt):].tolist()


def padded_batch(vocab_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, attention mask, positions) of 3 rows of 24: row 0 full; row 1 left-padded by 9 (generation style);
    row 2 right-padded by 5 (training style)."""
    tokens = np.random.default_rng(seed).integers(0, vocab_size, (3, 24))
    mask = np.ones((3, 24), np.int64)
    mask[1, :9] = 0
    mask[2, 19:] = 0
    return tokens, mask, np.clip(np.cumsum(mask, axis=1) - 1, 0, None)


def max_relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - reference| / max |reference|: the worst element, scaled by the logits' range."""
    return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))
