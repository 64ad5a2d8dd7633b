"""Orbax checkpoints of a training run: the trainable state, the data iterator's position and the config.

What is saved each time: LoRA parameters, optimizer state, step, RNG and skip counters (`state`), the
Grain iterator state (`data`) and a JSON record of the run (`meta`: the config, where the frozen base came
from and its fingerprint). The frozen base itself is never copied: at restore the fingerprint of the base
in memory must match the one recorded. Saves are asynchronous and atomic (Orbax finalizes a step only
when it is complete, so an interrupted save leaves the previous step as the latest). Kept: the last
`keep_last` steps plus the one with the best evaluation loss.
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
    def __init__(self, directory: str | os.PathLike, keep_last: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(keep_last),
            ocp.checkpoint_managers.BestN(get_metric_fn=lambda metrics: -metrics[EVAL_METRIC], n=1,
                                          keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True, best_fn=lambda m: m[EVAL_METRIC],
                                               best_mode="min", keep_checkpoints_without_metrics=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def save(self, step: int, state: Any, data_state: dict, meta: dict, eval_loss: float | None = None,
             force: bool = False) -> None:
        metrics = {EVAL_METRIC: float(eval_loss)} if eval_loss is not None else None
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         data=ocp.args.JsonSave(data_state),
                                                         meta=ocp.args.JsonSave(meta)),
                           metrics=metrics, force=force)

    def restore(self, abstract_state: Any, step: int | None = None,
                expected_fingerprint: str | None = None) -> tuple[Any, dict, dict]:
        """(state, data iterator state, meta) of `step` (default: the latest complete one), placed with the
        shardings of `abstract_state` (a tree of jax.ShapeDtypeStruct with shardings)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"No complete checkpoint in {self.directory}.")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        meta = restored["meta"]
        if expected_fingerprint is not None and meta.get("base_fingerprint") != expected_fingerprint:
            raise CheckpointError(
                f"The checkpoint at step {step} of {self.directory} was trained on a different base model "
                f"({meta.get('base_source')!r}, fingerprint {str(meta.get('base_fingerprint'))[:12]}) than the "
                f"one loaded now (fingerprint {expected_fingerprint[:12]}). Load the same base, or use a new workdir.")
        return restored["state"], restored["data"], meta

    def restore_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"No complete checkpoint in {self.directory}.")
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        """Blocks until asynchronous saves have finished."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
