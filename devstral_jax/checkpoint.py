"""Orbax checkpoints of a training run: the trainable state, the data iterator's position and the config.

What is saved each time: LoRA parameters, optimizer state, step, RNG and skip counters (`state`), the
Grain iterator state (`data`) and a JSON record of the run (`meta`: the config, where the frozen base came
from and its fingerprint). The frozen base itself is never copied: at restore the fingerprint of the base
in memory must match the one recorded. Saves are asynchronous and atomic (Orbax finalizes a step only
when it is complete, so an interrupted save leaves the previous step as the latest). Kept: the last
`keep_last` steps plus the one with the best evaluation loss. A reader (evaluation, export, the next stage)
can take only part of the state, e.g. the LoRA parameters without the optimizer state beside them.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from devstral_jax.errors import CheckpointError

EVAL_METRIC = "eval_loss"


def base_fingerprint(frozen: Any, sample: int = 4096) -> str:
    """A cheap hash of the frozen base: every array's path, shape and dtype, and a strided sample of its values."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(frozen):
        stride = max(1, leaf.size // sample)
        values = np.asarray(jax.device_get(leaf.reshape(-1)[::stride][:sample]))  # sampled on device: small copy
        digest.update(f"{jax.tree_util.keystr(path)}|{leaf.shape}|{leaf.dtype}|".encode())
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


class Checkpointer:
    """The checkpoints of one run in `directory`. `read_only`: open existing checkpoints to read them, never
    creating the directory nor cleaning up the temporary files of a run that may still be saving into it."""

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(os.fspath(directory))
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"No checkpoint directory at {self.directory}: pass a training workdir.")
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(keep_last),
            ocp.checkpoint_managers.BestN(get_metric_fn=lambda metrics: -metrics[EVAL_METRIC], n=1,
                                          keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=async_save,
                                               create=not read_only, cleanup_tmp_directories=not read_only,
                                               best_fn=lambda m: m[EVAL_METRIC], best_mode="min",
                                               keep_checkpoints_without_metrics=True)
        handlers = dict(state=ocp.PyTreeCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
                        meta=ocp.JsonCheckpointHandler())
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def save(self, step: int, state: Any, data_state: dict, meta: dict, eval_loss: float | None = None,
             force: bool = False) -> None:
        metrics = {EVAL_METRIC: float(eval_loss)} if eval_loss is not None else None
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                                         data=ocp.args.JsonSave(data_state),
                                                         meta=ocp.args.JsonSave(meta)),
                           metrics=metrics, force=force)

    def restore(self, abstract_state: Any, step: int | None = None,
                expected_fingerprint: str | None = None) -> tuple[Any, dict, dict]:
        """(state, data iterator state, meta) of `step` (default: the latest complete one), placed with the
        shardings of `abstract_state` (a tree of jax.ShapeDtypeStruct with shardings)."""
        step, meta = self._step_and_meta(step, expected_fingerprint)
        restored = self._restore_state(step, abstract_state, partial=False, data=ocp.args.JsonRestore())
        return restored["state"], restored["data"], meta

    def restore_part(self, abstract_part: dict[str, Any], step: int | None = None,
                     expected_fingerprint: str | None = None) -> tuple[dict[str, Any], dict]:
        """(the entries of the saved state that `abstract_part` names, meta): e.g. `{"lora": ...}` reads the
        trained adapters and nothing of the optimizer, which the caller then need not build."""
        step, meta = self._step_and_meta(step, expected_fingerprint)
        return self._restore_state(step, abstract_part, partial=True)["state"], meta

    def restore_meta(self, step: int | None = None) -> dict:
        return self._step_and_meta(step, None)[1]

    def _step_and_meta(self, step: int | None, expected_fingerprint: str | None) -> tuple[int, dict]:
        """`step` (default: the latest complete one) and its meta, checked against the base loaded now."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"No complete checkpoint in {self.directory}.")
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if expected_fingerprint is not None and meta.get("base_fingerprint") != expected_fingerprint:
            raise CheckpointError(
                f"The checkpoint at step {step} of {self.directory} was trained on a different base model "
                f"({meta.get('base_source')!r}, fingerprint {str(meta.get('base_fingerprint'))[:12]}) than the "
                f"one loaded now (fingerprint {expected_fingerprint[:12]}). Load the same base, or use a new workdir.")
        return step, meta

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
        """Blocks until asynchronous saves have finished."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
