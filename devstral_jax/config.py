"""`ModelConfig`: the Mistral/Devstral architecture plus how to run it, its presets, and HF `config.json` conversion."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import ml_collections

from devstral_jax.errors import ConfigError
from devstral_jax.quant import formats

REMAT_POLICIES = ("none", "full", "dots_saveable", "offload")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = ("float32", "bfloat16", "float16")


# The fields that say how to run a model rather than what its weights are (never in a config.json).
EXECUTION_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "attention_impl", "attn_storage",
                    "mlp_storage", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture (what the weights are) and execution settings (how we run them).

    The architecture fields mirror Hugging Face's `MistralConfig`; the execution fields
    (`dtype` .. `attention_impl`) never appear in a `config.json`.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e9
    max_position_embeddings: int = 131072
    sliding_window: int | None = None
    initializer_range: float = 0.02  # std of the normal init of kernels and embeddings (random bases only)
    # Execution settings.
    dtype: str = "bfloat16"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of (unquantized) parameters
    scan_layers: bool = True  # one compiled layer body, scanned: compile time flat in depth
    remat_policy: str = "full"  # what a layer saves for the backward pass; see REMAT_POLICIES
    attention_impl: str = "xla"  # see devstral_jax/model/attention_kernels.py
    # Frozen-base storage per module group (QLoRA: "nf4"); embeddings, norms and lm_head stay dense.
    attn_storage: str = "dense"  # q/k/v/o kernels: dense | nf4 | int8 (quant/formats.py)
    mlp_storage: str = "dense"  # gate/up/down kernels: dense | nf4 | int8
    # LoRA adapters (devstral_jax/lora.py); rank 0 means none.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} "
                              "(grouped-query attention shares each KV head among a whole number of query heads).")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary position embeddings.")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window <= 0):
            raise ConfigError(f"sliding_window must be a positive integer or None, got {self.sliding_window!r}.")
        if not self.rms_norm_eps > 0:
            raise ConfigError(f"rms_norm_eps must be positive, got {self.rms_norm_eps!r}.")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta!r}.")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {DTYPES}.")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}.")
        for name in ("attn_storage", "mlp_storage"):
            if getattr(self, name) not in formats.FORMATS:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {tuple(formats.FORMATS)}.")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))  # ml_collections may hand a list
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown:
            raise ConfigError(f"Unknown LoRA target module(s) {unknown} in lora_targets; choose from "
                              f"{list(LORA_TARGETS)}.")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be a non-negative integer (0 = no adapters), got {self.lora_rank!r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")

    def replace(self, **changes: Any) -> ModelConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"Unknown ModelConfig field(s) {sorted(unknown)}; known: "
                              f"{[f.name for f in dataclasses.fields(self)]}.")
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        """Parameter count from the shapes alone (untied embeddings and lm_head)."""
        attn = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        layer = attn + mlp + 2 * self.hidden_size
        return self.num_layers * layer + 2 * self.vocab_size * self.hidden_size + self.hidden_size


_DEVSTRAL_SMALL = dict(
    vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_layers=40, num_heads=32, num_kv_heads=8,
    head_dim=128, rms_norm_eps=1e-5, rope_theta=1e9, max_position_embeddings=131072, sliding_window=None,
)

PRESETS: dict[str, ModelConfig] = {
    # Devstral Small 2505 and 2507 share the architecture (Mistral Small 3.1 text decoder); they differ in weights.
    "devstral_small_2505": ModelConfig(**_DEVSTRAL_SMALL),
    "devstral_small_2507": ModelConfig(**_DEVSTRAL_SMALL),
    "mistral_7b": ModelConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
        head_dim=128, rms_norm_eps=1e-5, rope_theta=1e4, max_position_embeddings=32768, sliding_window=4096,
    ),
    # Devstral's shape shrunk for tests and the CPU demo; Tekken's full vocabulary so real text round-trips.
    "tiny": ModelConfig(
        vocab_size=131072, hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, rms_norm_eps=1e-5, rope_theta=1e9, max_position_embeddings=131072, sliding_window=None,
        dtype="float32",
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset with field overrides, e.g. `preset("tiny", num_layers=4)`."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name].replace(**overrides)


def to_config_dict(config: ModelConfig) -> ml_collections.ConfigDict:
    """Every field of `config` as a ConfigDict, so each can be overridden with `--config.model.<field>=`."""
    fields = dataclasses.asdict(config)
    if fields["sliding_window"] is None:
        fields["sliding_window"] = ml_collections.config_dict.placeholder(int)
    return ml_collections.ConfigDict(fields)


def from_config_dict(model: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig of a `config.model` block written by `to_config_dict` (and perhaps overridden)."""
    fields = dict(model)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if set(fields) != known:
        raise ConfigError(f"config.model must hold exactly the ModelConfig fields; unknown: "
                          f"{sorted(set(fields) - known)}, missing: {sorted(known - set(fields))}. "
                          "Build it with devstral_jax.config.to_config_dict(preset(...)).")
    return ModelConfig(**fields)


# --- Hugging Face config.json (MistralForCausalLM) -------------------------------------------------------------

# config.json key -> ModelConfig field.
_HF_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "rms_norm_eps": "rms_norm_eps",
    "max_position_embeddings": "max_position_embeddings",
    "sliding_window": "sliding_window",
    "initializer_range": "initializer_range",
}
_HF_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# transformers' MistralConfig defaults for keys a config.json may leave out.
_HF_DEFAULTS = {"rms_norm_eps": 1e-6, "max_position_embeddings": 4096 * 32, "sliding_window": 4096,
                "initializer_range": 0.02}
# Keys that carry no architecture we model (bookkeeping, generation defaults, serving hints).
_HF_IGNORED = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout", "hidden_act",
    "tie_word_embeddings", "rope_theta", "rope_parameters", "rope_scaling", "output_attentions",
    "output_hidden_states", "return_dict", "max_window_layers", "use_sliding_window", "_name_or_path",
    "quantization_config", "chunk_size_feed_forward", "id2label", "label2id", "is_encoder_decoder", "problem_type",
}


def from_hf_config(hf: Mapping[str, Any], **execution: Any) -> ModelConfig:
    """Builds a ModelConfig from a `MistralForCausalLM` config.json dict; raises ConfigError naming the bad field."""
    unknown = set(hf) - set(_HF_FIELDS) - _HF_IGNORED
    if unknown:
        raise ConfigError(f"config.json has field(s) this Mistral implementation does not understand: "
                          f"{sorted(unknown)}. Is this a MistralForCausalLM config?")
    missing = [k for k in _HF_REQUIRED if k not in hf]
    if missing:
        raise ConfigError(f"config.json is missing required field(s) {missing}.")
    _check_hf_value(hf, "model_type", "mistral")
    _check_hf_value(hf, "hidden_act", "silu")
    _check_hf_value(hf, "tie_word_embeddings", False)
    if hf.get("architectures") not in (None, ["MistralForCausalLM"]):
        raise ConfigError(f"config.json field 'architectures' is {hf['architectures']}; expected ['MistralForCausalLM'].")
    if hf.get("attention_dropout", 0.0):
        raise ConfigError("config.json field 'attention_dropout' must be 0: attention dropout is not implemented.")
    if hf.get("rope_scaling") or (hf.get("rope_parameters") or {}).get("rope_type", "default") != "default":
        raise ConfigError("config.json asks for RoPE scaling ('rope_scaling'/'rope_parameters.rope_type'); "
                          "only the default rotary embedding is implemented.")
    if hf.get("use_sliding_window") is False:
        hf = {**hf, "sliding_window": None}

    for key in (*_HF_REQUIRED, "num_key_value_heads", "head_dim", "max_position_embeddings"):
        value = hf.get(key)
        if key in hf and value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ConfigError(f"config.json field '{key}' must be a positive integer, got {value!r}.")
    num_kv_heads = hf.get("num_key_value_heads") or hf["num_attention_heads"]
    if hf["num_attention_heads"] % num_kv_heads:
        raise ConfigError(f"config.json field 'num_key_value_heads' ({num_kv_heads}) must divide "
                          f"'num_attention_heads' ({hf['num_attention_heads']}).")
    head_dim = hf.get("head_dim")
    if head_dim is None:
        if hf["hidden_size"] % hf["num_attention_heads"]:
            raise ConfigError(f"config.json field 'num_attention_heads' ({hf['num_attention_heads']}) does not divide "
                              f"'hidden_size' ({hf['hidden_size']}) and no 'head_dim' is given.")
        head_dim = hf["hidden_size"] // hf["num_attention_heads"]

    hf = {**_HF_DEFAULTS, **hf}
    fields = {ours: hf[theirs] for theirs, ours in _HF_FIELDS.items() if theirs in hf}
    fields.update(num_kv_heads=num_kv_heads, head_dim=head_dim, rope_theta=_hf_rope_theta(hf))
    try:
        return ModelConfig(**fields, **execution)
    except ConfigError as e:
        raise ConfigError(f"config.json: {e}") from None


def _check_hf_value(hf: Mapping[str, Any], key: str, expected: Any) -> None:
    if key in hf and hf[key] != expected:
        raise ConfigError(f"config.json field '{key}' is {hf[key]!r}; this implementation supports only {expected!r}.")


def _hf_rope_theta(hf: Mapping[str, Any]) -> float:
    """transformers >= 5 nests theta in `rope_parameters`; older files have a top-level `rope_theta`."""
    nested = (hf.get("rope_parameters") or {}).get("rope_theta")
    flat = hf.get("rope_theta")
    if nested is not None and flat is not None and float(nested) != float(flat):
        raise ConfigError(f"config.json fields 'rope_theta' ({flat}) and 'rope_parameters.rope_theta' ({nested}) "
                          "disagree.")
    theta = nested if nested is not None else flat
    return float(theta) if theta is not None else 10000.0  # transformers' MistralConfig default


def to_hf_config(config: ModelConfig, torch_dtype: str = "bfloat16") -> dict[str, Any]:
    """The `config.json` dict that transformers loads as `MistralForCausalLM`."""
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,  # read by transformers < 5, vLLM and llama.cpp's converter
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},  # transformers >= 5
        "sliding_window": config.sliding_window,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "initializer_range": config.initializer_range,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "use_cache": True,
        "torch_dtype": torch_dtype,
    }


def load_hf_config(path: str | os.PathLike, **execution: Any) -> ModelConfig:
    """Reads a `config.json` (or a model directory holding one)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path) as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"No config.json at {path}.") from None
    except ValueError as e:  # not JSON, or not UTF-8
        raise ConfigError(f"{path} is not valid JSON: {e}.") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{path} must hold a JSON object.")
    return from_hf_config(hf, **execution)
