"""QLoRA fine-tuning: `python launch/train.py --config=configs/<file>.py --workdir=DIR [--config.x.y=...]`.

Running it again on the same workdir resumes from the latest checkpoint; SIGTERM saves and exits.
Multi-host: pass --coordinator/--num_processes/--process_id, or let JAX read SLURM / Open MPI / TPU pod env.
"""

from __future__ import annotations

import logging

from absl import flags
from ml_collections import config_flags

from devstral_jax.cli import run
from devstral_jax.errors import FlagError
from devstral_jax.sharding import maybe_initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file, e.g. configs/tiny_cpu.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl, TensorBoard logs and loss.png go.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise FlagError(f"Unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    from devstral_jax.train.trainer import train  # after flags: jax.distributed must come first

    maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    result = train(_CONFIG.value, _WORKDIR.value)
    losses = result.eval_losses
    print(f"trained to step {result.last_step} in {result.workdir}"
          + (" (stopped by SIGTERM; run again to resume)" if result.stopped_by_signal else ""))
    if losses:
        first, last = min(losses), max(losses)
        print(f"validation loss: {losses[first]:.4f} at step {first} -> {losses[last]:.4f} at step {last}")
    print(f"outputs: {result.workdir}/checkpoints, metrics.jsonl, tensorboard/, loss.png")
    if result.summary:
        print(result.summary)


if __name__ == "__main__":
    run(main)
