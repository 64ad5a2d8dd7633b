"""Benchmark problems and completions files.

A problem is MultiPL-E's JSONL record: `name`, `prompt` (ends inside the function body), `tests` (an ExUnit
script), `stop_tokens`; optionally `reference` (a known-good completion, for chrF/BLEU/exact match). The
program run for a completion is `prompt + completion + "\\n" + tests`, as MultiPL-E builds it.

A completions file (to score any model's samples, e.g. MultiPL-E's published ones) is JSONL with one
problem per line, `{"name": ..., "completion": "..."}` or `{"name": ..., "completions": [...]}`; a line may
carry its own `prompt`/`tests`/`stop_tokens`, as MultiPL-E's result files do, and then needs no benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Iterable

from devstral_jax.errors import BenchmarkError
from devstral_jax.eval.verdict import Program

HUMANEVAL_EX = Path(__file__).with_name("data") / "humaneval_ex.jsonl"  # the shipped benchmark: data/HUMANEVAL.md


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    prompt: str
    tests: str
    stop_tokens: tuple[str, ...] = ()
    reference: str | None = None  # a known-good completion, when the benchmark has one

    def program(self, completion: str) -> Program:
        solution = self.prompt + completion
        return Program(source=solution + "\n" + self.tests, file_name=_file_name(self.name), solution=solution,
                       completion=completion)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100] + ".exs"


def read_jsonl(path: str | Path) -> Iterable[tuple[int, dict]]:
    """(line number, object) for each non-empty line; a clear error for anything that is not a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"No such file: {path}.")
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:  # not JSON, or not UTF-8
                raise BenchmarkError(f"{path}:{number}: not JSON ({error}).") from None
            if not isinstance(record, dict):
                raise BenchmarkError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}.")
            yield number, record


def _problem(record: dict, where: str) -> Problem:
    missing = [key for key in ("name", "prompt", "tests") if not isinstance(record.get(key), str)]
    if missing:
        raise BenchmarkError(f"{where}: missing or non-string field(s) {missing}; a MultiPL-E problem has "
                             "name, prompt, tests and stop_tokens.")
    stop = record.get("stop_tokens", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BenchmarkError(f"{where}: stop_tokens must be a list of non-empty strings.")
    reference = record.get("reference", record.get("canonical_solution"))
    return Problem(record["name"], record["prompt"], record["tests"], tuple(stop),
                   reference if isinstance(reference, str) else None)


def load_problems(path: str | Path) -> list[Problem]:
    """A MultiPL-E-format JSONL benchmark (HumanEval-Elixir, MBPP-Elixir, or our doctest benchmark)."""
    problems = [_problem(record, f"{path}:{number}") for number, record in read_jsonl(path)]
    if not problems:
        raise BenchmarkError(f"{path} holds no problems.")
    names = [p.name for p in problems]
    if len(set(names)) != len(names):
        raise BenchmarkError(f"{path}: problem names repeat: {sorted({n for n in names if names.count(n) > 1})}.")
    return problems


def load_completions(path: str | Path, problems: list[Problem] | None = None
                     ) -> tuple[list[Problem], dict[str, list[str]]]:
    """The problems and each one's completions from a completions file (see the module docstring).

    Problems come from `problems` (a benchmark) where given, else from the lines themselves.
    """
    known = {p.name: p for p in problems or []}
    completions: dict[str, list[str]] = {}
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        name = record.get("name")
        if not isinstance(name, str):
            raise BenchmarkError(f"{where}: every line needs a string `name`.")
        samples = record["completions"] if "completions" in record else [record.get("completion")]
        if not isinstance(samples, list) or not all(isinstance(s, str) for s in samples):
            raise BenchmarkError(f"{where}: `completion` must be a string or `completions` a list of strings.")
        if name not in known:
            if problems is not None and "prompt" not in record:
                raise BenchmarkError(f"{where}: problem {name!r} is not in the benchmark.")
            known[name] = _problem(record, where)
        completions.setdefault(name, []).extend(samples)
    if not completions:
        raise BenchmarkError(f"{path} holds no completions.")
    return [known[name] for name in completions], completions
