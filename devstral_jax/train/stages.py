"""Multi-stage training (continued pretraining -> instructions -> prose, ...): each stage is a run of its own in
`workdir/<name>`, with its own config overrides (typically its data mixture and learning rate), starting from
the previous stage's final adapters. After each stage, and for the base before the first, the forgetting probes
(forgetting.py) are measured; the table is written to `workdir/forgetting.{md,json,png}` and returned.

Rerunning the command skips finished stages and resumes the unfinished one; a stage stopped early (SIGTERM or
`train.stop_at`) ends the call there.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

from devstral_jax import sharding
from devstral_jax.checkpoint import base_fingerprint
from devstral_jax.config import from_config_dict
from devstral_jax.data.pipeline import DataSpec
from devstral_jax.data.tokenize import RecordTokenizer
from devstral_jax.errors import TrainingError
from devstral_jax.tokenizer import tekken_file
from devstral_jax.train import config as train_config
from devstral_jax.train import forgetting, trainer
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
    measured = _Probes(config, probes)
    table = {"base": measured.measure()}
    previous, result = config.train.init_adapters_from, None
    for name, stage_config in configs.items():
        stage_config.train.init_adapters_from = previous
        logging.info("Stage %s", name)
        result = trainer.train_run(stage_config, os.path.join(workdir, name))
        if result.last_step < stage_config.train.steps:
            return result
        table[name] = measured.measure(result.workdir)
        previous = result.workdir
    result.summary = forgetting.write_report(table, os.path.abspath(workdir))
    return result


class _Probes:
    """The forgetting probes of a run and what measures them, on one device. The base is rebuilt for each
    measurement and released after it, so a run never holds two bases; the eval step compiles once."""

    def __init__(self, config: ml_collections.ConfigDict, probes: dict[str, DataSpec]):
        self.config, self.probes = config, probes
        self.mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
        self.tokenizer = RecordTokenizer(tekken_file(config.data.tokenizer or None))
        self.eval_step = None

    def measure(self, stage_workdir: str | None = None) -> dict[str, float]:
        """Perplexities of the model after the stage trained in `stage_workdir` (its final adapters on the base),
        or of the base itself (adapters at their zero-effect start)."""
        graphdef, lora, frozen, _ = trainer.build_model(self.config, from_config_dict(self.config.model), self.mesh)
        if stage_workdir:
            lora = trainer.adapters_from(stage_workdir, trainer.abstract(lora), base_fingerprint(frozen))
        if self.eval_step is None:
            self.eval_step = jax.jit(make_eval_step(graphdef, self.config.train.loss_chunk))
        return forgetting.perplexities(self.eval_step, lora, frozen, self.probes, self.tokenizer,
                                       self.config.train.eval_batches, self.mesh)
