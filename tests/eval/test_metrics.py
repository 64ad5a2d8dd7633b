"""pass@k against its closed form, MultiPL-E's labelling rule, warnings attribution, summaries, text metrics."""

import math

import pytest

from devstral_jax.eval.metrics import Sample, pass_at_k, summarize, text_metrics
from devstral_jax.eval.verdict import Verdict, multipl_e_status, solution_warnings


def test_pass_at_k_matches_the_closed_form():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))  # = 1 - 21/252
    assert pass_at_k(10, 3, 5) == pytest.approx(11 / 12)
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 6, 5) == 1.0 and pass_at_k(1, 1, 1) == 1.0
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 5)


def test_multipl_e_status_rule():
    assert multipl_e_status(0, "Assertion with == failed") == "OK"  # exit 0 passes, whatever it printed
    assert multipl_e_status(2, "  Assertion with == failed\n SyntaxError") == "AssertionError"
    assert multipl_e_status(1, "** (SyntaxError) x.exs:1") == "SyntaxError"
    assert multipl_e_status(1, "** (TokenMissingError) missing terminator") == "Exception"
    assert multipl_e_status(1, "Assertion with === failed") == "Exception"
    # "Timeout" is given where the run is cut off (pool.py, reference_run.py): test_pool's infinite loops.


def test_solution_warnings_counts_only_the_solution_lines():
    stderr = ('warning: variable "y" is unused (if the variable is not meant to be used, prefix it with an '
              'underscore)\n  p.exs:4: HumanEval.f/1\n\n'
              'warning: variable "z" is unused\n  p.exs:12: HumanEvalTest."test f"/1\n\n')
    assert solution_warnings(stderr, "p.exs", 7) == 1
    assert solution_warnings(stderr, "p.exs", 20) == 2
    assert solution_warnings("** (RuntimeError) boom\n", "p.exs", 20) == 0


def _verdict(status, compiled=True, warnings=0, formatted=None):
    return Verdict(status, 0 if status == "OK" else 1, None if status == "OK" else status, compiled, warnings,
                   formatted, 0.1)


def test_summarize_per_problem_pass_at_k_rates_and_breakdown():
    samples = [Sample("a", i, "x", _verdict("OK" if i < 3 else "AssertionError", formatted=i % 2 == 0))
               for i in range(10)]
    samples += [Sample("b", i, "y", _verdict("SyntaxError", compiled=False)) for i in range(10)]
    summary = summarize(samples, ks=(1, 5, 20))
    assert summary["pass@k"] == {"pass@1": pytest.approx(0.15), "pass@5": pytest.approx((11 / 12) / 2)}
    assert summary["compile_rate"] == 0.5 and summary["warning_free_rate"] == 0.5
    assert summary["statuses"] == {"OK": 3, "AssertionError": 7, "SyntaxError": 10, "Exception": 0, "Timeout": 0}
    assert summary["formatted_rate"] == 0.5 and "chrf" not in summary


def test_text_metrics_exact_match_and_overlap():
    scores = text_metrics(["Enum.sum(xs)\n  end\nend", "nil"], ["Enum.sum(xs)\n  end\nend\n", "Enum.max(xs)"])
    assert scores["exact_match"] == 0.5
    assert 0 < scores["chrf"] < 100 and 0 < scores["bleu"] < 100
    assert text_metrics(["a b c d"], ["a b c d"])["bleu"] == pytest.approx(100.0)
