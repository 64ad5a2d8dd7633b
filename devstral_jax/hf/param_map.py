"""The one mapping between Hugging Face `MistralForCausalLM` tensor names and our parameters.

HF's `nn.Linear` stores `[out, in]`; our kernels are `[in, out]`, so projections and lm_head are
transposed on the way in and out. With scanned layers, layer i of HF is row i of our stacked array.
Import (streamed, quantizing) and export build on `param_names`; the whole-dict helpers below serve
small models and tests.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx

from devstral_jax.config import ModelConfig
from devstral_jax.model import Transformer

# HF suffix within `model.layers.{i}.` -> our path within a Block, and whether it is transposed.
_LAYER_PARAMS = {
    "self_attn.q_proj.weight": (("attn", "q_proj", "kernel"), True),
    "self_attn.k_proj.weight": (("attn", "k_proj", "kernel"), True),
    "self_attn.v_proj.weight": (("attn", "v_proj", "kernel"), True),
    "self_attn.o_proj.weight": (("attn", "o_proj", "kernel"), True),
    "mlp.gate_proj.weight": (("mlp", "gate_proj", "kernel"), True),
    "mlp.up_proj.weight": (("mlp", "up_proj", "kernel"), True),
    "mlp.down_proj.weight": (("mlp", "down_proj", "kernel"), True),
    "input_layernorm.weight": (("input_norm", "scale"), False),
    "post_attention_layernorm.weight": (("post_attn_norm", "scale"), False),
}
_GLOBAL_PARAMS = {
    "model.embed_tokens.weight": (("embedder", "embedding"), False),
    "model.norm.weight": (("final_norm", "scale"), False),
    "lm_head.weight": (("lm_head", "kernel"), True),
}


@dataclasses.dataclass(frozen=True)
class ParamName:
    """One HF tensor: where it lives in our model and how its layout differs."""

    hf_name: str
    path: tuple[str, ...]  # our path, without the layer index
    layer: int | None  # None for embedding, final norm and lm_head
    transpose: bool  # HF [out, in] <-> ours [in, out]

    def hf_shape(self, our_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(reversed(our_shape)) if self.transpose else tuple(our_shape)


def param_names(config: ModelConfig) -> list[ParamName]:
    """Every tensor of a `MistralForCausalLM` checkpoint for `config`, in HF's order."""

    def global_param(hf_name: str) -> ParamName:
        path, transpose = _GLOBAL_PARAMS[hf_name]
        return ParamName(hf_name, path, None, transpose)

    layers = [ParamName(f"model.layers.{i}.{suffix}", path, i, transpose)
              for i in range(config.num_layers) for suffix, (path, transpose) in _LAYER_PARAMS.items()]
    return [global_param("model.embed_tokens.weight"), *layers, global_param("model.norm.weight"),
            global_param("lm_head.weight")]


def _owner(model: Transformer, name: ParamName) -> tuple[nnx.Module, str]:
    """The module holding `name` and its attribute there (layer-indexed when layers are not scanned)."""
    node = model
    if name.layer is not None:
        node = model.layers if model.config.scan_layers else model.layers[name.layer]
    for key in name.path[:-1]:
        node = getattr(node, key)
    return node, name.path[-1]


def get_variable(model: Transformer, name: ParamName) -> nnx.Variable | nnx.Module:
    """What holds `name`: a Variable, or a quantized kernel module (stacked over layers when scanned)."""
    return getattr(*_owner(model, name))


def _is_stacked(model: Transformer, name: ParamName) -> bool:
    return name.layer is not None and model.config.scan_layers


def load_state_dict(model: Transformer, get_tensor: Callable[[str], np.ndarray]) -> None:
    """Sets every parameter of `model` from HF tensors (`get_tensor(hf_name)`), in place, checking shapes.

    Kernels the config stores quantized are quantized from the HF values.
    """
    stacked: dict[tuple[str, ...], list[np.ndarray]] = {}
    for name in param_names(model.config):
        owner, attr = _owner(model, name)
        target = getattr(owner, attr)
        shape = target.shape if isinstance(target, nnx.Variable) else target.quantized().shape
        our_shape = shape[1:] if _is_stacked(model, name) else shape
        tensor = np.asarray(get_tensor(name.hf_name))
        if tensor.shape != name.hf_shape(our_shape):
            raise ValueError(f"Tensor {name.hf_name} has shape {tensor.shape}; the model config expects "
                             f"{name.hf_shape(our_shape)}.")
        value = tensor.T if name.transpose else tensor
        if _is_stacked(model, name):
            stacked.setdefault(name.path, []).append(value)
            if len(stacked[name.path]) < model.config.num_layers:
                continue
            value = np.stack(stacked.pop(name.path))
        if isinstance(target, nnx.Variable):
            target.set_value(jnp.asarray(value, dtype=target[...].dtype))
        else:
            setattr(owner, attr, type(target)(jnp.asarray(value, jnp.float32), target.axes))


def state_dict(model: Transformer) -> Iterator[tuple[str, np.ndarray]]:
    """Yields `(hf_name, array)` for every parameter in HF layout; quantized kernels come dequantized (float32)."""
    for name in param_names(model.config):
        target = get_variable(model, name)
        value = np.asarray(target[...] if isinstance(target, nnx.Variable) else target.dequantize(jnp.float32))
        if _is_stacked(model, name):
            value = value[name.layer]
        yield name.hf_name, value.T if name.transpose else value
