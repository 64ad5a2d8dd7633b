"""Elastic Weight Consolidation on the LoRA adapters: a later stage pays `strength/2 * sum F * (theta - theta*)^2`
for moving an adapter away from where the earlier stages left it (theta*), in proportion to how much the earlier
stages' data depend on it (the diagonal Fisher information F, estimated by fisher.py).

Online EWC (Schwarz et al., 2018): after each stage, F <- gamma * F + F_stage and theta* <- the stage's final
adapters, so memory stays at twice the adapters whatever the number of stages. The anchor (F, theta*) travels in
the train state, so every checkpoint of a later stage carries it, and beside each stage's checkpoints as
`ewc_anchor.npz`. The strength follows a schedule over the stage: constant, warmup (0 -> strength) or decay
(strength -> end_ratio * strength).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from devstral_jax.errors import ConfigError, TrainingError

SCHEDULES = ("constant", "warmup", "decay")
ANCHOR_FILE = "ewc_anchor.npz"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Anchor:
    fisher: nnx.State  # F: the adapters' diagonal Fisher, accumulated over the earlier stages
    params: nnx.State  # theta*: the adapters after the last earlier stage


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        strength=0.0,  # lambda; 0: no EWC (and no Fisher is estimated after a stage)
        schedule="constant", warmup_steps=0, end_ratio=0.1,
        gamma=1.0,  # online EWC: an earlier stage's Fisher counts gamma times at each later stage
        fisher_batches=4,  # training batches the Fisher is estimated on after a stage
        anchor_from="",  # set by the stage runner: the previous stage's workdir, which holds ewc_anchor.npz
    ))


def penalty(lora: nnx.State, anchor: Anchor) -> jax.Array:
    """1/2 * sum F * (theta - theta*)^2 (the strength multiplies it outside)."""
    terms = jax.tree.map(lambda f, p, q: jnp.sum(f * jnp.square(p - q)), anchor.fisher, lora, anchor.params)
    return 0.5 * sum(jax.tree.leaves(terms))


def strength_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"ewc.schedule={cfg.schedule!r} is not one of {SCHEDULES}.")
    if cfg.schedule == "warmup":
        return optax.linear_schedule(0.0, cfg.strength, max(cfg.warmup_steps, 1))
    if cfg.schedule == "decay":
        return optax.linear_schedule(cfg.strength, cfg.strength * cfg.end_ratio, max(total_steps, 1))
    return optax.constant_schedule(cfg.strength)


def accumulate(previous: Anchor | None, fisher: nnx.State, params: nnx.State, gamma: float) -> Anchor:
    """The online update: F <- gamma * F_previous + F, theta* <- params."""
    if previous is not None:
        fisher = jax.tree.map(lambda old, new: gamma * old + new, previous.fisher, fisher)
    return Anchor(fisher=fisher, params=params)


def _flat(tree: nnx.State) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def save_anchor(anchor: Anchor, workdir: str) -> str:
    path = os.path.join(workdir, ANCHOR_FILE)
    arrays = {f"fisher{k}": v for k, v in _flat(anchor.fisher).items()}
    arrays.update({f"params{k}": v for k, v in _flat(anchor.params).items()})
    np.savez(path, **arrays)
    return path


def load_anchor(workdir: str, like: nnx.State) -> Anchor:
    """The anchor saved in `workdir`, shaped and placed like the adapters `like`."""
    path = os.path.join(workdir, ANCHOR_FILE)
    if not os.path.isfile(path):
        raise TrainingError(f"ewc.anchor_from={workdir!r} has no {ANCHOR_FILE}: EWC needs a stage trained with "
                            "ewc.strength > 0 before it (the stage runner writes it).")
    with np.load(path) as arrays:
        def part(prefix: str) -> nnx.State:
            def leaf(key_path, x):
                key = f"{prefix}{jax.tree_util.keystr(key_path)}"
                if key not in arrays or arrays[key].shape != x.shape:
                    raise TrainingError(f"{path} does not fit this run's adapters at {key}: the previous stage "
                                        "had another LoRA configuration.")
                return jax.device_put(arrays[key].astype(x.dtype), x.sharding)
            return jax.tree_util.tree_map_with_path(leaf, like)
        return Anchor(fisher=part("fisher"), params=part("params"))


def anchor_for(cfg: ml_collections.ConfigDict, lora: nnx.State) -> Anchor | None:
    """The run's anchor: loaded from the previous stage when EWC is on and one is named, else None."""
    return load_anchor(cfg.anchor_from, lora) if cfg.strength > 0 and cfg.anchor_from else None
