r"""Exports a fine-tune for serving: PEFT adapter, merged HF model, GGUF, each with a model card.

    python launch/export.py --base=/models/Devstral-Small-2507 --adapter=/runs/elixir/adapter \
        --out=/runs/elixir/export [--config=configs/export.py] [--config.formats=peft,merged,gguf_q8_0] \
        [--manifest=/data/elixir/manifest.json] [--eval_results=/runs/elixir/eval.json]

`--base` is the original checkpoint (HF or Mistral consolidated directory, or GGUF file); the merged
weights are base + LoRA, computed tensor by tensor from it (never from the NF4 copy used in training), so
host memory stays a few tensors even for the 24B model. The LoRA comes from a PEFT directory (`--adapter`)
or a training workdir (`--workdir`: the adapters of its `--checkpoint`, by default the one with the best
validation loss, the model the run learnt best). Outputs: <out>/adapter, <out>/merged, <out>/<name>-<type>.gguf.
"""

from __future__ import annotations

import json
import os
import tempfile

from absl import flags
from ml_collections import config_flags

from devstral_jax.cli import run
from devstral_jax.errors import ConfigError, ExportError, FlagError
from devstral_jax.hf import model_card
from devstral_jax.hf.export import gguf_tokenizer_files, merged_checkpoint_tensors, save_merged, tokenizer_files
from devstral_jax.hf.gguf_export import save_gguf
from devstral_jax.hf.model_dir import ModelDir, open_model_dir
from devstral_jax.hf.peft import Adapter, adapter_from_model, check_adapter, load_adapter, save_adapter
from devstral_jax.tokenizer import PACKAGED_TEKKEN
from devstral_jax.train.trainer import is_workdir, restore_trained_model

_DEFAULT_CONFIG = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                                                "export.py"))
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "ml_collections config file (configs/export.py).")
_BASE = flags.DEFINE_string("base", None, "The base model: a directory (HF or Mistral consolidated) or a GGUF file.")
_ADAPTER = flags.DEFINE_string("adapter", None, "A PEFT LoRA adapter directory.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (launch/train.py) to take the LoRA from.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_MANIFEST = flags.DEFINE_string("manifest", None, "The training data manifest.json, summarised in the model card.")
_EVAL = flags.DEFINE_string("eval_results", None, "Evaluation results (JSON), summarised in the model card.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "With --workdir: the checkpoint to export: best (lowest "
                                  "validation loss), latest, or a step number.")
flags.mark_flags_as_required(["base", "out"])

FORMATS = ("peft", "merged", "gguf_f16", "gguf_q8_0")


def _adapter(base: ModelDir) -> Adapter:
    """The LoRA to export, from --adapter or --workdir, checked against the base."""
    if bool(_ADAPTER.value) == bool(_WORKDIR.value):
        raise FlagError("Pass exactly one of --adapter (a PEFT directory) and --workdir (a training workdir).")
    if _ADAPTER.value:
        adapter = load_adapter(_ADAPTER.value)
    else:
        if not is_workdir(_WORKDIR.value):
            raise FlagError(f"--workdir={_WORKDIR.value} is not a training workdir (it has no checkpoints/).")
        model, _, meta = restore_trained_model(_WORKDIR.value, _CHECKPOINT.value)
        print(f"checkpoint: {meta['checkpoint']['why']} of {_WORKDIR.value}")
        adapter = adapter_from_model(model)
    check_adapter(adapter, base.config)  # every adapted module exists in the base, with matching shapes
    return adapter


def _merged_tokenizer(base: ModelDir, scratch: str) -> tuple[list[str], str | None]:
    """(tokenizer files, generation_config.json or None) that the merged export ships: the base directory's, or for
    a GGUF base, its tokenizer written out as Hugging Face files into `scratch`."""
    if base.format == "gguf":
        return gguf_tokenizer_files(base.path, scratch)
    generation_config = os.path.join(base.path, "generation_config.json")
    return tokenizer_files(base.path), generation_config if os.path.isfile(generation_config) else None


def _gguf_tokenizer(base: ModelDir) -> str:
    """What a GGUF export's tokenizer metadata comes from: a GGUF base's own, a tekken.json, or the packaged Tekken
    (Mistral family)."""
    if base.format == "gguf":
        return base.path
    if base.tokenizer_file or base.config.family == "mistral":
        return base.tokenizer_file or str(PACKAGED_TEKKEN)
    raise ExportError(f"GGUF export of a {base.config.family}-family model takes the tokenizer from a GGUF base; "
                      f"{base.path} is a directory. Export 'merged' and convert it with llama.cpp's "
                      "convert_hf_to_gguf.py.")


def _read_json(path: str | None, what: str) -> dict | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise FlagError(f"Cannot read the {what} {path}: {e}") from None


def export(config) -> None:
    formats = [f.strip() for f in config.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ConfigError(f"--config.formats: unknown format(s) {unknown}; choose from {list(FORMATS)}.")
    base = open_model_dir(_BASE.value)
    adapter = _adapter(base)
    base_model = config.base_model or os.path.basename(os.path.normpath(base.path)).removesuffix(".gguf")
    card = dict(base_model=base_model, adapter=adapter, manifest=_read_json(_MANIFEST.value, "data manifest"),
                evaluation=_read_json(_EVAL.value, "evaluation results"))
    out = _OUT.value
    if "peft" in formats:
        save_adapter(adapter, os.path.join(out, "adapter"), base_model, overwrite=config.overwrite,
                     readme=model_card.render(base.config, kind="adapter", **card))
        print(f"wrote {os.path.join(out, 'adapter')}")
    if "merged" in formats:
        with tempfile.TemporaryDirectory() as scratch:
            tokenizer, generation_config = _merged_tokenizer(base, scratch)
            save_merged(os.path.join(out, "merged"), base.config, merged_checkpoint_tensors(base, adapter),
                        dtype=config.dtype, tokenizer=tokenizer, generation_config=generation_config,
                        readme=model_card.render(base.config, kind="merged", **card),
                        max_shard_bytes=int(config.max_shard_gb * 1e9), overwrite=config.overwrite)
        print(f"wrote {os.path.join(out, 'merged')}")
    for outtype in (f.removeprefix("gguf_") for f in formats if f.startswith("gguf_")):
        path = os.path.join(out, f"{config.name}-{outtype}.gguf")
        save_gguf(path, base.config, merged_checkpoint_tensors(base, adapter),
                  tokenizer=_gguf_tokenizer(base), outtype=outtype, name=config.name,
                  overwrite=config.overwrite)
        print(f"wrote {path}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise FlagError(f"Unexpected arguments: {argv[1:]}")
    export(_CONFIG.value)


if __name__ == "__main__":
    run(main)
