"""What a training run computes, as a flat record saved with every checkpoint, so that a resume with other
settings is refused by name instead of silently continuing another run.

Fingerprinted (a change makes the resumed run differ from an uninterrupted one): the seed; every
`config.model` field except how the same math is scheduled (`scan_layers`, `remat_policy`,
`attention_impl`); every `config.optim` field; `train.steps` (the learning-rate schedule's horizon: to
extend a run, allow it); the data's `seq_len`, `batch_size`, `microbatches`, `packing_bins`, `shuffle`, the
mixture and the curriculum (when set), the shard paths of both splits and a digest of the shard files; the
`config.ewc` settings (when EWC is on) but where its anchor comes from; the tokenizer's digest
(`Tokenizer.digest`). The frozen base is checked separately, by its own fingerprint (checkpoint.base_fingerprint).

Never fingerprinted, free to change between runs: `train.stop_at`, `log_every`, `eval_every`,
`eval_batches`, `checkpoint_every`, `keep_checkpoints`, `async_checkpoint`, `max_bad_steps`, `dead_steps`,
`peak_tflops`, `init_adapters_from` and `keep_optimizer` (read only by a fresh start), `data.worker_count`,
`config.mesh` (resuming on another machine shape is allowed) and `config.generate`.

`--config.train.allow_changes=data.seq_len,train.steps` accepts the named differences.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import xxhash
from etils import epath

from devstral_jax.data import curriculum, mixture
from devstral_jax.data.pipeline import shard_files
from devstral_jax.errors import ConfigError

_SCHEDULING_ONLY = ("scan_layers", "remat_policy", "attention_impl")
_DATA_FIELDS = ("seq_len", "batch_size", "microbatches", "packing_bins", "shuffle", "train_paths",
                "validation_paths")
_SAMPLE_BYTES = 1 << 20  # of each shard file's head and tail: what a rebuilt shard changes, read cheaply


def run_fingerprint(config: ml_collections.ConfigDict, tokenizer_digest: str) -> dict[str, Any]:
    """{field: value} of everything that shapes what the run computes (see the module docstring)."""
    fields: dict[str, Any] = {"seed": config.seed, "train.steps": config.train.steps}
    fields.update({f"model.{k}": v for k, v in config.model.to_dict().items() if k not in _SCHEDULING_ONLY})
    fields.update({f"optim.{k}": v for k, v in config.optim.to_dict().items()})
    fields.update({f"data.{k}": config.data[k] for k in _DATA_FIELDS})
    for split in ("train", "validation"):
        fields[f"data.{split}_shards"] = _shards_digest(tuple(config.data[f"{split}_paths"]), split)
    if config.ewc.strength > 0:  # absent when off, like the mixture; where the anchor comes from is not the math
        fields.update({f"ewc.{k}": v for k, v in config.ewc.to_dict().items() if k != "anchor_from"})
    if config.data.mixture:  # absent when unset, so checkpoints from before mixtures existed still resume
        fields["data.mixture"] = mixture.fingerprint(mixture.parse_mixture(config.data.mixture))
    if pacing := curriculum.parse_curriculum(config.data.curriculum, config.train.steps):  # absent when off
        fields["data.curriculum"] = pacing.to_json()
    fields["data.tokenizer"] = tokenizer_digest
    return json.loads(json.dumps(fields))  # tuples as lists, as they come back from a checkpoint


def differences(saved: dict[str, Any], now: dict[str, Any], allowed: set[str]) -> list[str]:
    """`field (saved -> now)` for each field that differs and is not allowed to."""
    changed = []
    for name in sorted(set(saved) | set(now)):
        if name in allowed or saved.get(name) == now.get(name):
            continue
        if name.endswith(("_shards", "tokenizer")):
            changed.append(f"{name} (other file contents)")
        else:
            changed.append(f"{name} ({saved.get(name, 'not recorded')!r} -> {now.get(name, 'not recorded')!r})")
    return changed


def allowed_changes(config: ml_collections.ConfigDict, fingerprint: dict[str, Any]) -> set[str]:
    """The fields `train.allow_changes` names; a name that is not a fingerprinted field is a mistake."""
    names = {name.strip() for name in config.train.allow_changes.split(",") if name.strip()}
    if unknown := sorted(names - set(fingerprint)):
        raise ConfigError(f"train.allow_changes names {unknown}, which are not fingerprinted settings; they are: "
                          f"{', '.join(sorted(fingerprint))}.")
    return names


def _shards_digest(paths: tuple[str, ...], split: str) -> str:
    """A digest of each shard file's name, size, head and tail, and of the data pipeline's manifest.json beside
    it: a rebuilt or swapped shard changes it, and no shard is read whole."""
    digest = xxhash.xxh3_128()
    manifests = set()
    for path in shard_files(paths, split):
        size = epath.Path(path).stat().length
        digest.update(f"{os.path.basename(path)}\0{size}\0".encode())
        with epath.Path(path).open("rb") as f:
            digest.update(f.read(_SAMPLE_BYTES))
            f.seek(max(size - _SAMPLE_BYTES, 0))
            digest.update(f.read(_SAMPLE_BYTES))
        manifests.add(os.path.join(os.path.dirname(path), "manifest.json"))
    for manifest in sorted(m for m in manifests if epath.Path(m).is_file()):
        digest.update(epath.Path(manifest).read_bytes())
    return digest.hexdigest()

