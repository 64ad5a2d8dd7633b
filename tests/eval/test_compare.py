"""launch/compare.py: the paired bootstrap finds known differences (and none where there is none), the comparison
of two real evaluation runs names the problems that flipped, and runs on another ground are refused."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from devstral_jax.eval import ground
from devstral_jax.eval.comparison import compare, load_run
from tests.eval.conftest import COMPLETIONS, SAMPLE_BENCHMARK

ROOT = Path(__file__).resolve().parents[2]
GROUND = {"elixir": "1.14.0", "otp": "25", "multipl_e_elixir": "1.17.2", "multipl_e_otp": "27",
          "sandbox": {"mode": "required", "isolated": True}, "timeout": 5.0, "workers": 2,
          "sampling": {"seed": 0, "num_samples": 10, "temperature": 0.2, "top_k": 0, "top_p": 0.95,
                       "max_new_tokens": 512, "batch_size": 32, "steps_per_call": 32},
          "test_modules": {}, "warnings": []}


def write_run(path: Path, passes: np.ndarray, digest: str = "same", **ground) -> Path:
    """A launch/evaluate.py output folder whose problem i has samples passing as `passes[i]` (bools)."""
    path.mkdir(parents=True)
    benchmarks = {"bench": {"problems": len(passes), "digest": digest, "newer_syntax": {}}}
    (path / "summary.json").write_text(json.dumps({"benchmarks": {}, "ground": {**GROUND, **ground,
                                                                                 "benchmarks": benchmarks}}))
    with (path / "results.jsonl").open("w") as f:
        for i, samples in enumerate(passes):
            for j, passed in enumerate(samples):
                f.write(json.dumps({"benchmark": "bench", "problem": f"p{i}", "sample": j, "compiled": True,
                                    "status": "OK" if passed else "AssertionError",
                                    "error": None if passed else "AssertionError"}) + "\n")
    return path


def test_the_paired_bootstrap_interval_holds_the_true_difference(tmp_path):
    """300 problems, 10 samples each; the candidate passes each problem with 15 points more probability than the
    baseline (so the true pass@1 difference is 0.15), or with the same (0). Over ten seeds, the 95% interval
    holds the truth at least 8 times (a 95% interval misses about once in 20) and never strays far."""
    for true_difference in (0.15, 0.0):
        held = 0
        for seed in range(10):
            rng = np.random.default_rng(seed)
            p = rng.uniform(0.1, 0.7, size=300)
            base = write_run(tmp_path / f"{true_difference}-{seed}" / "base", rng.random((300, 10)) < p[:, None])
            cand = write_run(tmp_path / f"{true_difference}-{seed}" / "cand",
                             rng.random((300, 10)) < p[:, None] + true_difference)
            result = compare(load_run(base), load_run(cand), ks=(1, 10), resamples=2000)["benchmarks"]["bench"]
            interval = result["pass@k"]["pass@1"]
            held += interval["low"] <= true_difference <= interval["high"]
            assert abs(interval["difference"] - true_difference) < 0.05 and interval["high"] - interval["low"] < 0.1
        assert held >= 8, (true_difference, held)


def test_a_summary_from_another_elixir_than_multipl_e_s_is_flagged():
    recorded = {**GROUND, "benchmarks": {"bench": {"problems": 1, "digest": "same", "newer_syntax": {}}}}
    assert [w for w in ground.warnings(recorded) if "MultiPL-E's evaluation container runs Elixir 1.17.2" in w]
    assert ground.warnings({**recorded, "elixir": "1.17.2", "otp": "27"}) == []


def _compare(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/compare.py", *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def _evaluate(completions: Path, output: Path) -> None:
    result = subprocess.run([sys.executable, "launch/evaluate.py", "--config=configs/eval_tiny_cpu.py",
                             "--config.eval.timeout=3", f"--completions={completions}",
                             f"--benchmark={SAMPLE_BENCHMARK}", f"--output_dir={output}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_compares_two_evaluations_and_names_the_fixed_problems(tmp_path):
    lines = [json.loads(line) for line in COMPLETIONS.read_text().splitlines()]
    correct = {line["name"]: line["completion"] for line in lines if line["kind"] == "correct"}
    wrong = {line["name"]: line["completion"] for line in lines if line["kind"] == "wrong"}  # 3 problems
    for name, completions in [("base", {**correct, **wrong}), ("cand", correct)]:
        path = tmp_path / name / "samples.jsonl"  # the benchmark is named after the file: the same in both runs
        path.parent.mkdir()
        path.write_text("".join(json.dumps({"name": problem, "completion": completion}) + "\n"
                                for problem, completion in completions.items()))
        _evaluate(path, tmp_path / name / "eval")
    result = _compare(f"--baseline={tmp_path / 'base' / 'eval'}", f"--candidate={tmp_path / 'cand' / 'eval'}",
                      f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    benchmark = json.loads((tmp_path / "out" / "comparison.json").read_text())["benchmarks"]["samples"]
    assert benchmark["fixed"] == sorted(wrong) and benchmark["broken"] == []
    assert benchmark["pass@k"]["pass@1"]["difference"] == 3 / 16
    assert benchmark["statuses"]["AssertionError"] == [3, 0]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| pass@1 | 81.2% | 100.0% | +18.8 |" in report and "MultiPL-E's" in report
    assert (tmp_path / "out" / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_on_another_ground_are_refused_in_one_line(tmp_path):
    passes = np.ones((4, 2), dtype=bool)
    base = write_run(tmp_path / "base", passes)
    for name, changed, message in [("problems", {"digest": "other"}, "evaluated different problems"),
                                  ("elixir", {"elixir": "1.17.2"}, "--allow=elixir"),
                                  ("timeout", {"timeout": 10.0}, "time limit 5 s vs 10 s"),
                                  ("sampling", {"sampling": None}, "--allow=sampling")]:
        other = write_run(tmp_path / name, passes, **changed)
        result = _compare(f"--baseline={base}", f"--candidate={other}", f"--output_dir={tmp_path / 'out'}")
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, name
    allowed = _compare(f"--baseline={base}", f"--candidate={tmp_path / 'elixir'}", "--allow=elixir",
                       f"--output_dir={tmp_path / 'out'}")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "The runs differ in Elixir/OTP 1.14.0/25 vs 1.17.2/25." in (tmp_path / "out" / "report.md").read_text()
    missing = _compare(f"--baseline={tmp_path}", f"--candidate={base}", f"--output_dir={tmp_path / 'out'}")
    assert missing.returncode == 1 and "not an evaluation's output folder" in missing.stderr
