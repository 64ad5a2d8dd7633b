"""Metrics over executed samples: pass@k, compile rate, error kinds, Elixir style, and text overlap.

pass@k is the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), averaged over problems
(n samples of a problem, c of them passing), computed as a stable product as MultiPL-E does.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np
import sacrebleu

from devstral_jax.eval.verdict import STATUSES, Verdict


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k samples drawn from n (c correct) passes."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}.")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclasses.dataclass(frozen=True)
class Sample:
    """One completion of one problem and what running it gave."""

    problem: str
    index: int
    completion: str
    verdict: Verdict
    reference: str | None = None


def summarize(samples: Sequence[Sample], ks: Sequence[int] = (1, 10, 100)) -> dict:
    """Every metric over `samples` (one benchmark): pass@k for each k that no problem has too few samples for."""
    if not samples:
        raise ValueError("No samples to summarize.")
    by_problem: dict[str, list[Sample]] = collections.defaultdict(list)
    for sample in samples:
        by_problem[sample.problem].append(sample)
    fewest = min(len(group) for group in by_problem.values())
    summary: dict = {
        "problems": len(by_problem),
        "samples": len(samples),
        "samples_per_problem": fewest,
        "pass@k": {f"pass@{k}": float(np.mean([pass_at_k(len(g), sum(s.verdict.passed for s in g), k)
                                               for g in by_problem.values()]))
                   for k in ks if k <= fewest},
        "compile_rate": _share(s.verdict.compiled for s in samples),
        "statuses": {status: sum(s.verdict.status == status for s in samples) for status in STATUSES},
        "errors": dict(collections.Counter(s.verdict.error for s in samples if s.verdict.error).most_common(15)),
        "warning_free_rate": _share(s.verdict.compiled and s.verdict.warnings == 0 for s in samples),
        "mean_seconds": float(np.mean([s.verdict.seconds for s in samples])),
    }
    formatted = [s.verdict.formatted for s in samples if s.verdict.formatted is not None]
    if formatted:
        summary["formatted_rate"] = _share(formatted)
    with_reference = [s for s in samples if s.reference is not None]
    if with_reference:
        summary.update(text_metrics([s.completion for s in with_reference], [s.reference for s in with_reference]))
    return summary


def text_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """chrF and BLEU (sacrebleu, corpus level, 0..100) and the exact-match rate (ignoring trailing whitespace)."""
    return {
        "chrf": float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score),
        "bleu": float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score),
        "exact_match": _share(h.rstrip() == r.rstrip() for h, r in zip(hypotheses, references)),
    }


def _share(flags) -> float:
    flags = list(flags)
    return float(np.mean(flags)) if flags else 0.0
