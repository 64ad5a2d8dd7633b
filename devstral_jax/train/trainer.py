"""The training loop: build the sharded model and data, step, log, evaluate, checkpoint, resume, stop cleanly.

`train(config, workdir)` is idempotent: run it again on the same workdir and it resumes from the latest
complete checkpoint (trainable state, optimizer, RNG and data position), so a killed or preempted run
continues exactly where it stopped. SIGTERM (preemption) saves a checkpoint after the current step and returns.

`_setup` builds everything once and rejects a bad config before the first step; `_loop` then runs the steps,
and every `train.log_every` / `eval_every` / `checkpoint_every` steps (and at the last one) writes a metrics
record, measures the validation loss, or saves a checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import signal
import threading
import time
import zlib
from typing import Any, Callable

import grain
import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from tqdm import tqdm

from devstral_jax import sharding
from devstral_jax.checkpoint import Checkpointer, base_fingerprint
from devstral_jax.config import EXECUTION_FIELDS, ModelConfig, from_config_dict
from devstral_jax.data import curriculum, mixture
from devstral_jax.data.pipeline import DataSpec, make_dataset, step_inputs
from devstral_jax.errors import CheckpointError, ConfigError, TrainingError
from devstral_jax.hf.load import load as load_base
from devstral_jax.lora import LoRAParam
from devstral_jax.model import Transformer
from devstral_jax.tokenizers import Tokenizer, check_vocab, load_tokenizer, model_tokenizer
from devstral_jax.storage import absolute
from devstral_jax.train import config as train_config
from devstral_jax.train import ewc
from devstral_jax.train.fingerprint import allowed_changes, differences, run_fingerprint
from devstral_jax.train.metrics_log import MetricsLog
from devstral_jax.train.optim import make_optimizer
from devstral_jax.train.step import TrainState, init_state, jit_train_step, make_eval_step, make_train_step
from devstral_jax.train.utilization import flops_per_token, mfu, peak_device_memory_gb, peak_flops


@dataclasses.dataclass
class TrainResult:
    workdir: str
    last_step: int
    losses: dict[int, float]  # step -> training loss, for the steps this call ran
    eval_losses: dict[int, float]
    stopped_by_signal: bool = False
    summary: str = ""  # multi-stage runs: the forgetting table


def build_model(config: ml_collections.ConfigDict, model_config: ModelConfig,
                mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, nnx.State, nnx.State, str]:
    """(graphdef, LoRA state, frozen state, base source) with every array created directly in its sharding:
    a random base (`config.base == "random"`), or the checkpoint directory `config.base` streamed in."""
    if model_config.lora_rank == 0:
        raise TrainingError("config.model.lora_rank is 0: there is nothing to train. Set a LoRA rank (e.g. 16).")
    if config.base != "random":
        execution = {name: getattr(model_config, name) for name in EXECUTION_FIELDS}
        loaded = load_base(config.base, mesh=mesh, seed=config.seed, **execution)
        differing = [f for f in dataclasses.asdict(model_config) if f != "initializer_range"
                     and getattr(loaded.config, f) != getattr(model_config, f)]
        if differing:
            raise TrainingError(f"config.model disagrees with the checkpoint in {config.base} on {differing}; "
                                "set config.model from that checkpoint's preset (or its config.json).")
        graphdef, lora, frozen = nnx.split(loaded.model, LoRAParam, ...)
        return graphdef, lora, frozen, absolute(config.base)

    def create() -> tuple[nnx.State, nnx.State]:
        _, lora, frozen = nnx.split(Transformer(model_config, rngs=nnx.Rngs(config.seed)), LoRAParam, ...)
        return lora, frozen

    abstract = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(config.seed)))
    sharding.check_params(abstract, mesh)
    graphdef, abstract_lora, abstract_frozen = nnx.split(abstract, LoRAParam, ...)
    out_shardings = (sharding.state_shardings(abstract_lora, mesh), sharding.state_shardings(abstract_frozen, mesh))
    lora, frozen = jax.jit(create, out_shardings=out_shardings)()
    return graphdef, lora, frozen, f"random(seed={config.seed})"


def run_tokenizer(config: ml_collections.ConfigDict, model_config: ModelConfig) -> Tokenizer:
    """The run's tokenizer: `config.data.tokenizer` if set, else the base checkpoint's own, else the model family's
    packaged default; the model's embedding must hold its vocabulary (a default's must match it exactly)."""
    if config.data.tokenizer:
        tokenizer = load_tokenizer(config.data.tokenizer)
        check_vocab(tokenizer, model_config, "config.model")
        return tokenizer
    if config.base == "random":
        return model_tokenizer(None, model_config, "config.model")
    return model_tokenizer(config.base, model_config, f"config.base={config.base}")


def train_step_and_state(config: ml_collections.ConfigDict, model_config: ModelConfig, graphdef: nnx.GraphDef,
                         lora: nnx.State, frozen: nnx.State, mesh: jax.sharding.Mesh) -> tuple[Callable, TrainState]:
    """The jitted train step of `config` (optimizer, schedule, loss chunking, dropout) and its initial state
    placed on `mesh`: what the loop, the tests and benchmarks/train_step.py run."""
    tx, schedule = make_optimizer(config.optim, lora, model_config.num_layers, config.train.steps)
    anchor = ewc.anchor_for(config.ewc, lora)
    state = init_state(lora, tx, config.seed, anchor)
    strength = ewc.strength_schedule(config.ewc, config.train.steps) if anchor else None
    step_fn, state_shardings = jit_train_step(
        make_train_step(graphdef, tx, schedule, config.train.loss_chunk, model_config.lora_dropout > 0, strength),
        state, frozen, mesh)
    return step_fn, jax.device_put(state, state_shardings)


def data_spec(config: ml_collections.ConfigDict, split: str) -> DataSpec:
    d = config.data
    paths = d.train_paths if split == "train" else d.validation_paths
    return DataSpec(paths=tuple(paths), split=split, seq_len=d.seq_len, batch_size=d.batch_size,
                    microbatches=d.microbatches, seed=config.seed, shuffle=d.shuffle and split == "train",
                    num_epochs=1000 if split == "train" else 1, packing_bins=d.packing_bins,
                    worker_count=d.worker_count if split == "train" else 0, mixture=mixture.parse_mixture(d.mixture),
                    curriculum=curriculum.parse_curriculum(d.curriculum, config.train.steps))


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks after each step (then it saves and returns)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals can only be handled there
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    """Trains (or resumes training) to `config.train.steps` steps in `workdir`; multi-stage configs run each
    stage in `workdir/<stage name>`."""
    train_config.validate(config)
    if config.stages:
        from devstral_jax.train.stages import train_stages  # stages.py builds on this module

        return train_stages(config, workdir)
    if config.rehearsal.ratio > 0:
        raise ConfigError("config.rehearsal.ratio is set on a single-stage run: rehearsal replays an earlier "
                          "stage's prompts, so set it on a later stage of `config.stages`.")
    return train_run(config, workdir)


def train_run(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    """One run: set up, resume (or start), loop, plot. The checkpoint to resume from is read before the writing
    Checkpointer opens: its start-up clean-up of unfinished saves runs in a thread that an immediate exit (a
    refused checkpoint) would cut short with a traceback."""
    run, fresh = _setup(config, workdir)
    state = _resume_or_start(run, fresh)
    checkpoints = os.path.join(run.workdir, "checkpoints")
    with Checkpointer(checkpoints, keep_last=config.train.keep_checkpoints,
                      async_save=config.train.async_checkpoint) as checkpointer:  # closing waits for the last save
        checkpointer.set_aside_after(int(state.step))  # steps passed over at resume are redone
        log = MetricsLog(run.workdir, enabled=jax.process_index() == 0)
        result = _loop(run, state, checkpointer, log)
    log.close(plot=not result.stopped_by_signal)
    return result


@dataclasses.dataclass
class _Run:
    """What the loop works with, built once by `_setup`."""
    config: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    frozen: nnx.State  # the base: never donated, copied or differentiated
    step_fn: Callable[[TrainState, nnx.State, dict], tuple[TrainState, dict]]
    eval_fn: Callable[[nnx.State, nnx.State, dict], tuple[jax.Array, jax.Array]]
    train_batches: grain.DatasetIterator  # its position goes into every checkpoint
    validation: grain.IterDataset  # iterated from its start at every evaluation: the same batches each time
    meta: dict  # saved with every checkpoint: the config and its fingerprint, the base's source and fingerprint
    uniform_loss: float  # log(vocab_size): the loss of a model that predicts nothing
    flops_per_token: float
    peak_flops: float | None  # one device's; None: no MFU in the metrics


def _setup(config: ml_collections.ConfigDict, workdir: str) -> tuple[_Run, TrainState]:
    """The run's model, data and step functions, and a fresh train state; every config mistake raises here,
    before the first step."""
    workdir = _make_workdir(workdir)
    model_config = from_config_dict(config.model)
    mesh = sharding.make_mesh(config.mesh)
    _check_batch_shape(config, mesh)
    tokenizer = run_tokenizer(config, model_config)
    fingerprint = run_fingerprint(config, tokenizer.digest())
    allowed_changes(config, fingerprint)  # a misspelt name fails now, not at the next resume
    graphdef, lora, frozen, base_source = build_model(config, model_config, mesh)
    datasets = {split: make_dataset(data_spec(config, split), tokenizer, jax.process_index(), jax.process_count())
                for split in ("train", "validation")}
    step_fn, fresh = train_step_and_state(config, model_config, graphdef, lora, frozen, mesh)
    meta = dict(config=json.loads(config.to_json_best_effort()), fingerprint=fingerprint, base_source=base_source,
                base_fingerprint=base_fingerprint(frozen), model=dataclasses.asdict(model_config))
    run = _Run(config=config, workdir=workdir, mesh=mesh, frozen=frozen, step_fn=step_fn,
               eval_fn=jax.jit(make_eval_step(graphdef, config.train.loss_chunk)),
               train_batches=iter(datasets["train"]), validation=datasets["validation"],
               meta=meta, uniform_loss=math.log(model_config.vocab_size),
               flops_per_token=flops_per_token(model_config, lora, config.data.seq_len),
               peak_flops=peak_flops(config))
    return run, fresh


def _check_batch_shape(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """The batch must split into loss chunks along the sequence and over the data-parallel devices along rows."""
    if config.data.seq_len % config.train.loss_chunk:
        raise TrainingError(f"data.seq_len={config.data.seq_len} is not a multiple of train.loss_chunk="
                            f"{config.train.loss_chunk}.")
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if (config.data.batch_size // config.data.microbatches) % data_parallel:
        raise TrainingError(f"Each microbatch has {config.data.batch_size // config.data.microbatches} rows "
                            f"(data.batch_size / data.microbatches), which the {data_parallel} data-parallel "
                            "devices (mesh data x fsdp) cannot split evenly.")


def _make_workdir(workdir: str) -> str:
    """`workdir` made absolute (a URL stays one) and created."""
    workdir = absolute(workdir)
    try:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"Cannot use {workdir} as the workdir: {e.strerror or e}. Pass a directory.") from None
    return workdir


def _resume_or_start(run: _Run, fresh: TrainState) -> TrainState:
    """The newest verified checkpoint's state, with the data iterator moved to where it was; else `fresh`, with a
    previous stage's adapters if `train.init_adapters_from` names one."""
    fingerprint = run.meta["base_fingerprint"]
    checkpoints = os.path.join(run.workdir, "checkpoints")
    if epath.Path(checkpoints).is_dir():
        with Checkpointer(checkpoints, read_only=True) as checkpointer:
            if checkpointer.all_steps():
                state, data_state, _ = checkpointer.restore(abstract(fresh), expected_fingerprint=fingerprint,
                                                            check_meta=functools.partial(_check_same_run, run))
                run.train_batches.set_state(data_state)
                logging.info("Resumed from step %d of %s", int(state.step), run.workdir)
                return state
    if run.config.train.init_adapters_from:
        names = ("lora", "opt_state") if run.config.train.keep_optimizer else ("lora",)
        part = final_part(run.config.train.init_adapters_from, {n: abstract(getattr(fresh, n)) for n in names},
                          fingerprint)
        return dataclasses.replace(fresh, **part)
    return fresh


def _check_same_run(run: _Run, step: int, meta: dict) -> None:
    """Refuses to resume a checkpoint made with settings that change what the run computes (fingerprint.py),
    unless `train.allow_changes` names them."""
    now = run.meta["fingerprint"]
    if changed := differences(meta.get("fingerprint", {}), now, allowed_changes(run.config, now)):
        names = ",".join(change.split(" ")[0] for change in changed)
        raise CheckpointError(
            f"Cannot resume {run.workdir} from step {step}: {'; '.join(changed)} differ from the settings it was "
            f"trained with, so it would not continue the same run. Use the saved settings, a new workdir, or "
            f"--config.train.allow_changes={names} to accept the change.")


def _loop(run: _Run, state: TrainState, checkpointer: Checkpointer, log: MetricsLog) -> TrainResult:
    """Steps from `state.step` to `train.stop_at` (or `train.steps`); a SIGTERM ends it after a checkpoint.

    The host never waits for a step before sending the next one: step n's metrics are read (logged, and checked
    by the NaN guard and the dead-run check, which therefore stop the run one step late) while step n+1 runs, as
    MaxText's one-step-behind logging does. At a step that is evaluated or checkpointed (and at a SIGTERM) its
    own metrics are read first, so what is saved and measured is exactly that step's."""
    train = run.config.train
    start = int(state.step)
    stop_at = min(train.stop_at or train.steps, train.steps)
    result = TrainResult(run.workdir, start, {}, {})
    monitor = _Monitor(run, log, result, stop_at, start, int(state.bad_steps_in_a_row), int(state.skipped_steps))
    pending = None  # the step dispatched last, whose metrics have not been read
    with _SigtermFlag() as sigterm, tqdm(total=train.steps, initial=start, desc="train", unit="step",
                                         disable=jax.process_index() != 0) as progress:
        monitor.progress = progress
        for step in range(start, stop_at):
            host_batch = next(run.train_batches)
            state, metrics = run.step_fn(state, run.frozen, sharding.place_batch(step_inputs(host_batch), run.mesh))
            if pending is not None:
                monitor.read(pending)
            done = step + 1
            pending = _Dispatched(done, metrics, host_batch)
            last, stopping = done == stop_at, sigterm.raised
            evaluate = done % train.eval_every == 0 or last
            save = done % train.checkpoint_every == 0 or last or stopping
            if evaluate or save:
                monitor.read(pending)
                pending = None
            eval_loss = None
            if evaluate:
                eval_loss = result.eval_losses[done] = _validation_loss(run, state.lora)
                log.write(dict(step=done, eval_loss=eval_loss, eval_perplexity=math.exp(min(eval_loss, 50))))
            if save:
                checkpointer.save(done, state, run.train_batches.get_state(), run.meta, eval_loss=eval_loss,
                                  force=stopping)
            progress.update(1)
            result.last_step = done
            if stopping:
                result.stopped_by_signal = True
                logging.warning("SIGTERM: saved step %d to %s and stopped.", done, run.workdir)
                break
    return result


@dataclasses.dataclass
class _Dispatched:
    """A step sent to the devices: its metrics stay device arrays until the host reads them."""
    step: int  # the step count once it has run
    metrics: dict[str, jax.Array]
    host_batch: dict[str, np.ndarray]


class _Monitor:
    """Reads each step's metrics once, in order: the loss for the result, the metrics log, the NaN guard and the
    dead-run check. It mirrors the train state's non-finite counters from each step's `finite` flag instead of
    reading them from the state (donated to the next step by then)."""

    def __init__(self, run: _Run, log: MetricsLog, result: TrainResult, stop_at: int, start: int,
                 bad_steps_in_a_row: int, skipped_steps: int):
        self.run, self.log, self.result, self.stop_at = run, log, result, stop_at
        self.bad_steps_in_a_row, self.skipped_steps = bad_steps_in_a_row, skipped_steps
        self.dead = 0  # steps in a row at the uniform loss with a zero gradient
        self.logged_step, self.logged_time = start, time.perf_counter()
        self.progress: tqdm | None = None

    def read(self, dispatched: _Dispatched) -> None:
        train, done = self.run.config.train, dispatched.step
        metrics = {name: value.item() for name, value in jax.device_get(dispatched.metrics).items()}
        finite = bool(metrics["finite"])
        self.bad_steps_in_a_row = 0 if finite else self.bad_steps_in_a_row + 1
        self.skipped_steps += not finite
        self.result.losses[done] = metrics["loss"]
        if self.bad_steps_in_a_row >= train.max_bad_steps:
            raise TrainingError(f"{train.max_bad_steps} non-finite steps in a row at step {done} "
                                "(loss or gradient NaN/Inf): lower optim.learning_rate or check the data.")
        if done % train.log_every == 0 or done == self.stop_at:
            seconds = (time.perf_counter() - self.logged_time) / (done - self.logged_step)
            record = _step_record(self.run, done, self.skipped_steps, metrics, dispatched.host_batch, seconds)
            self.log.write(record)
            if self.progress is not None:
                self.progress.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            self.logged_step, self.logged_time = done, time.perf_counter()
        self.dead = _stop_if_dead(self.run, done, self.dead, metrics["loss"], metrics["grad_norm"])


def _stop_if_dead(run: _Run, step: int, dead: int, loss: float, grad_norm: float) -> int:
    """Counts the steps in a row at the uniform loss with a zero gradient (a model whose output ignores its input,
    e.g. broken weights, which can never learn) and ends the run at `train.dead_steps` of them."""
    dead = dead + 1 if abs(loss - run.uniform_loss) < 1e-4 * run.uniform_loss and grad_norm < 1e-8 else 0
    if run.config.train.dead_steps and dead >= run.config.train.dead_steps:
        raise TrainingError(
            f"The loss has been {loss:.4f} = log(vocab_size), the uniform distribution, with a zero gradient for "
            f"{dead} steps (to step {step}): the model's output ignores its input and cannot learn, so its weights "
            "are broken (e.g. a corrupted base or checkpoint). Check config.base and the workdir's checkpoints, or "
            "set train.dead_steps=0 to train anyway.")
    return dead


def _step_record(run: _Run, step: int, skipped_steps: int, metrics: dict[str, float],
                 host_batch: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
    """One metrics.jsonl line: the step's loss and optimizer figures, speed, and which data it saw."""
    tokens_per_step = run.config.data.batch_size * run.config.data.seq_len
    record = dict(step=step, loss=metrics["loss"], grad_norm=metrics["grad_norm"],
                  learning_rate=metrics["learning_rate"], skipped_steps=skipped_steps,
                  tokens_per_s=tokens_per_step / seconds, seconds_per_step=seconds,
                  batch_crc32=zlib.crc32(host_batch["inputs"].tobytes()),
                  **mixture.tally_metrics(run.config.data.mixture, host_batch),
                  **curriculum.tally_metrics(run.config.data.curriculum, host_batch))
    if "ewc_penalty" in metrics:
        record["ewc_penalty"] = float(metrics["ewc_penalty"])
    if run.peak_flops:
        record["mfu"] = mfu(run.flops_per_token * tokens_per_step / seconds, run.peak_flops)
    if (memory := peak_device_memory_gb()) is not None:
        record["device_memory_gb"] = memory
    return record


def _validation_loss(run: _Run, lora: nnx.State) -> float:
    """Mean validation loss per target token over the first `train.eval_batches` validation batches."""
    total, count = 0.0, 0.0
    for _, batch in zip(range(run.config.train.eval_batches), run.validation):
        loss, tokens = run.eval_fn(lora, run.frozen, sharding.place_batch(batch, run.mesh))
        total, count = total + float(loss), count + float(tokens)
    if count == 0:
        raise TrainingError("The validation data gave no batch: add validation records (split 'validation') or "
                            "lower data.batch_size.")
    return total / count


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of placed arrays: what Orbax restores into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def final_part(workdir: str, abstract_part: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """Parts of the final train state of a previous stage's run: its adapters (`lora`), and its optimizer state
    (`opt_state`) when asked for (train.keep_optimizer; the optimizer must then be built the same way)."""
    if not is_workdir(workdir):
        raise TrainingError(f"init_adapters_from={workdir!r} is not a training workdir (it has no checkpoints/).")
    with Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as checkpointer:
        part, _ = checkpointer.restore_part(abstract_part, expected_fingerprint=fingerprint)
    return part


def is_workdir(path: str) -> bool:
    """Whether `path` (local or a URL) is a training workdir: it has checkpoints."""
    return epath.Path(path, "checkpoints").is_dir()


def restore_trained_model(workdir: str, checkpoint: str = "best") -> tuple[Transformer, ModelConfig, dict]:
    """The model of a training workdir (base rebuilt from its recorded source + trained adapters) for
    evaluation, export and generation: (model, model config, checkpoint meta). `checkpoint` is "best" (the lowest
    validation loss: what the run learnt best, kept by retention for this), "latest" or a step number; which one
    was restored, and why, is recorded in the meta as `checkpoint` (its `why` is the line to show). Reads only
    the adapters."""
    with Checkpointer(os.path.join(absolute(workdir), "checkpoints"), read_only=True) as checkpointer:
        step, why = checkpointer.chosen_step(str(checkpoint))
        meta = checkpointer.restore_meta(step)
        config = ml_collections.ConfigDict(meta["config"])
        model_config = from_config_dict(config.model)
        mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
        graphdef, lora, frozen, _ = build_model(config, model_config, mesh)
        part, meta = checkpointer.restore_part({"lora": abstract(lora)}, step,
                                               expected_fingerprint=base_fingerprint(frozen))
        eval_loss = checkpointer.eval_losses().get(step)
    meta = dict(meta, checkpoint=dict(workdir=workdir, step=step, asked=str(checkpoint), eval_loss=eval_loss,
                                      why=why))
    return nnx.merge(graphdef, part["lora"], frozen), model_config, meta
