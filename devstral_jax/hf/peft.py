"""LoRA adapters as PEFT directories (`adapter_model.safetensors` + `adapter_config.json`).

That is what `peft.PeftModel.from_pretrained(base, dir)` loads onto the original base model and what
vLLM serves with `--enable-lora --lora-modules name=dir`. PEFT stores `lora_A.weight` `[r, in]` and
`lora_B.weight` `[out, r]` under `base_model.model.<module>`; ours are A `[in, r]` and B `[r, out]`,
the same numbers transposed, and both scale by alpha / r.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from devstral_jax import lora
from devstral_jax.atomic import atomic_directory
from devstral_jax.config import ModelConfig
from devstral_jax.errors import AdapterError
from devstral_jax.hf import param_map
from devstral_jax.hf.safetensors_io import SafetensorsWriter, read_header, read_tensor
from devstral_jax.model import Transformer

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight")


@dataclasses.dataclass(frozen=True)
class Adapter:
    """LoRA weights by HF module name (`model.layers.3.self_attn.q_proj`): A `[in, r]`, B `[r, out]`, float32."""

    rank: int
    alpha: float
    dropout: float
    weights: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def targets(self) -> list[str]:
        return sorted({module.rsplit(".", 1)[-1] for module in self.weights})

    def delta(self, module: str) -> np.ndarray | None:
        """What the adapter adds to the module's HF `[out, in]` weight, or None if it does not adapt it."""
        if module not in self.weights:
            return None
        return lora.delta(*self.weights[module], self.scale).T


def adapter_from_model(model: Transformer) -> Adapter:
    """The LoRA weights of our model (stacked or not), one `[in, r]`/`[r, out]` pair per adapted HF module."""
    config = model.config
    if not config.lora_rank:
        raise AdapterError("The model has no LoRA adapters (lora_rank is 0).")
    weights = {}
    for name in param_map.param_names(config):
        module, _ = param_map.owner(model, name)
        if name.lora_target is None or getattr(module, "lora", None) is None:
            continue
        a, b = module.lora.a[...], module.lora.b[...]
        if param_map.is_stacked(model, name):
            a, b = a[name.layer], b[name.layer]  # sliced on the device: only this layer comes to the host
        weights[name.module] = (np.asarray(a, np.float32), np.asarray(b, np.float32))
    return Adapter(config.lora_rank, config.lora_alpha, config.lora_dropout, weights)


def check_adapter(adapter: Adapter, config: ModelConfig) -> None:
    """Every adapted module exists in the base and A/B fit its weight's shape; raises AdapterError otherwise."""
    shapes = param_map.hf_shapes(config)
    adaptable = {name.module: shapes[name.hf_name] for name in param_map.param_names(config) if name.lora_target}
    for module, (a, b) in adapter.weights.items():
        if module not in adaptable:
            raise AdapterError(f"The adapter adapts {module}, which the base model ({config.num_layers} layers) "
                               "does not have.")
        out_features, in_features = adaptable[module]
        if a.shape != (in_features, adapter.rank) or b.shape != (adapter.rank, out_features):
            raise AdapterError(f"The adapter's {module} has lora_A {a.T.shape} and lora_B {b.T.shape}; the base's "
                               f"[{out_features}, {in_features}] weight needs [{adapter.rank}, {in_features}] and "
                               f"[{out_features}, {adapter.rank}].")


def save_adapter(adapter: Adapter, out_dir: str | os.PathLike, base_model: str, *, readme: str | None = None,
                 overwrite: bool = False) -> None:
    """Writes a PEFT LoRA directory, atomically (it appears complete or not at all)."""
    tensors = []
    for module, (a, b) in sorted(adapter.weights.items(), key=lambda item: _module_order(item[0])):
        tensors.append((f"base_model.model.{module}.lora_A.weight", np.ascontiguousarray(a.T, np.float32)))
        tensors.append((f"base_model.model.{module}.lora_B.weight", np.ascontiguousarray(b.T, np.float32)))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": adapter.rank, "lora_alpha": adapter.alpha, "lora_dropout": adapter.dropout,
        "target_modules": adapter.targets, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
    }
    with atomic_directory(out_dir, overwrite) as tmp:
        with SafetensorsWriter(os.path.join(tmp, WEIGHTS_FILE), [(n, t.shape, t.dtype) for n, t in tensors],
                               metadata={"format": "pt"}) as writer:
            for name, tensor in tensors:
                writer.write(name, tensor)
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
        if readme is not None:
            with open(os.path.join(tmp, "README.md"), "w") as f:
                f.write(readme)


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Reads a PEFT LoRA directory (ours or PEFT's own), checking it is plain LoRA that we can merge exactly."""
    path = os.fspath(path)
    try:
        with open(os.path.join(path, CONFIG_FILE)) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise AdapterError(f"No {CONFIG_FILE} in {path}: not a PEFT adapter directory.") from None
    except ValueError as e:  # not JSON, or not UTF-8
        raise AdapterError(f"{path}/{CONFIG_FILE} is not valid JSON: {e}.") from None
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{path}/{CONFIG_FILE}: peft_type is {config.get('peft_type')!r}; only LORA is supported.")
    for key, plain in (("use_rslora", False), ("use_dora", False), ("fan_in_fan_out", False), ("bias", "none")):
        if config.get(key, plain) != plain:
            raise AdapterError(f"{path}/{CONFIG_FILE}: {key}={config[key]!r} is not supported (only {plain!r}).")
    if config.get("modules_to_save") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterError(f"{path}/{CONFIG_FILE}: modules_to_save / rank_pattern / alpha_pattern are not supported.")
    weights_file = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights_file):
        raise AdapterError(f"No {WEIGHTS_FILE} in {path} (a .bin adapter must be converted to safetensors first).")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, info in read_header(weights_file).items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise AdapterError(f"{weights_file}: unexpected tensor {key} (expected base_model.model.<module>."
                               "lora_A.weight / lora_B.weight).")
        pairs.setdefault(match["module"], {})[match["which"]] = read_tensor(info).astype(np.float32)
    weights = {}
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{weights_file}: {module} has lora_{next(iter(pair))} but not its partner.")
        weights[module] = (pair["A"].T, pair["B"].T)
    return Adapter(int(config["r"]), float(config["lora_alpha"]), float(config.get("lora_dropout", 0.0)), weights)


def _module_order(module: str) -> tuple:
    """Sorts `model.layers.10...` after `model.layers.9...`."""
    return tuple(int(part) if part.isdigit() else part for part in module.split("."))
