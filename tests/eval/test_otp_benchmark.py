"""The OTP and idiom benchmark (devstral_jax/eval/data/otp_elixir.jsonl): well formed, and every reference
solution passes while every wrong one fails, both as MultiPL-E runs a program (`elixir file.exs`) and in the
execution pool, with the same verdict; the data pipeline keeps it out of training data by default."""

import concurrent.futures
import json
from pathlib import Path

import pytest

import devstral_jax.eval
from data_pipeline.config import base_config
from data_pipeline.decontam import Decontaminator, load_benchmarks
from devstral_jax.eval.benchmarks import load_problems
from devstral_jax.eval.pool import ExecutionPool
from devstral_jax.eval.reference_run import run_elixir_file
from devstral_jax.sampler import truncate_at_stop

DATA = Path(devstral_jax.eval.__file__).with_name("data")
BENCHMARK = DATA / "otp_elixir.jsonl"
SOLUTIONS = DATA / "otp_elixir_solutions.jsonl"
TOPICS = {"genserver", "supervisor", "registry", "agent", "task", "ets", "processes", "pattern_matching",
          "pipelines_with", "stream", "binaries", "protocols_behaviours", "error_tuples"}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def otp_problems():
    return {problem.name: problem for problem in load_problems(BENCHMARK)}


@pytest.fixture(scope="module")
def runs(otp_problems):
    """(problem name, "reference" or "wrong N", program) for every solution kept beside the benchmark."""
    runs = []
    for record in _records(SOLUTIONS):
        problem = otp_problems[record["name"]]
        runs.append((problem.name, "reference", problem.program(record["reference"])))
        runs.extend((problem.name, f"wrong {i}", problem.program(wrong)) for i, wrong in enumerate(record["wrong"]))
    return runs


@pytest.fixture(scope="module")
def elixir_file_verdicts(runs):
    """MultiPL-E's verdicts: one `elixir file.exs` per program, two at a time (this machine has two cores).
    The timeout leaves room for a VM start on a busy machine: no program here needs more than a second."""
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        return list(threads.map(lambda run: run_elixir_file(run[2], timeout=30.0), runs))


def test_the_benchmark_is_well_formed(otp_problems):
    records = _records(BENCHMARK)
    solutions = {record["name"]: record for record in _records(SOLUTIONS)}
    assert len(records) >= 60
    assert len({record["name"] for record in records}) == len(records)
    assert {record["topic"] for record in records} == TOPICS
    assert solutions.keys() == otp_problems.keys()
    for name, problem in otp_problems.items():
        reference = solutions[name]["reference"]
        assert solutions[name]["wrong"], name
        # A sample that completes the prompt exactly like the reference must reach the tests uncut.
        assert truncate_at_stop(reference, problem.stop_tokens) == reference, name
        assert problem.tests.startswith("ExUnit.start()\n"), name


def test_references_pass_and_wrong_solutions_fail_under_elixir_file_exs(runs, elixir_file_verdicts):
    for (name, kind, _), (status, exit_code, output) in zip(runs, elixir_file_verdicts):
        if kind == "reference":
            assert (status, exit_code) == ("OK", 0), (name, output[-3000:])
        else:
            assert status != "OK" and exit_code != 0, (name, kind, "passed but must fail")


def test_the_pool_gives_the_same_verdicts(runs, elixir_file_verdicts):
    programs = [program for _, _, program in runs]
    # A generous time limit: the pool's verdicts must not depend on how busy the machine is. Every program twice:
    # the second time, those whose tests compile reuse their problem's compiled test module where it can.
    with ExecutionPool(2, timeout=10.0, sandbox="best_effort") as pool:
        verdicts = pool.run(programs + programs)
    for (name, kind, _), *pair, (status, exit_code, output) in zip(runs, verdicts[:len(runs)], verdicts[len(runs):],
                                                                   elixir_file_verdicts):
        for verdict in pair:
            assert verdict.passed == (kind == "reference"), (name, kind, verdict.stdout[-1500:],
                                                             verdict.stderr[-1500:])
            if kind == "reference":  # references show what a good completion looks like: formatted, no warnings
                assert verdict.formatted and verdict.warnings == 0, (name, verdict.stderr[-1500:])
            assert (verdict.status, verdict.exit_code) == (status, exit_code), (name, kind, verdict, output[-1500:])
    reused = {name for (name, kind, _), verdict in zip(runs, verdicts[len(runs):]) if verdict.cache == "hit"}
    assert len(reused) >= 50  # the others' tests use the candidate at compile time or hold more than one module


def test_the_data_pipeline_decontaminates_against_it_by_default(otp_problems):
    decontam = base_config().decontam
    assert str(BENCHMARK) in decontam.benchmarks
    decontaminator = Decontaminator(load_benchmarks(decontam.benchmarks), ngram=decontam.ngram,
                                    min_chars=decontam.min_chars, min_informative=decontam.min_informative)
    for record in _records(SOLUTIONS):  # a training file holding a solved problem is dropped
        hit = decontaminator.find(["```elixir\n" + otp_problems[record["name"]].prompt + record["reference"] + "\n```"])
        assert hit is not None and hit.problem == record["name"], record["name"]
