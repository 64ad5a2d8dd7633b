"""GGUF files for llama.cpp and Ollama, written with the `gguf` package as llama.cpp's own converter would.

Devstral is the `llama` architecture to llama.cpp: the same metadata keys (with `key_length` = head_dim,
since Devstral's 32 x 128 query width differs from its hidden size 5120), tensors named `blk.N.attn_q`
etc. (the `gguf` package's own name map), and q/k rows in interleaved RoPE order (llama.cpp rotates
pairs), i.e. HF's weights permuted back as in Mistral's consolidated format. Norms stay float32; the
matrices are F16 or Q8_0 (blocks of 32 weights sharing one f16 scale, 8.5 bits per weight), written here;
the K-quants (Q4_K_M ~4.9, Q5_K_M ~5.7, Q6_K ~6.6 bits per weight: a 24B model in 14, 17 or 19 GB) are made
from the F16 file by llama.cpp's own quantizer (llama_cpp.py), which also picks the per-tensor mix the
`_M` types stand for. The tokenizer is Tekken as llama.cpp reads it: a byte-level BPE (`gpt2` model,
`tekken` pre-tokenizer) whose tokens, types and merges come from `tekken.json` through gguf's
`MistralVocab`, with the instruct format as `tokenizer.chat_template` (chat_template.py). A Llama-family model
exported from a GGUF base (SmolLM2) takes its base's tokenizer metadata (vocabulary, merges, special ids,
chat template) as it is; a model with tied embeddings has no `output.weight` (llama.cpp then uses
`token_embd`).

Tensors arrive as a stream (see export.py), so a 24B model converts with a few tensors in memory; the
file is written under a temporary name and renamed when complete (a K-quant also needs the F16 file's
size, 2 bytes per parameter, free beside it while it is made).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import gguf
import numpy as np
from gguf.vocab import MistralVocab
from tqdm import tqdm

from devstral_jax.atomic import atomic_file
from devstral_jax.config import ModelConfig
from devstral_jax.hf import consolidated, llama_cpp
from devstral_jax.hf.chat_template import jinja_template
from devstral_jax.hf.export import ExportError
from devstral_jax.hf.param_map import hf_shapes, param_names
from devstral_jax.tokenizers.tekken import tekken_config

# Written here: our name -> (tensor type of the matrices, llama.cpp's file type).
OUTTYPES = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
GGUF_TYPES = (*OUTTYPES, *llama_cpp.K_QUANTS)


def save_gguf(path: str | os.PathLike, config: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]], *,
              tokenizer: str, outtype: str = "q8_0", name: str = "devstral-elixir", overwrite: bool = False,
              progress: bool = True) -> None:
    """Writes a GGUF file of type `outtype` (one of GGUF_TYPES) from an HF tensor stream (`param_names` order)
    and a tokenizer: a `tekken.json`, or a GGUF file whose tokenizer metadata (chat template included) is copied."""
    if outtype not in GGUF_TYPES:
        raise ExportError(f"Unknown GGUF type {outtype!r}; choose one of {list(GGUF_TYPES)}.")
    if config.rope_scaling is not None:
        raise ExportError("GGUF export of a model with RoPE scaling (Llama 3.1+) is not implemented; export the "
                          "merged directory and convert it with llama.cpp's convert_hf_to_gguf.py.")
    if not tokenizer.endswith(".gguf"):
        check_tokenizer(tokenizer, config.vocab_size)
    if config.sliding_window is not None:
        logging.warning("llama.cpp's llama architecture has no sliding window: the GGUF attends over the whole "
                        "context (exact only up to sliding_window=%d tokens).", config.sliding_window)
    if outtype in llama_cpp.K_QUANTS:
        llama_cpp.require()  # before the F16 file is written, not after
    with atomic_file(path, overwrite) as tmp:
        if outtype in OUTTYPES:
            _write_gguf(tmp, config, tensors, tokenizer, outtype, name, progress)
        else:
            with tempfile.TemporaryDirectory(dir=os.path.dirname(tmp), prefix=".f16-") as work:
                f16 = os.path.join(work, "model-f16.gguf")
                _write_gguf(f16, config, tensors, tokenizer, "f16", name, progress)
                llama_cpp.quantize(f16, tmp, outtype)


def _write_gguf(path: str, config: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]], tokenizer: str,
                outtype: str, name: str, progress: bool) -> None:
    matrix_type, file_type = OUTTYPES[outtype]
    names = param_names(config)
    shapes = hf_shapes(config)
    gguf_names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_layers)
    types = {name.hf_name: _tensor_type(shapes[name.hf_name], matrix_type) for name in names}
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _add_metadata(writer, config, name, file_type)
        if tokenizer.endswith(".gguf"):
            _copy_gguf_tokenizer(writer, tokenizer, config.vocab_size)
        else:
            _add_tokenizer(writer, tokenizer)
        for n in names:
            kind = types[n.hf_name]
            writer.add_tensor_info(_gguf_name(gguf_names, n.module), *_stored_layout(shapes[n.hf_name], kind),
                                   raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        stream = iter(tensors)
        for n in tqdm(names, desc=f"writing {name} {outtype.upper()}", disable=not progress):
            hf_name, tensor = next(stream, (None, None))
            if hf_name != n.hf_name:
                raise ExportError(f"The tensor stream gave {hf_name} where {n.hf_name} belongs.")
            writer.write_tensor_data(_encode(hf_name, tensor, consolidated.rope_heads(n, config), types[hf_name]))
    finally:
        writer.close()


_NUMPY = {gguf.GGMLQuantizationType.F32: np.dtype(np.float32), gguf.GGMLQuantizationType.F16: np.dtype(np.float16)}


def _tensor_type(shape: tuple[int, ...], matrix_type: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """Vectors (norms) stay F32; a matrix whose rows do not split into Q8_0 blocks falls back to F16 (as in
    llama.cpp's converter)."""
    if len(shape) == 1:
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[matrix_type]
    return matrix_type if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def _stored_layout(shape: tuple[int, ...], kind: gguf.GGMLQuantizationType) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, numpy dtype, bytes) of a tensor as written: Q8_0 blocks are raw uint8 rows."""
    if kind == gguf.GGMLQuantizationType.Q8_0:
        byte_shape = gguf.quant_shape_to_byte_shape(shape, kind)
        return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape))
    return shape, _NUMPY[kind], int(np.prod(shape)) * _NUMPY[kind].itemsize


def _gguf_name(name_map: gguf.TensorNameMap, module: str) -> str:
    gguf_module = name_map.get_name(module)
    if gguf_module is None:
        raise ExportError(f"gguf has no llama tensor name for {module}.")
    return f"{gguf_module}.weight"


def _encode(name: str, tensor: np.ndarray, rope_heads: int | None, kind: gguf.GGMLQuantizationType) -> np.ndarray:
    """HF `[out, in]` tensor -> GGUF bytes/values: q/k rows interleaved, then cast or quantized."""
    values = np.asarray(tensor, np.float32)
    if rope_heads:
        values = consolidated.to_interleaved(values, rope_heads)
    encoded = gguf.quants.quantize(values, kind) if kind == gguf.GGMLQuantizationType.Q8_0 else \
        values.astype(_NUMPY[kind])
    if not np.isfinite(values).all() or (kind == gguf.GGMLQuantizationType.F16 and not np.isfinite(encoded).all()):
        raise ExportError(f"Tensor {name} has non-finite values (or overflows {kind.name}); refusing to export it.")
    return encoded


# GGUFWriter method -> the ModelConfig field it writes: llama.cpp's `llama.*` hyperparameters.
_HYPERPARAMETERS = {
    "add_block_count": "num_layers", "add_context_length": "max_position_embeddings",
    "add_embedding_length": "hidden_size", "add_feed_forward_length": "intermediate_size",
    "add_head_count": "num_heads", "add_head_count_kv": "num_kv_heads", "add_key_length": "head_dim",
    "add_value_length": "head_dim", "add_rope_dimension_count": "head_dim", "add_rope_freq_base": "rope_theta",
    "add_layer_norm_rms_eps": "rms_norm_eps", "add_vocab_size": "vocab_size",
}


def _add_metadata(writer: gguf.GGUFWriter, config: ModelConfig, name: str, file_type: int) -> None:
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.MODEL)
    for method, field in _HYPERPARAMETERS.items():
        getattr(writer, method)(getattr(config, field))
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def check_tokenizer(tekken_file: str, vocab_size: int) -> None:
    """llama.cpp needs one token per row of the embedding; raises ExportError otherwise."""
    tokens = tekken_config(tekken_file)["default_vocab_size"]
    if tokens != vocab_size:
        raise ExportError(f"{tekken_file} has {tokens} tokens but the model's vocabulary is {vocab_size}; "
                          "llama.cpp needs them equal.")


def _add_tokenizer(writer: gguf.GGUFWriter, tekken_file: str) -> None:
    """Tekken as llama.cpp's converter writes it (gguf's MistralVocab reads a directory holding tekken.json)."""
    with tempfile.TemporaryDirectory() as directory:
        shutil.copy(tekken_file, os.path.join(directory, "tekken.json"))
        vocab = MistralVocab(Path(directory))
        tokens, scores, token_types = zip(*vocab.all_tokens())
        merges = vocab.extract_vocab_merges_from_model()
    writer.add_tokenizer_model(vocab.gguf_tokenizer_model)
    writer.add_tokenizer_pre("tekken")
    writer.add_token_list(list(tokens))
    writer.add_token_scores([float(score) for score in scores])
    writer.add_token_types(list(token_types))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)
    writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(jinja_template(tekken_file))


def _copy_gguf_tokenizer(writer: gguf.GGUFWriter, gguf_file: str, vocab_size: int) -> None:
    """Every `tokenizer.*` key of a GGUF file (the base's: vocabulary, merges, special ids, chat template) as it is."""
    fields = {key: field for key, field in gguf.GGUFReader(gguf_file).fields.items() if key.startswith("tokenizer.")}
    tokens = fields["tokenizer.ggml.tokens"].contents() if "tokenizer.ggml.tokens" in fields else []
    if len(tokens) != vocab_size:
        raise ExportError(f"{gguf_file} has {len(tokens)} tokens but the model's vocabulary is {vocab_size}; "
                          "llama.cpp needs them equal.")
    for key, field in fields.items():
        array = field.types[0] == gguf.GGUFValueType.ARRAY
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=field.types[-1] if array else None)
