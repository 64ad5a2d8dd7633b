"""Multi-stage training (continued pretraining -> instructions -> prose, ...): each stage is a run of its own in
`workdir/<name>`, with its own config overrides (typically its data mixture and learning rate), starting from
the previous stage's final adapters (and its optimizer state with `train.keep_optimizer`). After each stage, and
for the base before the first, the forgetting probes (forgetting.py) are measured; the table is written to
`workdir/forgetting.{md,json,png}` and returned. When a later stage has `ewc.strength > 0`, each stage before it
leaves an EWC anchor (ewc.py: its Fisher accumulated online, and its adapters) that the next stage is held to.
A stage with `rehearsal.ratio > 0` first has the previous stage's model answer earlier stages' prompts, and mixes
the answers that hold up into its data (rehearsal.py).

Rerunning the command skips finished stages and resumes the unfinished one; a stage stopped early (SIGTERM or
`train.stop_at`) ends the call there.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import ml_collections
from flax import nnx

from devstral_jax import sharding
from devstral_jax.checkpoint import base_fingerprint
from devstral_jax.config import from_config_dict
from devstral_jax.data.pipeline import DataSpec, make_dataset, step_inputs
from devstral_jax.errors import TrainingError
from devstral_jax.train import config as train_config
from devstral_jax.train import ewc, fisher, forgetting, rehearsal, trainer
from devstral_jax.train.step import make_eval_step


def stage_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """{stage name: the full single-run config of that stage} (the shared config with the stage's overrides)."""
    configs = {}
    for stage in config.stages:
        stage_config = ml_collections.ConfigDict(config.to_dict())
        stage_config.stages = ()
        overrides = dict(stage)
        name = overrides.pop("name")
        for section, values in overrides.items():
            if section not in stage_config:
                raise TrainingError(f"Stage {name!r} overrides an unknown section {section!r}.")
            stage_config[section].update(values)
        train_config.validate(stage_config)
        configs[name] = stage_config
    return configs


def train_stages(config: ml_collections.ConfigDict, workdir: str) -> trainer.TrainResult:
    configs = stage_configs(config)
    probes = {"general_code": forgetting.general_code_spec(config.data.seq_len, config.data.batch_size)}
    probes.update({name: trainer.data_spec(c, "validation") for name, c in configs.items()})
    models = StageModels(config)
    table = {"base": models.perplexities(probes)}
    previous, result = config.train.init_adapters_from, None
    done: list[tuple[str, ml_collections.ConfigDict]] = []  # the stages before this one, for rehearsal
    ewc_later = [any(c.ewc.strength > 0 for c in list(configs.values())[i + 1:]) for i in range(len(configs))]
    for (name, stage_config), needs_anchor in zip(configs.items(), ewc_later):
        stage_config.train.init_adapters_from = previous
        stage_config.ewc.anchor_from = previous if stage_config.ewc.strength > 0 else ""
        logging.info("Stage %s", name)
        if stage_config.rehearsal.ratio > 0:
            rehearsal.prepare(name, stage_config, [c for _, c in done], os.path.join(workdir, name),
                              done[-1][0] if done else "", previous, models)
        result = trainer.train_run(stage_config, os.path.join(workdir, name))
        if result.last_step < stage_config.train.steps:
            return result
        table[name] = models.perplexities(probes, result.workdir)
        if needs_anchor:
            models.write_anchor(stage_config, result.workdir, previous)
        previous = result.workdir
        done.append((name, stage_config))
    result.summary = forgetting.write_report(table, os.path.abspath(workdir))
    return result


class StageModels:
    """The model after each stage (its final adapters on the base), on one device, for the forgetting probes and
    the EWC Fisher. The base is rebuilt for each use and released after it, so a run never holds two bases."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
        self.tokenizer = trainer.run_tokenizer(config, from_config_dict(config.model))
        self.eval_step = None

    def load(self, stage_workdir: str | None) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
        """(graphdef, adapters, base) after the stage trained in `stage_workdir`; None: the base model itself
        (adapters at their zero-effect start)."""
        graphdef, lora, frozen, _ = trainer.build_model(self.config, from_config_dict(self.config.model), self.mesh)
        if stage_workdir:
            lora = trainer.final_part(stage_workdir, {"lora": trainer.abstract(lora)}, base_fingerprint(frozen))["lora"]
        return graphdef, lora, frozen

    def perplexities(self, probes: dict[str, DataSpec], stage_workdir: str | None = None) -> dict[str, float]:
        graphdef, lora, frozen = self.load(stage_workdir)
        if self.eval_step is None:  # compiled once for every model of the run
            self.eval_step = jax.jit(make_eval_step(graphdef, self.config.train.loss_chunk))
        return forgetting.perplexities(self.eval_step, lora, frozen, probes, self.tokenizer,
                                       self.config.train.eval_batches, self.mesh)

    def write_anchor(self, stage_config: ml_collections.ConfigDict, stage_workdir: str, previous: str) -> None:
        """The EWC anchor after this stage: its Fisher on the stage's training data, accumulated online onto the
        previous stage's anchor, and its final adapters; with a plot of the stage's per-module importance."""
        if os.path.isfile(os.path.join(stage_workdir, ewc.ANCHOR_FILE)):
            return  # written by an earlier call of this run
        graphdef, lora, frozen = self.load(stage_workdir)
        spec = dataclasses.replace(trainer.data_spec(stage_config, "train"), curriculum=None)  # all the stage's data
        batches = (step_inputs(batch) for _, batch in
                   zip(range(stage_config.ewc.fisher_batches), make_dataset(spec, self.tokenizer)))
        stage_fisher = fisher.estimate(graphdef, lora, frozen, batches, stage_config.train.loss_chunk)
        fisher.plot_importance(stage_fisher, os.path.join(stage_workdir, "fisher_importance.png"),
                               f"EWC importance after {os.path.basename(stage_workdir)}")
        earlier = (ewc.load_anchor(previous, lora)
                   if previous and os.path.isfile(os.path.join(previous, ewc.ANCHOR_FILE)) else None)
        ewc.save_anchor(ewc.accumulate(earlier, stage_fisher, lora, self.config.ewc.gamma), stage_workdir)
