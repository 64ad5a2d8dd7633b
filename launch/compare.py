"""Compares two evaluation runs on the same problems: is the candidate (e.g. a fine-tune) better than the baseline?

    python launch/compare.py --baseline=eval/base --candidate=eval/finetuned --output_dir=eval/compare \
        [--allow=elixir,timeout,sampling] [--resamples=10000] [--confidence=0.95] [--seed=0]

Both are launch/evaluate.py output folders. Writes comparison.json, report.md (per benchmark: pass@k and compile
rate differences with paired bootstrap intervals, problems fixed and broken, status and error-kind shifts) and
comparison.png (the differences with their intervals), and prints the report. Refuses runs of different
problems, and unless --allow names the difference, of different Elixir, time limits or sampling settings.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import flags

from devstral_jax.cli import run
from devstral_jax.errors import FlagError
from devstral_jax.eval import comparison, report

_BASELINE = flags.DEFINE_string("baseline", None, "The baseline run's launch/evaluate.py --output_dir.")
_CANDIDATE = flags.DEFINE_string("candidate", None, "The candidate run's launch/evaluate.py --output_dir.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where comparison.json, report.md and comparison.png go.")
_ALLOW = flags.DEFINE_list("allow", [], "Ground differences to compare across anyway: "
                                        f"{', '.join(comparison.ALLOWABLE)}.")
_KS = flags.DEFINE_list("ks", ["1", "10", "100"], "pass@k for each k no problem has too few samples for.")
_RESAMPLES = flags.DEFINE_integer("resamples", 10_000, "Bootstrap resamples of the problems.")
_CONFIDENCE = flags.DEFINE_float("confidence", 0.95, "Confidence level of the intervals.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the bootstrap (the same seed gives the same intervals).")
flags.mark_flags_as_required(["baseline", "candidate", "output_dir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise FlagError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_ALLOW.value) - set(comparison.ALLOWABLE))
    if unknown:
        raise FlagError(f"--allow={','.join(unknown)}: allow only {', '.join(comparison.ALLOWABLE)}.")
    if not 0.0 < _CONFIDENCE.value < 1.0 or _RESAMPLES.value < 1:
        raise FlagError("--confidence must be in (0, 1) and --resamples at least 1.")
    try:
        ks = sorted({int(k) for k in _KS.value})
    except ValueError:
        raise FlagError(f"--ks must be whole numbers, got {_KS.value}.") from None
    baseline, candidate = comparison.load_run(_BASELINE.value), comparison.load_run(_CANDIDATE.value)
    warnings = comparison.differences(baseline, candidate, _ALLOW.value)
    result = comparison.compare(baseline, candidate, ks, _RESAMPLES.value, _CONFIDENCE.value, _SEED.value)
    output = Path(_OUTPUT_DIR.value)
    output.mkdir(parents=True, exist_ok=True)
    (output / "comparison.json").write_text(json.dumps({**result, "warnings": warnings}, indent=2) + "\n")
    markdown = report.comparison_markdown(result, warnings)
    (output / "report.md").write_text(markdown)
    report.comparison_chart(output / "comparison.png", result)
    print(markdown)
    print(f"wrote {output}/comparison.json, report.md, comparison.png")


if __name__ == "__main__":
    run(main)
