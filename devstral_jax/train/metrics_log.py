"""Where training metrics go: `metrics.jsonl` (one JSON object per line), TensorBoard, and PNGs at the end: the
loss curves, and for a curriculum the admitted difficulty and the tokens seen per difficulty bucket. The workdir
may be a bucket URL: there metrics.jsonl, which an object store cannot append to, is written whole each time (it
is small)."""

from __future__ import annotations

import json
import os

import matplotlib
from etils import epath

from devstral_jax.data.curriculum import ADMITTED, TOKENS_SEEN
from devstral_jax.storage import is_remote

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402


class MetricsLog:
    def __init__(self, workdir: str, enabled: bool = True):
        self.workdir, self.enabled = workdir, enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._writer = SummaryWriter(os.path.join(workdir, "tensorboard")) if enabled else None
        self._text = None  # a remote metrics.jsonl as written so far

    def write(self, record: dict) -> None:
        """Appends `record` (which has a `step`) to metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        if is_remote(self.path):
            if self._text is None:
                self._text = epath.Path(self.path).read_text() if epath.Path(self.path).exists() else ""
            self._text += line
            epath.Path(self.path).write_text(self._text)
        else:
            with open(self.path, "a") as f:
                f.write(line)
        for key, value in record.items():
            if key != "step":
                self._writer.add_scalar(key, value, record["step"])

    def close(self, plot: bool = True) -> None:
        if not self.enabled:
            return
        self._writer.close()
        if plot:
            plot_losses(self.path, os.path.join(self.workdir, "loss.png"))
            plot_curriculum(self.path, os.path.join(self.workdir, "curriculum.png"))


def read_metrics(path: str) -> list[dict]:
    return [json.loads(line) for line in epath.Path(path).read_text().splitlines() if line.strip()]


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
    _save(fig, png_path)


def plot_curriculum(metrics_path: str, png_path: str) -> None:
    """A curriculum run's admitted difficulty and tokens seen per difficulty bucket against step; nothing for a
    run without a curriculum."""
    records = {r["step"]: r for r in read_metrics(metrics_path) if ADMITTED in r}
    if not records:
        return
    steps = sorted(records)
    buckets = [key for key in records[steps[-1]] if key.startswith(TOKENS_SEEN)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.step(steps, [records[s][ADMITTED] for s in steps], where="post")
    top.set_ylabel("admitted difficulty")
    top.set_ylim(0, 1.05)
    for key in buckets:
        bottom.plot(steps, [records[s][key] for s in steps], label=key[len(TOKENS_SEEN):])
    bottom.set_xlabel("step")
    bottom.set_ylabel("tokens seen")
    bottom.legend(title="difficulty bucket")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    _save(fig, png_path)


def _save(fig: plt.Figure, png_path: str) -> None:
    fig.tight_layout()
    with epath.Path(png_path).open("wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
