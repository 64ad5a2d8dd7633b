"""No host sync per step: the training loop sends step n+1 to the device before it reads step n's metrics."""

import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

from devstral_jax.checkpoint import Checkpointer
from devstral_jax.train import trainer
from devstral_jax.train.config import sibling_config
from devstral_jax.train.metrics_log import MetricsLog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
PATIENCE_S = 120  # only ends a wait that would otherwise never end (the loop under test syncing on a gated step)


def _config():
    config = sibling_config(os.path.join(ROOT, "configs", "x.py"), "tiny_cpu")
    config.model.num_layers = 1
    config.data.seq_len, config.data.batch_size = 32, 8
    config.train.update(dict(steps=STEPS, loss_chunk=32, log_every=1, eval_every=100, eval_batches=1,
                             checkpoint_every=100))
    return config


class _RecordingLog(MetricsLog):
    """The real metrics log, noting when each step's training metrics reach it (the loop has read them)."""

    def __init__(self, workdir, events):
        super().__init__(workdir)
        self.events = events

    def write(self, record):
        if "loss" in record:
            self.events.append(("read", record["step"]))
        super().write(record)


def test_step_n_plus_1_is_dispatched_before_step_n_metrics_are_read(tmp_path):
    """Each step's loss is held back on the device until the host dispatches the next step: a loop that waited
    for step n's metrics before sending step n+1 would wait for ever (the gate gives up after PATIENCE_S, and the
    test fails). The recorded order shows each "dispatched step n+1" before "read metrics of step n"; only the
    last step, which is evaluated and checkpointed, is read at once."""
    run, fresh = trainer._setup(_config(), str(tmp_path / "run"))
    events, gates, gave_up = [], [threading.Event() for _ in range(STEPS)], []
    gates[-1].set()  # the last step's metrics are read before the checkpoint: nothing follows it

    def wait_for_next_dispatch(loss, step):
        if not gates[int(step)].wait(PATIENCE_S):
            gave_up.append(int(step))
            for other in gates:  # fail once, not once per step
                other.set()
        return loss

    gate = jax.jit(lambda loss, step: jax.pure_callback(
        wait_for_next_dispatch, jax.ShapeDtypeStruct(loss.shape, loss.dtype), loss, step))
    step_fn = run.step_fn

    def gated_step(state, frozen, batch):
        n = sum(kind == "dispatch" for kind, _ in events)
        events.append(("dispatch", n + 1))
        if n:
            gates[n - 1].set()  # step n may now finish
        state, metrics = step_fn(state, frozen, batch)
        return state, dict(metrics, loss=gate(metrics["loss"], jnp.int32(n)))

    run.step_fn = gated_step
    with Checkpointer(os.path.join(run.workdir, "checkpoints")) as checkpointer:
        result = trainer._loop(run, fresh, checkpointer, _RecordingLog(run.workdir, events))

    assert not gave_up, f"the loop waited for step(s) {gave_up} before dispatching the next one"
    assert result.last_step == STEPS and all(np.isfinite(list(result.losses.values())))
    order = {event: i for i, event in enumerate(events)}
    for n in range(1, STEPS):
        assert order["dispatch", n + 1] < order["read", n], events
    assert order["dispatch", STEPS] < order["read", STEPS], events
