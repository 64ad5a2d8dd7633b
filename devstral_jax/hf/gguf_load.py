"""GGUF checkpoints (llama.cpp's format, as Ollama and the Hub ship them) read as HF tensors.

A llama-architecture file (llama.cpp writes Mistral models, Devstral included, as `llama` too) whose tensors
are F32, F16, BF16, Q8_0, Q4_0 or Q4_1: each tensor is dequantized to float32 by the `gguf` package's own
`gguf.quants.dequantize` (what transformers' GGUF loading uses too), named by param_map's GGUF names, and its
q/k rows are put back from llama.cpp's interleaved RoPE order into Hugging Face's rotate-half order
(hf/consolidated.py). So hf/model_dir.py hands GGUF tensors to hf/load.py exactly like safetensors ones,
streamed and quantized on load. The config comes from the file's `llama.*` metadata; a file without
`output.weight` ties the output layer to the token embedding (SmolLM2, Llama 3.2). The tokenizer is in the
same file (devstral_jax/tokenizers).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import gguf
import numpy as np

from devstral_jax.config import ModelConfig
from devstral_jax.errors import ConfigError, ModelDirError
from devstral_jax.hf.param_map import param_names
from devstral_jax.hf.safetensors_io import TensorInfo

T = gguf.GGMLQuantizationType
SUPPORTED_TYPES = (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1)
ARCHITECTURE = "llama"  # general.architecture; it loads as our Llama family, as transformers loads it
_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    """An open GGUF file: its metadata, and its tensors by GGUF name (memory-mapped, read on demand)."""

    path: str
    reader: gguf.GGUFReader

    @functools.cached_property
    def tensors(self) -> dict[str, gguf.ReaderTensor]:
        return {tensor.name: tensor for tensor in self.reader.tensors}

    def field(self, key: str, default: Any = _REQUIRED) -> Any:
        """A metadata value (a number, string or list); a missing required key is a ConfigError."""
        if key in self.reader.fields:
            return self.reader.fields[key].contents()
        if default is _REQUIRED:
            raise ConfigError(f"{self.path} has no '{key}' metadata.")
        return default

    def read(self, gguf_name: str) -> np.ndarray:
        """One tensor dequantized to float32, `[out, in]` as stored (q/k rows still in llama.cpp's order)."""
        tensor = self.tensors[gguf_name]
        return gguf.quants.dequantize(tensor.data, tensor.tensor_type)


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelDirError(f"No GGUF file at {path}.")
    try:
        return GGUFFile(path, gguf.GGUFReader(path))
    except (ValueError, OSError) as e:  # gguf raises ValueError for a bad magic number or a truncated file
        raise ModelDirError(f"Cannot read {path} as a GGUF file: {e}") from None


def config_from_gguf(file: GGUFFile, **execution: Any) -> ModelConfig:
    """The ModelConfig of a GGUF file's metadata (`execution` sets the execution fields); ConfigError names what is
    missing or unsupported."""
    architecture = file.field("general.architecture")
    if architecture != ARCHITECTURE:
        raise ConfigError(f"{file.path} holds a '{architecture}' model; only '{ARCHITECTURE}' (Llama, Mistral, "
                          "SmolLM2...) GGUF files are supported.")
    tensors = file.tensors
    if "rope_freqs.weight" in tensors or file.field(f"{architecture}.rope.scaling.type", "none") != "none":
        raise ConfigError(f"{file.path} scales RoPE (rope_freqs / rope.scaling); GGUF files with RoPE scaling are not "
                          "supported: load the model's Hugging Face directory instead.")

    def hyper(key: str, default: Any = _REQUIRED) -> Any:
        return file.field(f"{architecture}.{key}", default)

    hidden, heads = hyper("embedding_length"), hyper("attention.head_count")
    head_dim = hyper("attention.key_length", None) or hyper("rope.dimension_count", None) or hidden // heads
    if hyper("rope.dimension_count", head_dim) != head_dim:
        raise ConfigError(f"{file.path} rotates {hyper('rope.dimension_count')} of each head's {head_dim} dimensions; "
                          "only full-head RoPE is supported.")
    vocab_size = hyper("vocab_size", None) or len(file.field("tokenizer.ggml.tokens", ())) or None
    if vocab_size is None:
        raise ConfigError(f"{file.path} gives no vocabulary size ({architecture}.vocab_size or tokenizer.ggml.tokens).")
    fields = dict(
        family="llama", vocab_size=vocab_size, hidden_size=hidden,
        intermediate_size=hyper("feed_forward_length"), num_layers=hyper("block_count"), num_heads=heads,
        num_kv_heads=hyper("attention.head_count_kv", heads), head_dim=head_dim,
        rms_norm_eps=_as_written(hyper("attention.layer_norm_rms_epsilon")),
        rope_theta=_as_written(hyper("rope.freq_base", 10000.0)),
        max_position_embeddings=hyper("context_length"), tie_word_embeddings="output.weight" not in tensors)
    try:
        return ModelConfig(**fields, **execution)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{file.path} metadata: {e}") from None


def tensor_infos(file: GGUFFile, config: ModelConfig) -> dict[str, TensorInfo]:
    """Every tensor of the file, under its HF name where it has one (else its GGUF name, which model_dir then reports
    as unexpected): shape as read (`[out, in]`, float32) and size as stored. An unsupported type is an error."""
    to_hf = {name.gguf_name: name.hf_name for name in param_names(config)}
    unsupported = sorted(f"{t.name} ({t.tensor_type.name})" for t in file.reader.tensors
                         if t.tensor_type not in SUPPORTED_TYPES)
    if unsupported:
        raise ModelDirError(f"{file.path} has tensors in types this loader does not read: {unsupported[:4]}"
                            f"{' ...' if len(unsupported) > 4 else ''}; supported: "
                            f"{[t.name for t in SUPPORTED_TYPES]}.")
    return {to_hf.get(t.name, t.name): TensorInfo(t.name, file.path, np.dtype(np.float32),
                                                  tuple(int(d) for d in reversed(t.shape)), int(t.n_bytes))
            for t in file.reader.tensors}


def _as_written(value: float) -> float:
    """A float the file stores as float32 (1e-5 becomes 9.99999975e-06), back as the shortest decimal it rounds from."""
    return float(str(np.float32(value)))
