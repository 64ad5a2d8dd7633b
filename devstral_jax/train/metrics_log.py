"""Where training metrics go: `metrics.jsonl` (one JSON object per line), TensorBoard, and a PNG of the
loss curves at the end."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402


class MetricsLog:
    def __init__(self, workdir: str, enabled: bool = True):
        self.workdir, self.enabled = workdir, enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._writer = SummaryWriter(os.path.join(workdir, "tensorboard")) if enabled else None

    def write(self, record: dict) -> None:
        """Appends `record` (which has a `step`) to metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step":
                self._writer.add_scalar(key, value, record["step"])

    def close(self, plot: bool = True) -> None:
        if not self.enabled:
            return
        self._writer.close()
        if plot:
            plot_losses(self.path, os.path.join(self.workdir, "loss.png"))


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_losses(metrics_path: str, png_path: str) -> None:
    """Training and validation loss against step (a resumed run's repeated steps keep their last value)."""
    records = read_metrics(metrics_path)
    train = {r["step"]: r["loss"] for r in records if "loss" in r}
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(sorted(train), [train[s] for s in sorted(train)], label="train loss")
    if evals:
        ax.plot(sorted(evals), [evals[s] for s in sorted(evals)], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy per token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
