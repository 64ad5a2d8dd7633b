"""Evaluation outputs: every sample (results.jsonl), the metrics (summary.json), a markdown table and a chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from devstral_jax.eval.metrics import Sample

_OUTPUT_CHARS = 4000  # of each sample's stdout/stderr kept in results.jsonl


def write_results(path: Path, benchmark: str, samples: Sequence[Sample]) -> None:
    """Appends one line per sample: the completion, its verdict, its time and (the start of) its output."""
    with path.open("a", encoding="utf-8") as f:
        for sample in samples:
            verdict = sample.verdict.to_dict()
            verdict["stdout"], verdict["stderr"] = verdict["stdout"][:_OUTPUT_CHARS], verdict["stderr"][:_OUTPUT_CHARS]
            f.write(json.dumps({"benchmark": benchmark, "problem": sample.problem, "sample": sample.index,
                                "completion": sample.completion, **verdict}, ensure_ascii=False) + "\n")


def markdown_table(summaries: dict[str, dict]) -> str:
    """One row per benchmark: pass@k, compile and style rates, the MultiPL-E status counts."""
    ks = sorted({key for s in summaries.values() for key in s["pass@k"]}, key=lambda key: int(key.split("@")[1]))
    columns = ["benchmark", "problems", "samples", *ks, "compiles", "no warnings", "formatted", "chrF", "BLEU",
               "exact", "OK / Assert / Syntax / Exception / Timeout"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, s in summaries.items():
        cells = [name, str(s["problems"]), str(s["samples"]),
                 *(_percent(s["pass@k"].get(k)) for k in ks),
                 _percent(s["compile_rate"]), _percent(s["warning_free_rate"]), _percent(s.get("formatted_rate")),
                 _number(s.get("chrf")), _number(s.get("bleu")), _percent(s.get("exact_match")),
                 " / ".join(str(v) for v in s["statuses"].values())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ground_markdown(ground: dict) -> str:
    """The run's ground (devstral_jax/eval/ground.py) as a short section, its warnings first."""
    sampling, sandbox = ground["sampling"], ground["sandbox"]
    lines = ["", "## Ground", ""]
    lines += [f"- **Warning:** {warning}" for warning in ground["warnings"]]
    lines += [f"- Elixir {ground['elixir']} on OTP {ground['otp']} (MultiPL-E's evaluation container: Elixir "
              f"{ground['multipl_e_elixir']} on OTP {ground['multipl_e_otp']})",
              f"- sandbox {sandbox['mode']} ({'isolated' if sandbox['isolated'] else 'UNCONFINED'}), "
              f"{ground['timeout']:g} s per program, {ground['workers']} workers",
              "- sampling: " + (", ".join(f"{key} {value}" for key, value in sampling.items()) if sampling
                                else "none (completions given)"),
              "- test modules: " + (", ".join(f"{key} {value}" for key, value in sorted(ground["test_modules"].items()))
                                    or "none compiled")]
    lines += [f"- {name}: {b['problems']} problems, digest {b['digest'][:12]}"
              for name, b in ground["benchmarks"].items()]
    return "\n".join(lines) + "\n"


def pass_at_k_chart(path: Path, summaries: dict[str, dict]) -> None:
    """A grouped bar chart: pass@k (percent) per benchmark."""
    names = [name for name, s in summaries.items() if s["pass@k"]]
    ks = sorted({key for name in names for key in summaries[name]["pass@k"]}, key=lambda key: int(key.split("@")[1]))
    figure, axes = plt.subplots(figsize=(max(5.0, 1.6 * len(names) * max(1, len(ks))), 3.6))
    width = 0.8 / max(1, len(ks))
    for i, k in enumerate(ks):
        values = [100 * summaries[name]["pass@k"].get(k, 0.0) for name in names]
        bars = axes.bar([j + i * width for j in range(len(names))], values, width, label=k)
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set_xticks([j + width * (len(ks) - 1) / 2 for j in range(len(names))], names)
    axes.set_ylabel("pass@k (%)")
    axes.set_ylim(0, 105)
    axes.legend()
    axes.set_title("pass@k: completions that pass their ExUnit tests")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def comparison_markdown(comparison: dict, warnings: list[str]) -> str:
    """Per benchmark: the pass@k and compile-rate differences with their intervals, the flipped problems, and
    the status and error-kind shifts (devstral_jax/eval/comparison.py)."""
    level = f"{100 * comparison['confidence']:g}%"
    lines = [f"# {comparison['candidate']} vs {comparison['baseline']}", ""]
    lines += [f"- **Note:** {warning}" for warning in warnings]
    for name, b in comparison["benchmarks"].items():
        lines += ["", f"## {name}: {b['problems']} problems, {b['samples']['baseline']} vs "
                      f"{b['samples']['candidate']} samples", "",
                  f"| metric | baseline | candidate | difference | {level} interval (paired bootstrap) |",
                  "|---|---|---|---|---|"]
        for metric, figure in [*b["pass@k"].items(), ("compile rate", b["compile_rate"])]:
            lines.append(f"| {metric} | {_percent(figure['baseline'])} | {_percent(figure['candidate'])} | "
                         f"{_points(figure['difference'])} | [{_points(figure['low'])}, {_points(figure['high'])}] |")
        lines += ["", f"Fixed ({len(b['fixed'])}): {', '.join(b['fixed']) or 'none'}",
                  "", f"Broken ({len(b['broken'])}): {', '.join(b['broken']) or 'none'}", "",
                  "| status | baseline | candidate |", "|---|---|---|"]
        lines += [f"| {status} | {before} | {after} |" for status, (before, after) in b["statuses"].items()]
        lines += ["", "| error kind | baseline | candidate |", "|---|---|---|"]
        lines += [f"| {kind} | {before} | {after} |" for kind, before, after in b["errors"]]
    return "\n".join(lines) + "\n"


def comparison_chart(path: Path, comparison: dict) -> None:
    """The differences (percentage points) with their intervals, one row per benchmark and metric, around 0."""
    rows = [(f"{name} {metric}", figure) for name, b in comparison["benchmarks"].items()
            for metric, figure in [*b["pass@k"].items(), ("compile rate", b["compile_rate"])]]
    figure, axes = plt.subplots(figsize=(7.0, 0.9 + 0.45 * len(rows)))
    for y, (_, value) in enumerate(reversed(rows)):
        below, above = value["difference"] - value["low"], value["high"] - value["difference"]
        axes.errorbar(100 * value["difference"], y, xerr=[[100 * below], [100 * above]], fmt="o", color="tab:blue")
    axes.axvline(0.0, color="grey", linewidth=1)
    axes.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)])
    axes.set_xlabel(f"candidate - baseline (percentage points), {100 * comparison['confidence']:g}% interval")
    axes.set_title("Is the candidate better?")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"
