"""Orbax checkpoints of a training run: the trainable state, the data iterator's position and the config,
each step verified by a checksum manifest.

What is saved each time: LoRA parameters, optimizer state, step, RNG and skip counters (`state`), the
Grain iterator state (`data`) and a JSON record of the run (`meta`: the config, its fingerprint, where the
frozen base came from and the base's fingerprint). The frozen base itself is never copied: at restore the
fingerprint of the base in memory must match the one recorded. Saves are asynchronous and atomic (Orbax
finalizes a step only when it is complete, so an interrupted save leaves the previous step as the latest).

Integrity: once a save has committed, every file of the step gets its size and xxh3 hash in the step's
`integrity.json`. A restore first checks them; a step that fails (a flipped bit, a truncated or deleted
file, no manifest, or Orbax cannot read it) is passed over for the newest step that verifies, with one log
line saying which and why. Retention is ours, not Orbax's: the newest verified step is never deleted, and
older ones (beyond the last `keep_last` and the best evaluation loss) only once a newer one has verified.
A reader (evaluation, export, the next stage) can take only part of the state, e.g. the LoRA parameters
without the optimizer state beside them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
import xxhash

from devstral_jax.errors import CheckpointError

EVAL_METRIC = "eval_loss"
MANIFEST = "integrity.json"
REJECTED = "rejected"  # steps set aside after a fallback, under the checkpoint directory (Orbax ignores it)


def base_fingerprint(frozen: Any, sample: int = 4096) -> str:
    """A cheap hash of the frozen base: every array's path, shape and dtype, and a strided sample of its values."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(frozen):
        stride = max(1, leaf.size // sample)
        values = np.asarray(jax.device_get(leaf.reshape(-1)[::stride][:sample]))  # sampled on device: small copy
        digest.update(f"{jax.tree_util.keystr(path)}|{leaf.shape}|{leaf.dtype}|".encode())
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


# --- the checksum manifest of one step directory ---------------------------------------------------------------

def _file_hash(path: str) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _step_files(step_dir: str) -> list[str]:
    """Every file under `step_dir` except the manifest, relative, sorted."""
    files = [os.path.relpath(os.path.join(root, name), step_dir)
             for root, _, names in os.walk(step_dir) for name in names]
    return sorted(f for f in files if f != MANIFEST)


def write_manifest(step_dir: str) -> None:
    """Records the size and xxh3-128 hash of every file of a committed step in its `integrity.json`."""
    files = {name: [os.path.getsize(os.path.join(step_dir, name)), _file_hash(os.path.join(step_dir, name))]
             for name in _step_files(step_dir)}
    temporary = os.path.join(step_dir, f".{MANIFEST}.partial")
    with open(temporary, "w") as f:
        json.dump({"hash": "xxh3_128", "files": files}, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, os.path.join(step_dir, MANIFEST))


def verify_manifest(step_dir: str) -> str | None:
    """Why the files of `step_dir` are not the ones its manifest lists (the first problem found); None when
    every file is there with its recorded size and hash, and nothing else is."""
    try:
        with open(os.path.join(step_dir, MANIFEST)) as f:
            recorded = json.load(f)["files"]
    except FileNotFoundError:
        return "it has no integrity manifest (its save did not finish, or an older version wrote it)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its integrity manifest is unreadable ({type(e).__name__}: {e})"
    present = _step_files(step_dir)
    if extra := sorted(set(present) - set(recorded)):
        return f"{extra[0]} is not in its manifest"
    for name, (size, digest) in sorted(recorded.items()):
        path = os.path.join(step_dir, name)
        try:
            if (actual := os.path.getsize(path)) != size:
                return f"{name} has {actual} bytes, its manifest says {size}"
            if _file_hash(path) != digest:
                return f"{name} does not match its recorded hash (corrupted)"
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as e:
            return f"{name} cannot be read ({e.strerror})"
    return None


class Checkpointer:
    """The checkpoints of one run in `directory`. `read_only`: open existing checkpoints to read them, never
    creating the directory nor cleaning up the temporary files of a run that may still be saving into it."""

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(os.fspath(directory))
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"No checkpoint directory at {self.directory}: pass a training workdir.")
        self.keep_last = keep_last
        self.async_save = async_save
        options = ocp.CheckpointManagerOptions(enable_async_checkpointing=async_save, create=not read_only,
                                               cleanup_tmp_directories=not read_only, best_fn=lambda m: m[EVAL_METRIC],
                                               best_mode="min", keep_checkpoints_without_metrics=True)
        handlers = dict(state=ocp.PyTreeCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
                        meta=ocp.JsonCheckpointHandler())
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._unverified: list[int] = []  # saved by this object, manifest not written yet
        self._problems: dict[int, str | None] = {}  # step -> why it failed verification (None: it passed)
        self._verified = {step for step in self.all_steps() if os.path.isfile(self._manifest_path(step))}

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return max(self.all_steps(), default=None)

    def all_steps(self) -> list[int]:
        """Every step directory, including one Orbax would not list (damaged: restores pass it over)."""
        names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(self._step_dir(int(n))))

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _manifest_path(self, step: int) -> str:
        return os.path.join(self._step_dir(step), MANIFEST)

    # --- saving, verifying, retention ---

    def save(self, step: int, state: Any, data_state: dict, meta: dict, eval_loss: float | None = None,
             force: bool = False) -> None:
        self._verify_saved()  # Orbax waits for the previous save before starting one anyway
        metrics = {EVAL_METRIC: float(eval_loss)} if eval_loss is not None else None
        saved = self._manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                                                 data=ocp.args.JsonSave(data_state),
                                                                 meta=ocp.args.JsonSave(meta)),
                                   metrics=metrics, force=force)
        if saved:
            self._unverified.append(step)
        if not self.async_save:
            self._verify_saved()

    def _verify_saved(self) -> None:
        """After the pending saves have committed: writes their manifests, then applies retention."""
        if not self._unverified:
            return
        self._manager.wait_until_finished()
        for step in self._unverified:
            if jax.process_index() == 0:
                write_manifest(self._step_dir(step))
            self._verified.add(step)
        self._unverified.clear()
        self._apply_retention()

    def _apply_retention(self) -> None:
        """Deletes the steps older than the newest verified one, except the last `keep_last` verified steps and
        the one with the best evaluation loss."""
        verified = sorted(self._verified)
        keep = set(verified[-self.keep_last:]) | {self.best_step()}
        old = [step for step in self.all_steps() if step < verified[-1] and step not in keep]
        for step in old:
            if jax.process_index() == 0:
                shutil.rmtree(self._step_dir(step))
            self._verified.discard(step)
        if old:
            self._manager.reload()

    def set_aside_after(self, step: int) -> None:
        """Moves the steps newer than `step` (the one a run resumed from after passing them over) to
        `rejected/`, so the run saves those steps anew; nothing is deleted."""
        newer = [s for s in self.all_steps() if s > step]
        if not newer:
            return
        rejected = os.path.join(self.directory, REJECTED)
        for s in newer:
            if jax.process_index() == 0:
                target = os.path.join(rejected, f"{s}-{time.strftime('%Y%m%d-%H%M%S')}")
                os.makedirs(rejected, exist_ok=True)
                shutil.move(self._step_dir(s), target)
                logging.warning("Moved unusable checkpoint step %d to %s; it will be saved again.", s, target)
            self._verified.discard(s)
        self._manager.reload()

    # --- restoring ---

    def restore(self, abstract_state: Any, step: int | None = None, expected_fingerprint: str | None = None,
                check_meta: Callable[[int, dict], None] | None = None) -> tuple[Any, dict, dict]:
        """(state, data iterator state, meta) of `step` (default: the newest step that verifies), placed with
        the shardings of `abstract_state` (a tree of jax.ShapeDtypeStruct with shardings). `check_meta(step,
        meta)` may refuse the run's settings before any array is read."""
        def read(step: int, meta: dict) -> tuple[Any, dict, dict]:
            if check_meta is not None:
                check_meta(step, meta)
            restored = self._restore_state(step, abstract_state, partial=False, data=ocp.args.JsonRestore())
            return restored["state"], restored["data"], meta

        return self._first_usable(step, expected_fingerprint, read)

    def restore_part(self, abstract_part: dict[str, Any], step: int | None = None,
                     expected_fingerprint: str | None = None) -> tuple[dict[str, Any], dict]:
        """(the entries of the saved state that `abstract_part` names, meta): e.g. `{"lora": ...}` reads the
        trained adapters and nothing of the optimizer, which the caller then need not build."""
        return self._first_usable(step, expected_fingerprint,
                                  lambda s, meta: (self._restore_state(s, abstract_part, partial=True)["state"], meta))

    def restore_meta(self, step: int | None = None) -> dict:
        """The meta of `step` (default: the newest step that verifies)."""
        return self._first_usable(step, None, lambda s, meta: meta)

    def usable_step(self, step: int | None = None) -> int:
        """`step` if it verifies, else (None) the newest step that verifies: what the restores above read."""
        return self._first_usable(step, None, lambda s, meta: s)

    def _first_usable(self, step: int | None, expected_fingerprint: str | None,
                      read: Callable[[int, dict], Any]) -> Any:
        """`read(step, meta)` of the newest step that verifies and reads (or of `step`, which must); steps that
        fail are passed over with a log line. A checkpoint of another base or settings is an error, never
        passed over: an older step of the same run would not fit either."""
        candidates = [step] if step is not None else self.all_steps()[::-1]
        if not candidates:
            raise CheckpointError(f"No complete checkpoint in {self.directory}.")
        failures = []
        for candidate in candidates:
            if candidate not in self._problems:  # verified once per object
                self._problems[candidate] = verify_manifest(self._step_dir(candidate))
            problem = self._problems[candidate]
            if problem is None:
                try:
                    return read(candidate, self._meta(candidate, expected_fingerprint))
                except CheckpointError:
                    raise
                except Exception as e:  # noqa: BLE001 -- whatever Orbax or TensorStore raise on a bad step
                    problem = f"it cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
            self._problems[candidate] = problem
            failures.append(f"step {candidate}: {problem}")
            older = [s for s in candidates if s < candidate]
            logging.warning("Checkpoint step %d of %s is unusable: %s; %s.", candidate, self.directory, problem,
                            f"trying step {older[0]}" if older else "no older step is left")
        raise CheckpointError(f"No usable checkpoint in {self.directory} ({'; '.join(failures)}). Restore the "
                              "files, or move the directory away to start over.")

    def _meta(self, step: int, expected_fingerprint: str | None) -> dict:
        """`step`'s meta, checked against the base loaded now."""
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if expected_fingerprint is not None and meta.get("base_fingerprint") != expected_fingerprint:
            raise CheckpointError(
                f"The checkpoint at step {step} of {self.directory} was trained on a different base model "
                f"({meta.get('base_source')!r}, fingerprint {str(meta.get('base_fingerprint'))[:12]}) than the "
                f"one loaded now (fingerprint {expected_fingerprint[:12]}). Load the same base, or use a new workdir.")
        return meta

    def _restore_state(self, step: int, abstract: Any, partial: bool, **other_items: Any) -> Any:
        """Restores the `state` item into `abstract`'s structure, shapes and shardings (only the entries
        `abstract` names if `partial`), plus `other_items`; a state this run does not build is a CheckpointError."""
        mismatch, cause = self._mismatch(step, abstract, partial), None
        if mismatch is None:
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
            try:
                return self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(abstract, restore_args, partial_restore=partial), **other_items))
            except ValueError as e:  # Orbax refuses trees that differ where no array does
                if "tree" not in str(e).lower():
                    raise
                mismatch, cause = "the same arrays in another tree, e.g. another optimizer chain", e
        raise CheckpointError(
            f"The checkpoint at step {step} of {self.directory} does not hold the state this run builds "
            f"({mismatch}): it was saved with other config.model or config.optim settings. Use those settings "
            "(the checkpoint's meta records its config), or a new workdir.") from cause

    def _mismatch(self, step: int, abstract: Any, partial: bool) -> str | None:
        """Where the saved state's arrays and `abstract`'s differ in name or shape, found from the checkpoint's
        metadata before reading any array; None where they agree."""
        saved = ocp.tree.to_flat_dict(self._manager.item_metadata(step)["state"].tree)
        wanted = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(abstract, keep_empty_nodes=True))
        problems = [f"{'/'.join(key)}: saved {tuple(saved[key].shape)}, this run {tuple(leaf.shape)}"
                    for key, leaf in wanted.items() if key in saved and tuple(saved[key].shape) != tuple(leaf.shape)]
        problems += [f"{'/'.join(key)} is not in the checkpoint" for key in wanted if key not in saved]
        if not partial:
            problems += [f"{'/'.join(key)} is in the checkpoint but not in this run"
                         for key in saved if key not in wanted]
        if not problems:
            return None
        return problems[0] + (f"; and {len(problems) - 1} more" if len(problems) > 1 else "")

    def wait(self) -> None:
        """Blocks until asynchronous saves have finished and are verified."""
        self._manager.wait_until_finished()
        self._verify_saved()

    def close(self) -> None:
        self._verify_saved()
        self._manager.close()
