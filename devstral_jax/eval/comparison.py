"""Two evaluation runs on the same problems, compared: is the candidate (e.g. a fine-tune) better than the baseline?

Per benchmark: the pass@k difference with a paired bootstrap confidence interval (problems resampled with
replacement, both runs' values of a problem kept together, so the interval reflects which problems were drawn,
not the difference between two unrelated samples), the same for the compile rate, the problems that flipped
(fixed: no baseline sample passed and a candidate one did; broken: the reverse), and how the MultiPL-E statuses
and error kinds shifted. Runs are compared only on the same ground (devstral_jax/eval/ground.py): the same
problems, and unless allowed, the same Elixir, time limit and sampling settings.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from devstral_jax.errors import FlagError
from devstral_jax.eval.metrics import pass_at_k
from devstral_jax.eval.verdict import STATUSES

# Ground differences that make a comparison mislead unless the user allows them (--allow).
ALLOWABLE = ("elixir", "timeout", "sampling")


@dataclasses.dataclass(frozen=True)
class Run:
    """One launch/evaluate.py output folder: its summary and, per benchmark and problem, its samples' rows."""

    path: Path
    summary: dict
    samples: dict[str, dict[str, list[dict]]]

    @property
    def ground(self) -> dict:
        return self.summary["ground"]


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not (path / "summary.json").is_file() or not (path / "results.jsonl").is_file():
        raise FlagError(f"{path} is not an evaluation's output folder (no summary.json and results.jsonl): pass a "
                        "launch/evaluate.py --output_dir.")
    summary = json.loads((path / "summary.json").read_text())
    if "ground" not in summary:
        raise FlagError(f"{path}/summary.json does not record the ground it was evaluated on (an older run): "
                        "evaluate it again to compare it.")
    samples: dict[str, dict[str, list[dict]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    with (path / "results.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            samples[row["benchmark"]][row["problem"]].append(row)
    return Run(path, summary, {name: dict(problems) for name, problems in samples.items()})


def differences(baseline: Run, candidate: Run, allow: Sequence[str] = ()) -> list[str]:
    """What differs between the runs' grounds, as warnings; raises FlagError where comparing would mislead (a
    benchmark's problems differ, or an allowable difference that `allow` does not name)."""
    a, b = baseline.ground, candidate.ground
    common = sorted(set(a["benchmarks"]) & set(b["benchmarks"]))
    if not common:
        raise FlagError(f"The runs share no benchmark ({sorted(a['benchmarks'])} vs {sorted(b['benchmarks'])}).")
    for name in common:
        if a["benchmarks"][name]["digest"] != b["benchmarks"][name]["digest"]:
            raise FlagError(f"Benchmark {name}: the runs evaluated different problems (a different file or "
                            "max_problems); compare runs of the same benchmark file.")
    found = {
        "elixir": (f"Elixir/OTP {a['elixir']}/{a['otp']} vs {b['elixir']}/{b['otp']}",
                   (a["elixir"], a["otp"]) != (b["elixir"], b["otp"])),
        "timeout": (f"time limit {a['timeout']:g} s vs {b['timeout']:g} s", a["timeout"] != b["timeout"]),
        "sampling": (f"sampling {_sampling(a)} vs {_sampling(b)}", _sampling(a) != _sampling(b)),
    }
    refused = [f"{what} (--allow={key})" for key, (what, differs) in found.items() if differs and key not in allow]
    if refused:
        raise FlagError("The runs differ in " + "; ".join(refused) + ": their verdicts are not comparable; pass "
                        "--allow to compare them anyway.")
    said = [f"The runs differ in {what}." for key, (what, differs) in found.items() if differs]
    if a["sandbox"]["isolated"] != b["sandbox"]["isolated"]:
        said.append("One run was sandboxed and the other was not.")
    for name in sorted(set(a["benchmarks"]) ^ set(b["benchmarks"])):
        said.append(f"Benchmark {name} is in only one run: not compared.")
    elixirs = sorted({a["elixir"], b["elixir"]} - {a["multipl_e_elixir"]})
    if elixirs:
        said.append(f"Elixir {' and '.join(elixirs)} ran the programs, not MultiPL-E's {a['multipl_e_elixir']}: the "
                    "difference holds on that Elixir; the absolute figures are not MultiPL-E's.")
    return said


def _sampling(ground: dict) -> dict | None:
    """The sampling settings that decide what completions look like (not the seed or batching)."""
    sampling = ground["sampling"]
    keep = ("num_samples", "temperature", "top_k", "top_p", "max_new_tokens")
    return None if sampling is None else {key: sampling[key] for key in keep}


def paired_bootstrap(baseline: np.ndarray, candidate: np.ndarray, resamples: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """The mean of `candidate - baseline` (one value per problem) and its percentile bootstrap interval:
    problems drawn with replacement, each draw keeping a problem's two values together."""
    difference = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(difference), size=(resamples, len(difference)))
    means = difference[draws].mean(axis=1)
    tail = (1.0 - confidence) / 2
    return {"difference": float(difference.mean()), "low": float(np.quantile(means, tail)),
            "high": float(np.quantile(means, 1.0 - tail)), "baseline": float(np.mean(baseline)),
            "candidate": float(np.mean(candidate))}


def compare(baseline: Run, candidate: Run, ks: Sequence[int] = (1, 10, 100), resamples: int = 10_000,
            confidence: float = 0.95, seed: int = 0) -> dict:
    """Every comparison of the benchmarks both runs evaluated (their grounds checked by `differences`)."""
    benchmarks = {}
    for name in sorted(set(baseline.samples) & set(candidate.samples)):
        base, cand = baseline.samples[name], candidate.samples[name]
        problems = sorted(set(base) & set(cand))
        fewest = min(len(rows) for run in (base, cand) for rows in (run[p] for p in problems))

        def per_problem(run: dict, value) -> np.ndarray:
            return np.array([value(run[p]) for p in problems], dtype=float)

        def bootstrap(value) -> dict:
            return paired_bootstrap(per_problem(base, value), per_problem(cand, value), resamples, confidence, seed)

        passed = {p: (any(r["status"] == "OK" for r in base[p]), any(r["status"] == "OK" for r in cand[p]))
                  for p in problems}
        benchmarks[name] = {
            "problems": len(problems),
            "samples": {"baseline": sum(map(len, base.values())), "candidate": sum(map(len, cand.values()))},
            "pass@k": {f"pass@{k}": bootstrap(lambda rows, k=k: pass_at_k(len(rows), _passes(rows), k))
                       for k in ks if k <= fewest},
            "compile_rate": bootstrap(lambda rows: np.mean([r["compiled"] for r in rows])),
            "fixed": sorted(p for p, (before, after) in passed.items() if after and not before),
            "broken": sorted(p for p, (before, after) in passed.items() if before and not after),
            "statuses": {status: [_count(base, "status", status), _count(cand, "status", status)]
                         for status in STATUSES},
            "errors": _error_shifts(base, cand),
        }
    return {"baseline": str(baseline.path), "candidate": str(candidate.path), "confidence": confidence,
            "resamples": resamples, "seed": seed, "benchmarks": benchmarks}


def _passes(rows: list[dict]) -> int:
    return sum(row["status"] == "OK" for row in rows)


def _count(run: dict[str, list[dict]], field: str, value) -> int:
    return sum(row[field] == value for rows in run.values() for row in rows)


def _error_shifts(base: dict[str, list[dict]], cand: dict[str, list[dict]], top: int = 12) -> list[list]:
    """[error, baseline count, candidate count] for the error kinds that moved most (what stopped the samples)."""
    counts = [collections.Counter(row["error"] for rows in run.values() for row in rows if row["error"])
              for run in (base, cand)]
    kinds = sorted(counts[0].keys() | counts[1].keys(), key=lambda e: (-abs(counts[1][e] - counts[0][e]), e))
    return [[kind, counts[0][kind], counts[1][kind]] for kind in kinds[:top]]
