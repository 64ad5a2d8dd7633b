"""A model directory on disk, in either format the Devstral repos ship, seen as HF tensors.

- Hugging Face: `config.json` + `model.safetensors`, or `model-0000k-of-0000n.safetensors` shards listed
  in `model.safetensors.index.json`.
- Mistral consolidated: `params.json` + `consolidated.safetensors` (q/k rows in interleaved RoPE order).

Opening reads only the config and the safetensors headers, and checks every tensor's presence, shape and
dtype against the config, so a bad checkpoint fails in seconds, naming the tensor and file, before a byte
of weights is read. `read` then returns one tensor at a time in HF names, layout and RoPE order.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any

import numpy as np

from devstral_jax.config import ConfigError, ModelConfig, load_hf_config
from devstral_jax.errors import ModelDirError
from devstral_jax.hf import consolidated
from devstral_jax.hf.param_map import ParamName, hf_shapes, param_names
from devstral_jax.hf.safetensors_io import TensorInfo, read_header, read_tensor

FORMATS = ("auto", "hf", "consolidated")
HF_INDEX = "model.safetensors.index.json"
_FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64")
_MAX_LISTED = 8  # problems listed in one error before "... and N more"


@dataclasses.dataclass(frozen=True)
class ModelDir:
    path: str
    format: str  # "hf" | "consolidated"
    config: ModelConfig
    names: list[ParamName]  # every tensor, in HF order
    stored: dict[str, TensorInfo]  # HF name -> where its bytes are (under its stored name)

    def read(self, name: ParamName) -> np.ndarray:
        """One tensor in HF layout and RoPE order, in its stored dtype; nothing else is read or kept."""
        tensor = read_tensor(self.stored[name.hf_name])
        heads = consolidated.rope_heads(name, self.config)
        if self.format == "consolidated" and heads:
            tensor = consolidated.to_rotate_half(tensor, heads)
        return tensor

    @property
    def nbytes(self) -> int:
        return sum(info.nbytes for info in self.stored.values())

    @property
    def tokenizer_file(self) -> str | None:
        """The directory's Tekken tokenizer (`tekken.json`), if it ships one."""
        path = os.path.join(self.path, "tekken.json")
        return path if os.path.isfile(path) else None


def open_model_dir(path: str | os.PathLike, format: str = "auto", **execution: Any) -> ModelDir:
    """Reads the config and the safetensors headers of a model directory and checks them against each other.

    `format` is "hf", "consolidated", or "auto" (HF when its files are present, else consolidated: the
    Devstral repos ship both). `execution` sets ModelConfig's execution fields (dtype, storage, LoRA...).
    """
    path = os.fspath(path)
    if format not in FORMATS:
        raise ModelDirError(f"Unknown checkpoint format {format!r}; choose one of {FORMATS}.")
    if not os.path.isdir(path):
        raise ModelDirError(f"No model directory at {path}.")
    has_hf = os.path.isfile(os.path.join(path, "config.json")) and bool(_hf_files(path))
    has_consolidated = os.path.isfile(os.path.join(path, "params.json")) and bool(_consolidated_files(path))
    if format == "auto":
        if not (has_hf or has_consolidated):
            raise ModelDirError(f"{path} holds neither a Hugging Face checkpoint (config.json + model*.safetensors) "
                                  "nor a Mistral consolidated one (params.json + consolidated*.safetensors).")
        format = "hf" if has_hf else "consolidated"
    if format == "hf":
        config, config_file = load_hf_config(path, **execution), "config.json"
        stored = _hf_tensors(path)
    else:
        config, config_file = _params_config(path, execution), "params.json"
        stored = _consolidated_tensors(path, config)
    names = param_names(config)
    stored_names = {n.hf_name: n.hf_name if format == "hf" else n.consolidated_name for n in names}
    _check(path, config_file, config, stored, stored_names)
    return ModelDir(path, format, config, names, stored)


def _hf_files(path: str) -> list[str]:
    return sorted(glob.glob(os.path.join(path, "model*.safetensors")))


def _consolidated_files(path: str) -> list[str]:
    return sorted(glob.glob(os.path.join(path, "consolidated*.safetensors")))


def _params_config(path: str, execution: dict[str, Any]) -> ModelConfig:
    try:
        with open(os.path.join(path, "params.json")) as f:
            params = json.load(f)
    except ValueError as e:  # not JSON, or not UTF-8
        raise ConfigError(f"{path}/params.json is not valid JSON: {e}.") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}/params.json must hold a JSON object.")
    return consolidated.config_from_params(params, **execution)


def _headers(files: list[str]) -> dict[str, TensorInfo]:
    """The tensors of several safetensors files; a name stored twice is an error."""
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        for name, info in read_header(file).items():
            if name in tensors:
                raise ModelDirError(f"Tensor {name} is stored twice: in {tensors[name].file} and {file}.")
            tensors[name] = info
    return tensors


def _hf_tensors(path: str) -> dict[str, TensorInfo]:
    """Shards named by the index (every one of which must exist and hold what it says), else model.safetensors."""
    index_path = os.path.join(path, HF_INDEX)
    if not os.path.isfile(index_path):
        single = os.path.join(path, "model.safetensors")
        if not os.path.isfile(single):
            raise ModelDirError(f"{path} has neither {HF_INDEX} nor model.safetensors.")
        return _headers([single])
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise ModelDirError(f"{index_path} is not a safetensors index (a JSON object with a 'weight_map'): "
                              f"{e!r}.") from None
    files = sorted(set(weight_map.values()))
    absent = [file for file in files if not os.path.isfile(os.path.join(path, file))]
    if absent:
        raise ModelDirError(f"{index_path} lists shard file(s) that do not exist: {absent}.")
    tensors = _headers([os.path.join(path, file) for file in files])
    for name, file in weight_map.items():
        if name not in tensors or os.path.basename(tensors[name].file) != file:
            raise ModelDirError(f"{index_path} puts tensor {name} in {file}, which does not hold it.")
    unindexed = sorted(set(tensors) - set(weight_map))
    if unindexed:
        raise ModelDirError(f"Tensor {unindexed[0]} (in {tensors[unindexed[0]].file}) is missing from {index_path}.")
    return tensors


def _consolidated_tensors(path: str, config: ModelConfig) -> dict[str, TensorInfo]:
    """The consolidated files' tensors under their HF names; names with no HF counterpart keep theirs (and
    are reported as unexpected)."""
    to_hf = {name.consolidated_name: name.hf_name for name in param_names(config)}
    return {to_hf.get(name, name): info for name, info in _headers(_consolidated_files(path)).items()}


def _check(path: str, config_file: str, config: ModelConfig, stored: dict[str, TensorInfo],
           stored_names: dict[str, str]) -> None:
    """Every expected tensor present with the shape the config implies and a float dtype; nothing extra.
    Problems name tensors as the files do (`stored_names`: HF name -> name in this format)."""
    expected = hf_shapes(config)
    problems = [f"missing tensor {stored_names[name]}" for name in expected if name not in stored]
    problems += [f"unexpected tensor {info.name} in {os.path.basename(info.file)}"
                 for name, info in stored.items() if name not in expected]
    for name, shape in expected.items():
        info = stored.get(name)
        if info is not None and info.shape != shape:
            problems.append(f"tensor {info.name} in {os.path.basename(info.file)} has shape {info.shape}; "
                            f"{config_file} implies {shape}")
        elif info is not None and info.dtype.name not in _FLOAT_DTYPES:
            problems.append(f"tensor {info.name} in {os.path.basename(info.file)} has dtype {info.dtype.name}; "
                            "expected floating-point weights")
    if problems:
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise ModelDirError(f"The checkpoint in {path} does not match its {config_file} "
                              f"({config.num_layers} layers, hidden {config.hidden_size}):\n  "
                              + "\n  ".join(problems[:_MAX_LISTED]) + more)
