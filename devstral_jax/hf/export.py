"""Merged Hugging Face model directories: what transformers, vLLM, TGI and Bumblebee load as they are.

A merged export is a stream of HF tensors (`(hf_name, [out, in] array)`, in `param_names` order) with the
LoRA update already added, written to `model-0000k-of-0000n.safetensors` shards of at most
`max_shard_bytes` plus the index, `config.json` (MistralForCausalLM or LlamaForCausalLM, the config's
family, with the `transformers_version` that wrote it), `generation_config.json`, the tokenizer files (Tekken,
and `tokenizer.json` + config + chat template made from it, see tokenizer_files.py, when the base has none; a
Llama base's tokenizer.json, or the one transformers builds from a GGUF base) and a model card. Two sources of
such streams:

- `merged_checkpoint_tensors(base, adapter)`: the original base checkpoint, read tensor by tensor, plus
  the adapter: exact (the bf16 base, not its NF4 copy) and bounded by a few tensors of host memory, so
  a 24B model exports on any machine;
- `param_map.state_dict(model, merge_lora=True)`: a model in memory (small models, tests).

The directory is written under a temporary name and renamed when complete: a failure (a NaN in a
weight, a full disk) leaves no output behind.

Bumblebee reads the same directory only for models whose head_dim is hidden_size / num_heads: its Mistral
loader has no head_dim option and keeps random weights where a tensor's shape disagrees
(`bumblebee_problem`).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Iterable, Iterator, Sequence

import ml_dtypes
import numpy as np
import transformers
from tqdm import tqdm

from devstral_jax.atomic import atomic_directory
from devstral_jax.config import ModelConfig, to_hf_config
from devstral_jax.errors import ExportError
from devstral_jax.hf.model_dir import HF_INDEX, ModelDir
from devstral_jax.hf.param_map import hf_shapes
from devstral_jax.hf.peft import Adapter
from devstral_jax.hf.safetensors_io import SafetensorsWriter
from devstral_jax.hf.tokenizer_files import save_hf_tokenizer
from devstral_jax.tokenizers.hf import transformers_tokenizer
from devstral_jax.tokenizers.tekken import PACKAGED_TEKKEN

MAX_SHARD_BYTES = 5 * 10**9  # the Hub's (and transformers' save_pretrained) customary shard size
DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}
# Tokenizer and prompt files of a Devstral/Mistral repo, copied along when the base has them.
TOKENIZER_FILES = ("tekken.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json", "SYSTEM_PROMPT.txt")


def merged_checkpoint_tensors(base: ModelDir, adapter: Adapter | None) -> Iterator[tuple[str, np.ndarray]]:
    """The base checkpoint's tensors in HF order, each plus its LoRA update (float32 where adapted)."""
    for name in base.names:
        tensor = base.read(name)
        delta = adapter.delta(name.module) if adapter is not None else None
        yield name.hf_name, tensor if delta is None else tensor.astype(np.float32) + delta


def tokenizer_files(base_dir: str) -> list[str]:
    """The base directory's tokenizer files (the packaged Tekken when it has none)."""
    found = [os.path.join(base_dir, f) for f in TOKENIZER_FILES if os.path.isfile(os.path.join(base_dir, f))]
    return found or [str(PACKAGED_TEKKEN)]


def gguf_tokenizer_files(gguf_file: str, directory: str) -> tuple[list[str], str]:
    """A GGUF base's tokenizer as the files a merged export ships (written into `directory`): what transformers builds
    from the GGUF's metadata (tokenizer.json, tokenizer_config.json, the chat template), and a
    generation_config.json with its BOS/EOS ids. Returns (tokenizer files, generation config file)."""
    tokenizer = transformers_tokenizer(gguf_file)
    tokenizer.save_pretrained(directory)
    generation_config = os.path.join(directory, "generation_config.json")
    _write_json(generation_config, {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id})
    files = [os.path.join(directory, f) for f in TOKENIZER_FILES if os.path.isfile(os.path.join(directory, f))]
    return files, generation_config


def save_merged(out_dir: str | os.PathLike, config: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]], *,
                dtype: str = "bfloat16", tokenizer: Sequence[str] = (str(PACKAGED_TEKKEN),),
                generation_config: str | None = None, readme: str | None = None,
                max_shard_bytes: int = MAX_SHARD_BYTES, overwrite: bool = False, progress: bool = True) -> None:
    """Writes a `MistralForCausalLM` / `LlamaForCausalLM` directory from an HF tensor stream; see the module docstring.

    `tokenizer` lists the files to ship beside the weights (see `tokenizer_files`; default: Tekken);
    `generation_config` is the base's generation_config.json to copy (default: just BOS/EOS ids).
    """
    if dtype not in DTYPES:
        raise ExportError(f"Unknown export dtype {dtype!r}; choose one of {sorted(DTYPES)}.")
    out_dtype = DTYPES[dtype]
    shapes = hf_shapes(config)
    shards = _plan_shards(shapes, out_dtype.itemsize, max_shard_bytes)
    total = sum(int(np.prod(s)) for s in shapes.values()) * out_dtype.itemsize
    with atomic_directory(out_dir, overwrite) as tmp, \
            tqdm(total=total, unit="B", unit_scale=True, desc=f"writing {os.path.basename(out_dir)}",
                 disable=not progress) as bar:
        stream = iter(tensors)
        weight_map = {}
        for k, names in enumerate(shards):
            file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            specs = [(name, shapes[name], out_dtype) for name in names]
            with SafetensorsWriter(os.path.join(tmp, file), specs, metadata={"format": "pt"}) as writer:
                for expected in names:
                    name, tensor = next(stream, (None, None))
                    if name != expected:
                        raise ExportError(f"The tensor stream gave {name} where {expected} belongs.")
                    writer.write(name, _checked_cast(name, tensor, out_dtype))
                    weight_map[name] = file
                    bar.update(int(np.prod(shapes[name])) * out_dtype.itemsize)
        _write_json(os.path.join(tmp, HF_INDEX), {"metadata": {"total_size": total}, "weight_map": weight_map})
        _write_json(os.path.join(tmp, "config.json"),
                    {**to_hf_config(config, torch_dtype=dtype), "transformers_version": transformers.__version__})
        if generation_config:
            shutil.copy(generation_config, os.path.join(tmp, "generation_config.json"))
        else:
            _write_json(os.path.join(tmp, "generation_config.json"), {"bos_token_id": 1, "eos_token_id": 2})
        shipped = {"tekken.json" if file == str(PACKAGED_TEKKEN) else os.path.basename(file): file
                   for file in tokenizer}
        if "tekken.json" in shipped and "tokenizer.json" not in shipped:
            save_hf_tokenizer(shipped["tekken.json"], tmp)
        for shipped_as, file in shipped.items():
            shutil.copy(file, os.path.join(tmp, shipped_as))
        if readme is not None:
            with open(os.path.join(tmp, "README.md"), "w") as f:
                f.write(readme)


def bumblebee_problem(config: ModelConfig) -> str | None:
    """Why Bumblebee cannot load this model from a merged directory, or None if it can."""
    if config.head_dim * config.num_heads != config.hidden_size:
        return (f"Bumblebee's Mistral loader derives head_dim from hidden_size / num_heads = "
                f"{config.hidden_size // config.num_heads}, but this model's head_dim is {config.head_dim}; it would "
                "keep random weights for the attention projections. Serve it with vLLM, transformers or a GGUF until "
                "Bumblebee supports head_dim.")
    return None


def _plan_shards(shapes: dict[str, tuple[int, ...]], itemsize: int, max_shard_bytes: int) -> list[list[str]]:
    """Consecutive tensors packed into shards of at most `max_shard_bytes` (a larger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _checked_cast(name: str, tensor: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The tensor in the export dtype; NaN/inf (diverged training, or a float16 overflow) is an error, not data."""
    cast = np.asarray(tensor).astype(dtype)
    if not np.isfinite(cast).all():
        raise ExportError(f"Tensor {name} has non-finite values in {dtype.name}; refusing to export it.")
    return cast


def _write_json(path: str, value: dict) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
