"""Mistral's consolidated format: `params.json` and the RoPE row order of its q/k projections.

Mistral's reference code rotates interleaved pairs (dims 2i, 2i+1 of a head); Hugging Face (and our
model) rotates halves (dims i, i + head_dim/2). The same weights therefore list each head's q/k rows in
a different order: `to_rotate_half` is the inverse of the permutation in transformers'
`convert_mistral_weights_to_hf.py`, `to_interleaved` is that permutation's inverse (and what llama.cpp
stores in GGUF). Tensor names are in `param_map` (`ParamName.consolidated_name`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from devstral_jax.config import ConfigError, ModelConfig
from devstral_jax.hf.param_map import ParamName

# params.json key -> ModelConfig field.
_FIELDS = {
    "dim": "hidden_size", "n_layers": "num_layers", "head_dim": "head_dim", "hidden_dim": "intermediate_size",
    "n_heads": "num_heads", "n_kv_heads": "num_kv_heads", "norm_eps": "rms_norm_eps", "vocab_size": "vocab_size",
    "rope_theta": "rope_theta", "sliding_window": "sliding_window", "max_seq_len": "max_position_embeddings",
    "max_position_embeddings": "max_position_embeddings",
}
_REQUIRED = ("dim", "n_layers", "hidden_dim", "n_heads", "vocab_size")
# Keys that change the architecture into one we do not implement, when set to anything but these values.
_UNSUPPORTED = {"moe": None, "lora": None, "vision_encoder": None, "yarn": None, "rope_scaling": None,
                "quantization": None, "tied_embeddings": False}
_DEFAULTS = {"norm_eps": 1e-5, "rope_theta": 10000.0}  # mistral-inference's defaults


def config_from_params(params: Mapping[str, Any], **execution: Any) -> ModelConfig:
    """The ModelConfig of a consolidated checkpoint's `params.json`; raises ConfigError naming the bad key."""
    unknown = set(params) - set(_FIELDS) - set(_UNSUPPORTED)
    if unknown:
        raise ConfigError(f"params.json has key(s) this Mistral implementation does not understand: {sorted(unknown)}.")
    for key, allowed in _UNSUPPORTED.items():
        if params.get(key, allowed) not in (allowed, None, {}):
            raise ConfigError(f"params.json sets '{key}' ({params[key]!r}); this implementation supports only the "
                              "dense Mistral decoder.")
    missing = [k for k in _REQUIRED if k not in params]
    if missing:
        raise ConfigError(f"params.json is missing required key(s) {missing}.")
    params = {**_DEFAULTS, **params}
    fields = {ours: params[theirs] for theirs, ours in _FIELDS.items() if params.get(theirs) is not None}
    fields.setdefault("num_kv_heads", params["n_heads"])
    if "head_dim" not in fields:
        fields["head_dim"] = params["dim"] // params["n_heads"]
    fields["rope_theta"] = float(fields["rope_theta"])
    try:
        return ModelConfig(**fields, **execution)
    except (ConfigError, TypeError) as e:  # TypeError: a value of the wrong type, e.g. a list for an int
        raise ConfigError(f"params.json: {e}") from None


def rope_heads(name: ParamName, config: ModelConfig) -> int | None:
    """How many heads a q/k projection has (its rows are permuted per head); None for every other tensor."""
    return {"q_proj": config.num_heads, "k_proj": config.num_kv_heads}.get(name.lora_target)


def to_rotate_half(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Consolidated (interleaved pairs) q/k rows `[heads * head_dim, in]` -> Hugging Face's rotate-half order."""
    out, features = w.shape
    return w.reshape(num_heads, out // num_heads // 2, 2, features).swapaxes(1, 2).reshape(out, features)


def to_interleaved(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Hugging Face's rotate-half q/k rows -> interleaved pairs (consolidated and GGUF order)."""
    out, features = w.shape
    return w.reshape(num_heads, 2, out // num_heads // 2, features).swapaxes(1, 2).reshape(out, features)
