"""Ten samples per HumanEval-Elixir problem, covering every verdict, for benchmarks/exec.py.

A model's samples of one problem are mostly small variations of one answer, plus some that fail in every way
MultiPL-E labels. Where tests/eval/data holds hand-written completions for a problem they are used; the others
are built from the problem itself:

  - lookup: answers the tests' own cases from a table (exec_samples.exs encodes it as one binary literal, so
    the completion compiles like the short function a model writes) - it passes; three times, as
    low-temperature sampling repeats itself, and once written over two lines;
  - off_by_one: the lookup with its last answer wrong (AssertionError);
  - constant: `nil` (AssertionError or Exception, depending on the tests);
  - raises: `raise ArgumentError` (Exception);
  - compile_error: an undefined variable (CompileError: Exception);
  - syntax_error: `Enum.map(, ...)` (SyntaxError);
  - missing_end: the lookup without the module's `end` (TokenMissingError: Exception);
  - loops: an endless loop, for every tenth problem (Timeout).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from devstral_jax.elixir.worker import ElixirPool
from devstral_jax.eval.benchmarks import Problem

TABLES = Path(__file__).with_name("exec_samples.exs")

_HEAD = re.compile(r"def \w+[?!]?\((.*)\) do\s*$")
_END = "\n  end\nend\n"


def samples(problem: Problem, index: int, hand_written: list[tuple[str, str]], tables: tuple[str, str]
            ) -> list[tuple[str, str]]:
    """(kind, completion) x 10 for `problem`, the `index`-th of the benchmark; `tables`: its answer table and the
    one with the last answer wrong (answer_tables)."""
    if hand_written:
        by_kind = dict(hand_written)
        chosen = [(kind, by_kind[kind]) for kind in by_kind]
        correct = by_kind.get("correct")
        while len(chosen) < 10 and correct is not None:
            chosen.append(("correct", correct))
        return chosen[:10]
    subject = _subject(problem)
    table, wrong = (f':erlang.binary_to_term(Base.decode64!("{t}"))' for t in tables)
    lookup = f"Map.fetch!({table}, {subject})" + _END
    kinds = [("lookup", lookup), ("lookup", lookup), ("lookup", lookup),
             ("lookup_two_lines", f"answers = {table}\n    Map.fetch!(answers, {subject})" + _END),
             ("off_by_one", f"Map.fetch!({wrong}, {subject})" + _END), ("constant", "nil" + _END),
             ("raises", 'raise ArgumentError, "not done"' + _END),
             ("compile_error", "undefined_thing + 1" + _END), ("syntax_error", "Enum.map(, fn x -> x end)" + _END)]
    kinds.append(("loops", "Stream.repeatedly(fn -> 0 end) |> Enum.sum()" + _END) if index % 10 == 0
                 else ("missing_end", lookup.removesuffix("end\n")))
    return kinds


def answer_tables(problems: list[Problem]) -> dict[str, tuple[str, str]]:
    """Each problem's answer table and the one with its last answer wrong (Base64 of the term), from its tests."""
    with ElixirPool(TABLES, 1) as pool:
        return {p.name: tuple(pool.call({"tests": p.tests, "wrong_last": wrong}) for wrong in (False, True))
                for p in problems}


def hand_written(path: Path) -> dict[str, list[tuple[str, str]]]:
    """The tests/eval/data completions by problem: [(kind, completion), ...] (infinite loops included)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        found.setdefault(record["name"], []).append((record["kind"], record["completion"]))
    return found


def _subject(problem: Problem) -> str:
    """The function's arguments as the table's key: the one argument, or a tuple of them."""
    params = _HEAD.search(problem.prompt.rstrip().splitlines()[-1]).group(1)
    return params if "," not in params else "{" + params + "}"
