"""How much a stage forgets: perplexity of the model after each stage on a held-out general-code set that is not
Elixir (devstral_jax/data/general_code/, Python standard-library modules, PSF licence) and on every stage's
validation data, as a table (stages x probe sets) and a PNG.

A probe is the first `batches` batches of its validation records (unshuffled, so every stage reads the same
rows); perplexity = exp(mean cross-entropy per target token).
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from flax import nnx  # noqa: E402

from devstral_jax import sharding  # noqa: E402
from devstral_jax.data.pipeline import DataSpec, make_dataset  # noqa: E402
from devstral_jax.errors import TrainingError  # noqa: E402
from devstral_jax.tokenizers import Tokenizer  # noqa: E402

GENERAL_CODE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "general_code",
                            "python_stdlib.jsonl")
EvalStep = Callable[[nnx.State, nnx.State, dict], tuple[jax.Array, jax.Array]]
Table = dict[str, dict[str, float]]  # model (base, stage name) -> probe set -> perplexity


def general_code_spec(seq_len: int, batch_size: int) -> DataSpec:
    return DataSpec(paths=(GENERAL_CODE,), split="validation", seq_len=seq_len, batch_size=batch_size,
                    shuffle=False, num_epochs=1)


def perplexities(eval_step: EvalStep, lora: nnx.State, frozen: nnx.State, probes: dict[str, DataSpec],
                 tokenizer: Tokenizer, batches: int, mesh: jax.sharding.Mesh) -> dict[str, float]:
    """{probe: perplexity} of the model (lora, frozen) over each probe's first `batches` batches; `eval_step` is
    the jitted `step.make_eval_step` of its graph, shared by every model of a run (compiled once)."""
    result = {}
    for name, spec in probes.items():
        total, count = 0.0, 0.0
        for _, batch in zip(range(batches), make_dataset(spec, tokenizer)):
            loss, tokens = eval_step(lora, frozen, sharding.place_batch(batch, mesh))
            total, count = total + float(loss), count + float(tokens)
        if count == 0:
            raise TrainingError(f"The forgetting probe {name!r} gave no batch of {spec.batch_size} rows: give it more "
                                "validation records or lower data.batch_size.")
        result[name] = math.exp(min(total / count, 50.0))
    return result


def format_table(table: Table) -> str:
    """A Markdown table: one row per model (the base, then each stage), one column per probe set."""
    probes = list(next(iter(table.values())))
    lines = ["| after | " + " | ".join(probes) + " |", "|---|" + "---:|" * len(probes)]
    lines += [f"| {model} | " + " | ".join(f"{row[p]:.2f}" for p in probes) + " |" for model, row in table.items()]
    return "\n".join(lines)


def write_report(table: Table, workdir: str) -> str:
    """forgetting.json, forgetting.md and forgetting.png in `workdir`; returns the Markdown table."""
    text = format_table(table)
    with open(os.path.join(workdir, "forgetting.json"), "w") as f:
        json.dump(table, f, indent=1)
    with open(os.path.join(workdir, "forgetting.md"), "w") as f:
        f.write("Perplexity after each stage (lower is better; a rise on an earlier set is forgetting)\n\n"
                + text + "\n")
    models = list(table)
    fig, ax = plt.subplots(figsize=(7, 4))
    for probe in next(iter(table.values())):
        ax.plot(models, [table[m][probe] for m in models], "o-", label=probe)
    ax.set_yscale("log")
    ax.set_xlabel("model after")
    ax.set_ylabel("perplexity")
    ax.set_title("Forgetting across stages")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "forgetting.png"), dpi=120)
    plt.close(fig)
    return text
