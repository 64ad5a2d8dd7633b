"""launch/evaluate.py end to end: scoring given completions, sampling from random tiny weights, and its errors."""

import concurrent.futures
import json
import subprocess
import sys
from pathlib import Path

from devstral_jax.elixir.versions import installed_elixir
from devstral_jax.eval.benchmarks import OTP_ELIXIR, load_problems
from tests.eval.conftest import COMPLETIONS, SAMPLE_BENCHMARK
from tests.eval.test_benchmarks import LIBRARY

ROOT = Path(__file__).resolve().parents[2]


def _evaluate(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/evaluate.py", "--config=configs/eval_tiny_cpu.py",
                           "--config.eval.timeout=3", *flags], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_scores_a_completions_file(tmp_path):
    result = _evaluate(f"--completions={COMPLETIONS}", f"--benchmark={SAMPLE_BENCHMARK}", f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(COMPLETIONS.read_text().splitlines())
    assert {row["status"] for row in rows} == {"OK", "AssertionError", "SyntaxError", "Exception", "Timeout"}
    summary = json.loads((tmp_path / "summary.json").read_text())["benchmarks"]["humaneval_ex_completions"]
    assert summary["problems"] == 16 and summary["statuses"]["OK"] == 16
    # 13 problems pass their only sample; 3 pass 1 of 8 (the other 7 are the failing kinds).
    assert summary["pass@k"] == {"pass@1": (13 + 3 / 8) / 16}
    assert "| humaneval_ex_completions | 16 | 37 | 83.6% |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "pass_at_k.png").read_bytes()[:4] == b"\x89PNG"


def test_samples_from_random_tiny_weights_with_doctests_and_perplexity(tmp_path):
    source = {"kind": "local", "package": "geo", "version": "0", "path": "lib/geo/util.ex", "licence": "MIT",
              "url": "file://geo"}
    shard = tmp_path / "held_out.jsonl"
    shard.write_text(json.dumps({"id": "1", "kind": "text", "task": "file", "split": "validation", "source": source,
                                 "text": LIBRARY}) + "\n")
    result = _evaluate("--model=random:tiny", f"--benchmark={SAMPLE_BENCHMARK}", f"--doctest_records={shard}",
                       f"--perplexity_records={shard}", "--config.eval.max_problems=2",
                       "--config.eval.max_new_tokens=8", "--config.eval.perplexity_seq_len=128",
                       f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["benchmarks"]) == {"humaneval_ex_sample", "doctests"}
    assert summary["benchmarks"]["doctests"]["problems"] == 1 and "chrf" in summary["benchmarks"]["doctests"]
    assert summary["perplexity"]["tokens"] > 100 and summary["perplexity"]["perplexity"] > 1000  # random weights
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(row["completion"] is not None for row in rows)
    assert json.loads((tmp_path / "out" / "doctests.jsonl").read_text())["reference"] == "helper(x) * by\n  end\nend\n"


def test_user_mistakes_are_one_line_errors(tmp_path):
    mistakes = [((), "Pass --model"),
                (("--model=random:tiny", "--config.eval.benchmarks=()"), "Nothing to evaluate"),
                (("--model=random:huge", f"--benchmark={SAMPLE_BENCHMARK}"), "unknown preset"),
                ((f"--model={tmp_path}", f"--benchmark={SAMPLE_BENCHMARK}"), "neither a model directory"),
                ((f"--completions={tmp_path / 'none.jsonl'}",), "No such file"),
                ((f"--completions={COMPLETIONS}", f"--benchmark={tmp_path / 'none.jsonl'}"), "No such file"),
                ((f"--completions={COMPLETIONS}", f"--benchmark={SAMPLE_BENCHMARK}", "--config.eval.sandbox=sometimes"),
                 "sandbox mode must be")]
    with concurrent.futures.ThreadPoolExecutor(2) as threads:  # two at a time: each launch is mostly Python's start
        results = list(threads.map(lambda mistake: _evaluate(*mistake[0], f"--output_dir={tmp_path / 'out'}"),
                                   mistakes))
    for (flags, message), result in zip(mistakes, results):
        assert result.returncode != 0, flags
        assert message in result.stderr and "Traceback" not in result.stderr, (flags, result.stderr[-2000:])


def test_evaluates_a_training_workdir(trained_workdir, tmp_path):
    result = _evaluate(f"--model={trained_workdir}", f"--benchmark={SAMPLE_BENCHMARK}", "--config.eval.max_problems=1",
                       "--config.eval.max_new_tokens=4", f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["status"] in {"OK", "AssertionError", "SyntaxError", "Exception", "Timeout"}


def test_an_interrupted_sampling_run_resumes_with_the_same_samples_and_refuses_other_settings(tmp_path):
    flags = ("--model=random:tiny", f"--benchmark={SAMPLE_BENCHMARK}", "--config.eval.max_problems=3",
             "--config.eval.num_samples=2", "--config.eval.temperature=0.8", "--config.eval.batch_size=2",
             "--config.eval.max_new_tokens=6", f"--output_dir={tmp_path}")
    first = _evaluate(*flags)
    assert first.returncode == 0, first.stderr[-3000:]
    completions = [json.loads(line)["completion"] for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    store = tmp_path / "samples" / "humaneval_ex_sample.jsonl"
    header, *batches = store.read_text().splitlines()
    assert len(batches) == 3  # 3 problems x 2 samples in batches of 2
    # As if the run had died while writing the second batch.
    store.write_text(header + "\n" + batches[0] + "\n" + batches[1][:20])
    resumed = _evaluate(*flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "reusing 1 of 3 sampled batches" in resumed.stdout
    assert [json.loads(line)["completion"] for line in (tmp_path / "results.jsonl").read_text().splitlines()] == \
        completions
    assert store.read_text().splitlines()[:2] == [header, batches[0]] and len(store.read_text().splitlines()) == 4
    other = _evaluate(*flags[:-1], "--config.eval.temperature=0.5", f"--output_dir={tmp_path}")
    assert other.returncode != 0 and "holds samples made with other settings (they differ in sampling)" in \
        other.stderr and "Traceback" not in other.stderr


def test_scores_the_otp_benchmark_and_records_the_ground(tmp_path):
    problems = load_problems(OTP_ELIXIR)[:3]
    solutions = {line["name"]: line for line in map(json.loads, (OTP_ELIXIR.parent / "otp_elixir_solutions.jsonl")
                                                       .read_text().splitlines())}
    # One more problem whose tests use a multi-letter sigil (Elixir 1.15): no completion can pass it here.
    newer = {"name": "uses_vec", "prompt": problems[0].prompt, "tests": "ExUnit.start()\nx = ~VEC[1 2]\n",
             "stop_tokens": []}
    benchmark = tmp_path / "otp3.jsonl"
    benchmark.write_text("".join(json.dumps({"name": p.name, "prompt": p.prompt, "tests": p.tests,
                                              "stop_tokens": list(p.stop_tokens)}) + "\n" for p in problems)
                         + json.dumps(newer) + "\n")
    completions = tmp_path / "references.jsonl"
    completions.write_text("".join(json.dumps({"name": p.name, "completion": solutions[p.name]["reference"]}) + "\n"
                                   for p in problems) + json.dumps({"name": "uses_vec", "completion": ""}) + "\n")
    result = _evaluate(f"--completions={completions}", f"--benchmark={benchmark}", "--config.eval.timeout=10",
                       f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [row["status"] for row in rows] == ["OK", "OK", "OK", "SyntaxError"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    ground = summary["ground"]
    assert ground["elixir"] == installed_elixir() and ground["otp"].isdigit() and ground["timeout"] == 10
    assert ground["sandbox"]["mode"] == "required" and ground["sampling"] is None
    assert ground["benchmarks"]["references"]["newer_syntax"] == {
        "uses_vec": ["tests line 2: needs a newer Elixir: 1.15+ (multi-letter sigil ~VEC), installed "
                     f"{installed_elixir()}"]}
    assert any("uses_vec" in warning for warning in ground["warnings"])
    if ground["elixir"] != ground["multipl_e_elixir"]:
        assert any("MultiPL-E's evaluation container runs Elixir" in warning for warning in ground["warnings"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Ground" in report and "none (completions given)" in report and "uses_vec" in report


def test_a_model_without_benchmarks_runs_the_configured_ones(tmp_path):
    result = _evaluate("--model=random:tiny", "--config.eval.max_problems=1", "--config.eval.max_new_tokens=4",
                       f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["benchmarks"]) == {"humaneval_ex", "otp_elixir"}
    assert summary["ground"]["sampling"] == {"seed": 0, "num_samples": 1, "temperature": 0.0, "top_k": 0,
                                             "top_p": 1.0, "max_new_tokens": 4, "batch_size": 8,
                                             "steps_per_call": 16}
