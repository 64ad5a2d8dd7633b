"""The doctest benchmark: held-out Elixir packages turned into MultiPL-E-style problems.

Each public, single-clause `def name(...) do ... end` with `iex>` examples in its @doc becomes a problem:
the prompt is its module with that function moved last and cut right after `do` (like MultiPL-E's prompts),
the reference completion is the real body plus the closing `end`s, and the tests are its doctests turned
into ExUnit assertions (`assert expr == expected`, `assert_raise` for `** (Error)`, `inspect` for
`#Opaque<...>` values; lines without an expected value run as statements, sharing bindings within an
example group). A problem is kept only if its reference passes its own tests in the execution pool.
Functions written `def f(x), do: ...` and multi-clause functions are skipped.
"""

from __future__ import annotations

import dataclasses
import glob
import re
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from devstral_jax.data.records import Record, RecordError
from devstral_jax.elixir_worker import ElixirPool
from devstral_jax.eval.benchmarks import BenchmarkError, Problem
from devstral_jax.eval.pool import ExecutionPool

PARSER = Path(__file__).with_name("doctests.exs")
# MultiPL-E's Elixir stop tokens: the completion ends the function and the module, nothing more.
STOP_TOKENS = ("\ndefmodule", "\ndefp", "\ndef ", "\n#", "\n\n")


@dataclasses.dataclass(frozen=True)
class Example:
    expression: str
    expected: str | None  # None: a statement (e.g. a binding) with nothing to compare


def held_out_sources(patterns: Sequence[str]) -> list[tuple[str, str]]:
    """(name, source) of every validation-split `text` record of an `.ex` file in the JSONL shards."""
    paths = sorted({path for pattern in patterns for path in glob.glob(pattern)})
    if not paths:
        raise BenchmarkError(f"No record files match {list(patterns)}: pass the data pipeline's JSONL shards.")
    sources = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = Record.from_json(line)
                except RecordError as error:
                    raise BenchmarkError(f"{path}:{number}: {error}") from None
                if record.kind == "text" and record.split == "validation" and record.source.path.endswith(".ex"):
                    sources.append((f"{record.source.package}/{record.source.path}", record.text))
    return sources


def doctest_examples(doc: str) -> list[list[Example]]:
    """The `iex>` examples of a docstring, grouped as ExUnit groups them (a blank line starts a new test)."""
    groups: list[list[Example]] = []
    group: list[Example] = []
    expression: list[str] | None = None
    expected: list[str] = []

    def finish_example():
        nonlocal expression, expected
        if expression is not None:
            group.append(Example("\n".join(expression), "\n".join(expected) if expected else None))
        expression, expected = None, []

    for raw in doc.splitlines():
        line = raw.strip()
        prompt = re.match(r"iex(?:\(\d+\))?>\s?(.*)", line)
        if prompt:  # a new example; one still open without a value was a statement
            finish_example()
            expression = [prompt.group(1)]
        elif expression is not None and re.match(r"\.\.\.(?:\(\d+\))?>", line) and not expected:
            expression.append(re.sub(r"^\.\.\.(?:\(\d+\))?>\s?", "", line))
        elif expression is not None and line:
            expected.append(line)
        elif not line:
            finish_example()
            if group:
                groups.append(group)
                group = []
    finish_example()
    if group:
        groups.append(group)
    return groups


def exunit_tests(groups: list[list[Example]], title: str) -> str:
    """An ExUnit script with one test per example group."""
    tests = []
    for number, group in enumerate(groups, 1):
        body = "\n".join(_assertion(example) for example in group)
        tests.append(f"  test {_elixir_string(f'{title} ({number})')} do\n{_indent(body, 4)}\n  end\n")
    return "ExUnit.start()\ndefmodule DoctestBenchmarkTest do\n  use ExUnit.Case\n\n" + "\n".join(tests) + "end\n"


def _assertion(example: Example) -> str:
    if example.expected is None:
        return example.expression
    raised = re.match(r"\*\* \(([\w.]+)\)", example.expected)
    if raised:
        return f"assert_raise {raised.group(1)}, fn ->\n  {example.expression}\nend"
    if example.expected.startswith("#"):
        return f"assert inspect({example.expression}) == {_elixir_string(example.expected)}"
    return f"assert ({example.expression}) == ({example.expected})"


def problems_from_source(name: str, source: str, parsed: dict | None) -> list[Problem]:
    """A problem per documented function with doctests; `parsed` is doctests.exs's answer for `source`."""
    if not parsed:
        return []
    lines = source.split("\n")
    problems = []
    for function in parsed["functions"]:
        groups = doctest_examples(function["doc"])
        doc_line, do_line, end_line = function["doc_line"], function["do_line"], function["end_line"]
        if not groups or not function["public"] or None in (doc_line, do_line, end_line) or end_line <= do_line:
            continue
        if not lines[do_line - 1].rstrip().endswith("do") or parsed["end_line"] <= end_line:
            continue  # the body must start on its own line, and the function must sit inside the module
        body = lines[do_line:end_line]
        indent = re.match(r"\s*", body[0]).group(0)
        rest = "\n".join(lines[:doc_line - 1] + lines[end_line:parsed["end_line"] - 1]).rstrip()
        prompt = rest + "\n\n" + "\n".join(lines[doc_line - 1:do_line]) + "\n" + indent
        reference = "\n".join(body)[len(indent):] + "\nend\n"
        title = f"{parsed['module']}.{function['name']}/{function['arity']}"
        problems.append(Problem(f"{name}:{title}", prompt, exunit_tests(groups, title), STOP_TOKENS, reference))
    return problems


def build_benchmark(sources: Iterable[tuple[str, str]], pool: ExecutionPool) -> tuple[list[Problem], dict]:
    """Problems from `(name, source)` pairs whose references pass their tests, and counts of what was dropped."""
    sources = list(sources)
    candidates = []
    with ElixirPool(PARSER, size=1, timeout=60) as parser:
        for name, source in tqdm(sources, desc="doctests: parse", unit="file"):
            candidates.extend(problems_from_source(name, source, parser.call({"op": "functions", "source": source})))
    verdicts = pool.run([p.program(p.reference) for p in candidates], progress="doctests: check references")
    kept = [problem for problem, verdict in zip(candidates, verdicts) if verdict.passed]
    return kept, {"files": len(sources), "candidates": len(candidates), "kept": len(kept),
                  "dropped": {v.status: sum(1 for w in verdicts if w.status == v.status) for v in verdicts
                              if not v.passed}}


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line if line else line for line in text.split("\n"))


def _elixir_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("#{", "\\#{").replace("\n", "\\n") + '"'
