"""The one mapping between Hugging Face `MistralForCausalLM` / `LlamaForCausalLM` tensor names and our parameters.

HF's `nn.Linear` stores `[out, in]`; our kernels are `[in, out]`, so projections and lm_head are
transposed on the way in and out. With scanned layers, layer i of HF is row i of our stacked array.
Each tensor also has its name in Mistral's consolidated format and in GGUF (llama.cpp's names; both
`[out, in]` as stored, q/k rows in RoPE's interleaved order, see hf/consolidated.py). A model with tied
embeddings has no `lm_head.weight` (GGUF: no `output.weight`): its logits use the embedding matrix.
Import (streamed, quantizing) and export build on `param_names`; the whole-dict helpers below serve
small models and tests.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from devstral_jax.config import ModelConfig
from devstral_jax.model import Transformer
from devstral_jax.model.linear import Linear, QuantizedKernel

# HF suffix within `model.layers.{i}.` -> our path within a Block, whether it is transposed, the consolidated
# suffix within `layers.{i}.` and the GGUF suffix within `blk.{i}.`.
_LAYER_PARAMS = {
    "self_attn.q_proj.weight": (("attn", "q_proj", "kernel"), True, "attention.wq.weight", "attn_q.weight"),
    "self_attn.k_proj.weight": (("attn", "k_proj", "kernel"), True, "attention.wk.weight", "attn_k.weight"),
    "self_attn.v_proj.weight": (("attn", "v_proj", "kernel"), True, "attention.wv.weight", "attn_v.weight"),
    "self_attn.o_proj.weight": (("attn", "o_proj", "kernel"), True, "attention.wo.weight", "attn_output.weight"),
    "mlp.gate_proj.weight": (("mlp", "gate_proj", "kernel"), True, "feed_forward.w1.weight", "ffn_gate.weight"),
    "mlp.up_proj.weight": (("mlp", "up_proj", "kernel"), True, "feed_forward.w3.weight", "ffn_up.weight"),
    "mlp.down_proj.weight": (("mlp", "down_proj", "kernel"), True, "feed_forward.w2.weight", "ffn_down.weight"),
    "input_layernorm.weight": (("input_norm", "scale"), False, "attention_norm.weight", "attn_norm.weight"),
    "post_attention_layernorm.weight": (("post_attn_norm", "scale"), False, "ffn_norm.weight", "ffn_norm.weight"),
}
_GLOBAL_PARAMS = {
    "model.embed_tokens.weight": (("embedder", "embedding"), False, "tok_embeddings.weight", "token_embd.weight"),
    "model.norm.weight": (("final_norm", "scale"), False, "norm.weight", "output_norm.weight"),
    "lm_head.weight": (("lm_head", "kernel"), True, "output.weight", "output.weight"),
}


@dataclasses.dataclass(frozen=True)
class ParamName:
    """One HF tensor: where it lives in our model and how its layout differs."""

    hf_name: str
    path: tuple[str, ...]  # our path, without the layer index
    layer: int | None  # None for embedding, final norm and lm_head
    transpose: bool  # HF [out, in] <-> ours [in, out]
    consolidated_name: str  # the same tensor in Mistral's consolidated.safetensors
    gguf_name: str  # and in a GGUF file

    def hf_shape(self, our_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(reversed(our_shape)) if self.transpose else tuple(our_shape)

    @property
    def module(self) -> str:
        """The HF module that owns this weight, e.g. `model.layers.3.self_attn.q_proj` (PEFT keys on it)."""
        return self.hf_name.removesuffix(".weight")

    @property
    def lora_target(self) -> str | None:
        """`q_proj` .. `down_proj` for the projections LoRA can adapt, else None."""
        return self.path[-2] if self.layer is not None and self.path[-1] == "kernel" else None


def param_names(config: ModelConfig) -> list[ParamName]:
    """Every tensor of a `MistralForCausalLM` / `LlamaForCausalLM` checkpoint for `config`, in HF's order."""

    def global_param(hf_name: str) -> ParamName:
        path, transpose, consolidated, gguf_name = _GLOBAL_PARAMS[hf_name]
        return ParamName(hf_name, path, None, transpose, consolidated, gguf_name)

    layers = [ParamName(f"model.layers.{i}.{suffix}", path, i, transpose, f"layers.{i}.{consolidated}",
                        f"blk.{i}.{gguf_suffix}")
              for i in range(config.num_layers)
              for suffix, (path, transpose, consolidated, gguf_suffix) in _LAYER_PARAMS.items()]
    output = [] if config.tie_word_embeddings else [global_param("lm_head.weight")]
    return [global_param("model.embed_tokens.weight"), *layers, global_param("model.norm.weight"), *output]


def hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every HF tensor for `config`, read off the abstract (never allocated) dense model."""
    dense = config.replace(attn_storage="dense", mlp_storage="dense", lora_rank=0)
    abstract = nnx.eval_shape(lambda: Transformer(dense, rngs=nnx.Rngs(0)))
    shapes = {}
    for name in param_names(config):
        shape = get_variable(abstract, name).shape
        shapes[name.hf_name] = name.hf_shape(shape[1:] if is_stacked(abstract, name) else shape)
    return shapes


def owner(model: Transformer, name: ParamName) -> tuple[nnx.Module, str]:
    """The module holding `name` and its attribute there (layer-indexed when layers are not scanned)."""
    node = model
    if name.layer is not None:
        node = model.layers if model.config.scan_layers else model.layers[name.layer]
    for key in name.path[:-1]:
        node = getattr(node, key)
    return node, name.path[-1]


def get_variable(model: Transformer, name: ParamName) -> nnx.Variable | QuantizedKernel:
    """What holds `name`: a Variable, or a quantized kernel module (stacked over layers when scanned)."""
    return getattr(*owner(model, name))


def is_stacked(model: Transformer, name: ParamName) -> bool:
    return name.layer is not None and model.config.scan_layers


def load_state_dict(model: Transformer, get_tensor: Callable[[str], np.ndarray]) -> None:
    """Sets every parameter of `model` from HF tensors (`get_tensor(hf_name)`), in place, checking shapes.

    Kernels the config stores quantized are quantized from the HF values.
    """
    stacked: dict[tuple[str, ...], list[np.ndarray]] = {}
    for name in param_names(model.config):
        module, attr = owner(model, name)
        target = getattr(module, attr)
        shape = target.shape if isinstance(target, nnx.Variable) else target.quantized().shape
        our_shape = shape[1:] if is_stacked(model, name) else shape
        tensor = np.asarray(get_tensor(name.hf_name))
        if tensor.shape != name.hf_shape(our_shape):
            raise ValueError(f"Tensor {name.hf_name} has shape {tensor.shape}; the model config expects "
                             f"{name.hf_shape(our_shape)}.")
        value = tensor.T if name.transpose else tensor
        if is_stacked(model, name):
            stacked.setdefault(name.path, []).append(value)
            if len(stacked[name.path]) < model.config.num_layers:
                continue
            value = np.stack(stacked.pop(name.path))
        if isinstance(target, nnx.Variable):
            target.set_value(jnp.asarray(value, dtype=target[...].dtype))
        else:
            setattr(module, attr, QuantizedKernel(jnp.asarray(value, jnp.float32), target.axes, target.storage))


def state_dict(model: Transformer, merge_lora: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """Yields `(hf_name, array)` for every parameter in HF layout, one layer at a time (so a big model never
    leaves the device whole); quantized kernels come dequantized (float32). With `merge_lora`, adapters not
    yet merged are folded in as W + scale A B (float32), leaving the model unchanged."""
    for name in param_names(model.config):
        module, attr = owner(model, name)
        layer = name.layer if is_stacked(model, name) else None
        value = _weight(getattr(module, attr), layer)
        if merge_lora and isinstance(module, Linear) and module.lora is not None and not module.lora_merged:
            value = value.astype(jnp.float32) + module.lora.delta(layer)
        value = np.asarray(value)
        yield name.hf_name, value.T if name.transpose else value


def _weight(target: nnx.Variable | QuantizedKernel, layer: int | None) -> jax.Array:
    """A Variable's value, or a quantized kernel dequantized to float32; only row `layer` of a stacked one."""
    if isinstance(target, nnx.Variable):
        return target[...] if layer is None else target[...][layer]
    quantized = target.quantized()
    if layer is not None:
        quantized = jax.tree.map(lambda x: x[layer], quantized)
    return target.format.dequantize(quantized, jnp.float32)
