"""The training loop: build the sharded model and data, step, log, evaluate, checkpoint, resume, stop cleanly.

`train(config, workdir)` is idempotent: run it again on the same workdir and it resumes from the latest
complete checkpoint (trainable state, optimizer, RNG and data position), so a killed or preempted run
continues exactly where it stopped. SIGTERM (preemption) saves a checkpoint and returns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
import zlib
from typing import Any

import jax
import ml_collections
from flax import nnx
from tqdm import tqdm

from devstral_jax import sharding
from devstral_jax.checkpoint import Checkpointer, base_fingerprint
from devstral_jax.config import EXECUTION_FIELDS, ModelConfig, from_config_dict
from devstral_jax.data.pipeline import DataSpec, make_dataset
from devstral_jax.data.tokenize import RecordTokenizer
from devstral_jax.errors import TrainingError
from devstral_jax.hf.load import load as load_base
from devstral_jax.lora import LoRAParam
from devstral_jax.model import Transformer
from devstral_jax.train import config as train_config
from devstral_jax.train.metrics_log import MetricsLog
from devstral_jax.train.optim import make_optimizer
from devstral_jax.train.step import TrainState, init_state, jit_train_step, make_eval_step, make_train_step

# Measured dense bf16 matmul peaks (DESIGN.md: MFU = achieved / measured peak of the device).
KNOWN_PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0}


@dataclasses.dataclass
class TrainResult:
    workdir: str
    last_step: int
    losses: dict[int, float]  # step -> training loss, for the steps this call ran
    eval_losses: dict[int, float]
    stopped_by_signal: bool = False


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
        return graphdef, lora, frozen, os.path.abspath(config.base)

    def create() -> tuple[nnx.State, nnx.State]:
        _, lora, frozen = nnx.split(Transformer(model_config, rngs=nnx.Rngs(config.seed)), LoRAParam, ...)
        return lora, frozen

    abstract = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(config.seed)))
    sharding.check_params(abstract, mesh)
    graphdef, abstract_lora, abstract_frozen = nnx.split(abstract, LoRAParam, ...)
    out_shardings = (sharding.state_shardings(abstract_lora, mesh), sharding.state_shardings(abstract_frozen, mesh))
    lora, frozen = jax.jit(create, out_shardings=out_shardings)()
    return graphdef, lora, frozen, f"random(seed={config.seed})"


def flops_per_token(model_config: ModelConfig, lora: nnx.State, seq_len: int) -> float:
    """DESIGN.md's accounting: 4 N_frozen (forward + input gradient) + 6 N_lora + causal attention 6 L H Q T."""
    c = model_config
    frozen_matmul = c.num_params - c.vocab_size * c.hidden_size - (2 * c.num_layers + 1) * c.hidden_size
    n_lora = sum(x.size for x in jax.tree.leaves(lora))
    attention = 6 * c.num_layers * c.num_heads * c.head_dim * seq_len
    return 4 * frozen_matmul + 6 * n_lora + attention


def _peak_flops(config: ml_collections.ConfigDict) -> float | None:
    if config.train.peak_tflops:
        return config.train.peak_tflops * 1e12
    kind = jax.devices()[0].device_kind
    return next((tflops * 1e12 for name, tflops in KNOWN_PEAK_TFLOPS.items() if name in kind), None)


def _device_memory_gb() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return peak / 1e9 if peak is not None else None


def _data_spec(config: ml_collections.ConfigDict, split: str) -> DataSpec:
    d = config.data
    paths = d.train_paths if split == "train" else d.validation_paths
    return DataSpec(paths=tuple(paths), split=split, seq_len=d.seq_len, batch_size=d.batch_size,
                    microbatches=d.microbatches, seed=config.seed, shuffle=d.shuffle and split == "train",
                    num_epochs=1000 if split == "train" else 1, packing_bins=d.packing_bins,
                    worker_count=d.worker_count if split == "train" else 0)


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
        return _train_stages(config, workdir)
    return _train_single(config, workdir)


def _train_stages(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    previous, result = config.train.init_adapters_from, None
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
        stage_config.train.init_adapters_from = previous
        logging.info("Stage %s", name)
        result = _train_single(stage_config, os.path.join(workdir, name))
        previous = result.workdir
    return result


def _train_single(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    model_config = from_config_dict(config.model)
    if config.data.seq_len % config.train.loss_chunk:
        raise TrainingError(f"data.seq_len={config.data.seq_len} is not a multiple of train.loss_chunk="
                            f"{config.train.loss_chunk}.")
    mesh = sharding.make_mesh(config.mesh)
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if (config.data.batch_size // config.data.microbatches) % data_parallel:
        raise TrainingError(f"Each microbatch has {config.data.batch_size // config.data.microbatches} rows "
                            f"(data.batch_size / data.microbatches), which the {data_parallel} data-parallel "
                            "devices (mesh data x fsdp) cannot split evenly.")
    graphdef, lora, frozen, base_source = build_model(config, model_config, mesh)
    fingerprint = base_fingerprint(frozen)
    tokenizer = RecordTokenizer(config.data.tokenizer or None)
    if model_config.vocab_size < tokenizer.vocab_size:
        raise TrainingError(f"model.vocab_size={model_config.vocab_size} is smaller than the tokenizer's "
                            f"{tokenizer.vocab_size} tokens.")
    train_data = make_dataset(_data_spec(config, "train"), tokenizer, jax.process_index(), jax.process_count())
    train_iter = iter(train_data)

    tx, schedule = make_optimizer(config.optim, lora, model_config.num_layers, config.train.steps)
    state = init_state(lora, tx, config.seed)
    step_fn, state_shardings = jit_train_step(
        make_train_step(graphdef, tx, schedule, config.train.loss_chunk, model_config.lora_dropout > 0),
        state, frozen, mesh)
    state = jax.device_put(state, state_shardings)
    eval_fn = jax.jit(make_eval_step(graphdef, config.train.loss_chunk))

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep_last=config.train.keep_checkpoints,
                                async_save=config.train.async_checkpoint)
    meta = dict(config=json.loads(config.to_json_best_effort()), base_source=base_source,
                base_fingerprint=fingerprint, model=dataclasses.asdict(model_config))
    abstract_state = _abstract(state)
    if checkpointer.latest_step() is not None:
        state, data_state, _ = checkpointer.restore(abstract_state, expected_fingerprint=fingerprint)
        train_iter.set_state(data_state)
        logging.info("Resumed from step %d of %s", int(state.step), workdir)
    elif config.train.init_adapters_from:
        state = dataclasses.replace(state, lora=_adapters_from(config.train.init_adapters_from, abstract_state,
                                                                fingerprint))

    log = MetricsLog(workdir, enabled=jax.process_index() == 0)
    flops = flops_per_token(model_config, state.lora, config.data.seq_len)
    peak = _peak_flops(config)
    tokens_per_step = config.data.batch_size * config.data.seq_len
    start_step = int(state.step)
    result = TrainResult(workdir, start_step, {}, {})
    progress = tqdm(total=config.train.steps, initial=start_step, desc="train", unit="step",
                    disable=jax.process_index() != 0)
    with _SigtermFlag() as sigterm:
        logged_step, logged_time = start_step, time.perf_counter()
        stop_at = min(config.train.stop_at or config.train.steps, config.train.steps)
        for step in range(start_step, stop_at):
            host_batch = next(train_iter)
            state, metrics = step_fn(state, frozen, sharding.place_batch(host_batch, mesh))
            if int(state.bad_steps_in_a_row) >= config.train.max_bad_steps:
                raise TrainingError(f"{config.train.max_bad_steps} non-finite steps in a row at step {step + 1} "
                                    "(loss or gradient NaN/Inf): lower optim.learning_rate or check the data.")
            done = step + 1
            loss = float(metrics["loss"])
            result.losses[done] = loss
            last = done == stop_at
            if done % config.train.log_every == 0 or last:
                seconds = (time.perf_counter() - logged_time) / (done - logged_step)
                record = dict(step=done, loss=loss, grad_norm=float(metrics["grad_norm"]),
                              learning_rate=float(metrics["learning_rate"]), skipped_steps=int(state.skipped_steps),
                              tokens_per_s=tokens_per_step / seconds, seconds_per_step=seconds,
                              batch_crc32=zlib.crc32(host_batch["inputs"].tobytes()))  # which data it saw
                if peak:
                    record["mfu"] = flops * tokens_per_step / seconds / (peak * jax.device_count())
                if (memory := _device_memory_gb()) is not None:
                    record["device_memory_gb"] = memory
                log.write(record)
                progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                logged_step, logged_time = done, time.perf_counter()
            eval_loss = None
            if done % config.train.eval_every == 0 or last:
                eval_loss = evaluate(eval_fn, state.lora, frozen, config, tokenizer, mesh)
                result.eval_losses[done] = eval_loss
                log.write(dict(step=done, eval_loss=eval_loss, eval_perplexity=math.exp(min(eval_loss, 50))))
            if done % config.train.checkpoint_every == 0 or last or sigterm.raised:
                checkpointer.save(done, state, train_iter.get_state(), meta, eval_loss=eval_loss,
                                  force=sigterm.raised)
            progress.update(1)
            result.last_step = done
            if sigterm.raised:
                result.stopped_by_signal = True
                logging.warning("SIGTERM: saved step %d to %s and stopped.", done, workdir)
                break
    progress.close()
    checkpointer.wait()
    checkpointer.close()
    log.close(plot=not result.stopped_by_signal)
    return result


def evaluate(eval_fn, lora: nnx.State, frozen: nnx.State, config: ml_collections.ConfigDict,
             tokenizer: RecordTokenizer, mesh: jax.sharding.Mesh) -> float:
    """Mean validation loss per target token over `train.eval_batches` batches (the same batches every time)."""
    data = iter(make_dataset(_data_spec(config, "validation"), tokenizer, jax.process_index(), jax.process_count()))
    total, count = 0.0, 0.0
    for _ in range(config.train.eval_batches):
        try:
            batch = next(data)
        except StopIteration:
            break
        loss, tokens = eval_fn(lora, frozen, sharding.place_batch(batch, mesh))
        total, count = total + float(loss), count + float(tokens)
    if count == 0:
        raise TrainingError("The validation data gave no batch: add validation records (split 'validation') or "
                            "lower data.batch_size.")
    return total / count


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of placed arrays: what Orbax restores into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _adapters_from(workdir: str, abstract_state: TrainState, fingerprint: str) -> nnx.State:
    """The final LoRA parameters of a previous stage's run (its optimizer state is not carried over)."""
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    if checkpointer.latest_step() is None:
        raise TrainingError(f"init_adapters_from={workdir!r} holds no checkpoint.")
    state, _, _ = checkpointer.restore(abstract_state, expected_fingerprint=fingerprint)
    checkpointer.close()
    return state.lora


def restore_trained_model(workdir: str, step: int | None = None) -> tuple[Transformer, ModelConfig, dict]:
    """The model of a training workdir (base rebuilt from its recorded source + trained adapters) for
    evaluation and export: (model, model config, checkpoint meta)."""
    checkpointer = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"), async_save=False)
    meta = checkpointer.restore_meta(step)
    config = ml_collections.ConfigDict(meta["config"])
    model_config = from_config_dict(config.model)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    graphdef, lora, frozen, _ = build_model(config, model_config, mesh)
    tx, _ = make_optimizer(config.optim, lora, model_config.num_layers, config.train.steps)
    abstract = _abstract(init_state(lora, tx, config.seed))
    state, _, meta = checkpointer.restore(abstract, step, expected_fingerprint=base_fingerprint(frozen))
    checkpointer.close()
    return nnx.merge(graphdef, state.lora, frozen), model_config, meta

