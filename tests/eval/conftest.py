"""One sandboxed execution pool shared by the evaluation tests (starting VMs is the slow part)."""

import json
from pathlib import Path

import pytest

from devstral_jax.eval.benchmarks import load_problems
from devstral_jax.eval.pool import ExecutionPool

DATA = Path(__file__).with_name("data")
SAMPLE_BENCHMARK = DATA / "humaneval_ex_sample.jsonl"  # MultiPL-E's, see data/README.md
COMPLETIONS = DATA / "humaneval_ex_completions.jsonl"


@pytest.fixture(scope="session")
def pool():
    with ExecutionPool(2, timeout=3.0) as pool:
        yield pool


@pytest.fixture(scope="session")
def problems():
    return {p.name: p for p in load_problems(SAMPLE_BENCHMARK)}


@pytest.fixture(scope="session")
def hand_written():
    """(problem name, kind, completion): correct ones, and wrong / syntax error / raising / looping ones."""
    return [(r["name"], r["kind"], r["completion"]) for r in map(json.loads, COMPLETIONS.read_text().splitlines())]
