r"""Exports a fine-tune for serving as one version: PEFT adapter, merged HF model, GGUFs (each with an Ollama
Modelfile), model cards and a manifest.json, in <out>/<name>/<version>/.

    python launch/export.py --base=/models/Devstral-Small-2507 --adapter=/runs/elixir/adapter \
        --out=/runs/exports [--config=configs/export.py] [--config.formats=peft,merged,gguf_q4_k_m] \
        [--config.version=v2] [--manifest=/data/elixir/manifest.json] [--eval_results=/runs/elixir/eval.json]
    python launch/export.py --out=/runs/exports --list

`--base` is the original checkpoint (HF or Mistral consolidated directory, or GGUF file); the merged
weights are base + LoRA, computed tensor by tensor from it (never from the NF4 copy used in training), so
host memory stays a few tensors even for the 24B model. The LoRA comes from a PEFT directory (`--adapter`)
or a training workdir (`--workdir`: the adapters of its `--checkpoint`, by default the one with the best
validation loss, the model the run learnt best). The version (default: the next v<n>) appears whole or not at
all; `--list` shows every version under --out (devstral_jax/hf/versions.py describes the manifest).
"""

from __future__ import annotations

import json
import os
import tempfile

from absl import flags, logging
from ml_collections import config_flags

from devstral_jax.atomic import atomic_directory
from devstral_jax.cli import run
from devstral_jax.errors import ConfigError, ExportError, FlagError
from devstral_jax.hf import llama_cpp, model_card, versions
from devstral_jax.hf.export import (bumblebee_problem, gguf_tokenizer_files, merged_checkpoint_tensors, save_merged,
                                    tokenizer_files)
from devstral_jax.hf.gguf_export import GGUF_TYPES, check_tokenizer, save_gguf
from devstral_jax.hf.model_dir import ModelDir, open_model_dir
from devstral_jax.hf.ollama import save_modelfile
from devstral_jax.hf.peft import Adapter, adapter_from_model, check_adapter, load_adapter, save_adapter
from devstral_jax.tokenizers.tekken import PACKAGED_TEKKEN
from devstral_jax.train.trainer import is_workdir, restore_trained_model

_DEFAULT_CONFIG = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                                                "export.py"))
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "ml_collections config file (configs/export.py).")
_BASE = flags.DEFINE_string("base", None, "The base model: a directory (HF or Mistral consolidated) or a GGUF file.")
_ADAPTER = flags.DEFINE_string("adapter", None, "A PEFT LoRA adapter directory.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (launch/train.py) to take the LoRA from.")
_OUT = flags.DEFINE_string("out", None, "The exports folder: versions go to <out>/<name>/<version>/.")
_MANIFEST = flags.DEFINE_string("manifest", None, "The training data manifest.json, summarised in the model card.")
_EVAL = flags.DEFINE_string("eval_results", None, "Evaluation results (JSON), summarised in the model card.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "With --workdir: the checkpoint to export: best (lowest "
                                  "validation loss), latest, or a step number.")
_LIST = flags.DEFINE_bool("list", False, "List the versions exported under --out and exit.")
flags.mark_flags_as_required(["out"])

# `bumblebee` is the merged directory, refused for a model Bumblebee would load wrongly.
FORMATS = ("peft", "merged", "bumblebee", *(f"gguf_{kind}" for kind in GGUF_TYPES))


def _adapter(base: ModelDir) -> tuple[Adapter, dict | None]:
    """The LoRA to export, from --adapter or --workdir, checked against the base; and the training run it came
    from (workdir, its record of the base, config), when known."""
    if bool(_ADAPTER.value) == bool(_WORKDIR.value):
        raise FlagError("Pass exactly one of --adapter (a PEFT directory) and --workdir (a training workdir).")
    if _ADAPTER.value:
        adapter, training = load_adapter(_ADAPTER.value), None
    else:
        if not is_workdir(_WORKDIR.value):
            raise FlagError(f"--workdir={_WORKDIR.value} is not a training workdir (it has no checkpoints/).")
        model, _, meta = restore_trained_model(_WORKDIR.value, _CHECKPOINT.value)
        print(f"checkpoint: {meta['checkpoint']['why']} of {_WORKDIR.value}")
        adapter = adapter_from_model(model)
        training = {"workdir": os.path.abspath(_WORKDIR.value), "base_source": meta.get("base_source"),
                    "base_fingerprint": meta.get("base_fingerprint"), "config": meta["config"]}
    check_adapter(adapter, base.config)  # every adapted module exists in the base, with matching shapes
    return adapter, training


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


def _formats(config) -> list[str]:
    formats = [f.strip() for f in config.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ConfigError(f"--config.formats: unknown format(s) {unknown}; choose from {list(FORMATS)}.")
    return formats


def _check_before_writing(formats: list[str], base: ModelDir, gguf_tokenizer: str | None) -> None:
    """What would make a format fail, found before hours of writing the others."""
    problem = bumblebee_problem(base.config)
    if "bumblebee" in formats and problem:
        raise ExportError(f"--config.formats=bumblebee: {problem}")
    if "merged" in formats and problem:
        logging.warning("The merged model is for transformers, vLLM and TGI, not Bumblebee: %s", problem)
    ggufs = [f.removeprefix("gguf_") for f in formats if f.startswith("gguf_")]
    if ggufs and not gguf_tokenizer.endswith(".gguf"):
        check_tokenizer(gguf_tokenizer, base.config.vocab_size)
    if any(kind in llama_cpp.K_QUANTS for kind in ggufs):
        llama_cpp.require()


def export(config) -> None:
    formats = _formats(config)
    if not _BASE.value:
        raise FlagError("--base is required to export (only --list works without it).")
    name = versions.check_name("--config.name", config.name)
    base = open_model_dir(_BASE.value)
    adapter, training = _adapter(base)
    ggufs = [f.removeprefix("gguf_") for f in formats if f.startswith("gguf_")]
    gguf_tokenizer = _gguf_tokenizer(base) if ggufs else None
    _check_before_writing(formats, base, gguf_tokenizer)
    version = versions.check_name("--config.version", config.version or versions.next_version(_OUT.value, name))
    base_model = config.base_model or os.path.basename(os.path.normpath(base.path)).removesuffix(".gguf")
    manifest_file, eval_file = _MANIFEST.value, _EVAL.value
    evaluation = _read_json(eval_file, "evaluation results")
    card = dict(base_model=base_model, adapter=adapter, manifest=_read_json(manifest_file, "data manifest"),
                evaluation=evaluation)
    target = os.path.join(_OUT.value, name, version)
    written: dict[str, list[str]] = {}
    with atomic_directory(target, config.overwrite) as out:
        if "peft" in formats:
            save_adapter(adapter, os.path.join(out, "adapter"), base_model,
                         readme=model_card.render(base.config, kind="adapter", **card))
            written["peft"] = ["adapter"]
        if "merged" in formats or "bumblebee" in formats:
            with tempfile.TemporaryDirectory() as scratch:
                tokenizer, generation_config = _merged_tokenizer(base, scratch)
                save_merged(os.path.join(out, "merged"), base.config, merged_checkpoint_tensors(base, adapter),
                            dtype=config.dtype, tokenizer=tokenizer, generation_config=generation_config,
                            readme=model_card.render(base.config, kind="merged", **card),
                            max_shard_bytes=int(config.max_shard_gb * 1e9))
            written.update({kind: ["merged"] for kind in ("merged", "bumblebee") if kind in formats})
        for kind in ggufs:
            path = os.path.join(out, f"{name}-{kind}.gguf")
            save_gguf(path, base.config, merged_checkpoint_tensors(base, adapter), tokenizer=gguf_tokenizer,
                      outtype=kind, name=name)
            modelfile = save_modelfile(path, gguf_tokenizer)
            written[f"gguf_{kind}"] = [os.path.basename(path), os.path.basename(modelfile)]
        versions.write_manifest(out, {
            "name": name, "version": version, "created": versions.utc_now(),
            "base": {"name": base_model, "path": os.path.abspath(base.path),
                     "fingerprint": versions.model_fingerprint(base)},
            "adapter": {"source": os.path.abspath(_ADAPTER.value or _WORKDIR.value), "rank": adapter.rank,
                        "alpha": adapter.alpha, "targets": adapter.targets, "modules": len(adapter.weights),
                        "sha256": versions.adapter_digest(adapter)},
            "data": None if manifest_file is None else {"path": os.path.abspath(manifest_file),
                                                          "sha256": versions.file_sha256(manifest_file)},
            "training": training,
            "evaluation": evaluation,
            "formats": {kind: versions.format_entry(out, paths) for kind, paths in written.items()},
        })
    print(f"wrote {target}: {', '.join(written)}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise FlagError(f"Unexpected arguments: {argv[1:]}")
    if _LIST.value:
        print(versions.versions_table(versions.list_versions(_OUT.value)))
    else:
        export(_CONFIG.value)


if __name__ == "__main__":
    run(main)
