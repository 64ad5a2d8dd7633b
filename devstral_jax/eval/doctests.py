"""The doctest benchmark: held-out Elixir packages turned into MultiPL-E-style problems.

Each public, single-clause `def name(...) do ... end` with `iex>` examples in its @doc, in a file that is one
top-level module, becomes a problem: the prompt is its module with that function moved last and cut right after
`do` (like MultiPL-E's prompts), the reference completion is the real body plus the closing `end`s, and the tests
are its doctests as an ExUnit module (devstral_jax/elixir/doctests.py, the same tests the training data shows).
A problem is kept only if its reference passes its own tests in the execution pool.
Functions written `def f(x), do: ...` and multi-clause functions are skipped.
"""

from __future__ import annotations

import collections
import glob
import re
from typing import Iterable, Sequence

from tqdm import tqdm

from devstral_jax.data.records import Record, RecordError
from devstral_jax.elixir.doctests import exunit_module
from devstral_jax.elixir.parse import ParsedFile, SourceSyntaxError, parse_source, parser_pool
from devstral_jax.eval.benchmarks import BenchmarkError, Problem
from devstral_jax.eval.pool import ExecutionPool

# MultiPL-E's Elixir stop tokens: the completion ends the function and the module, nothing more.
STOP_TOKENS = ("\ndefmodule", "\ndefp", "\ndef ", "\n#", "\n\n")


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


def problems_from_source(name: str, source: str, parsed: ParsedFile) -> list[Problem]:
    """A problem per documented, single-clause function with doctests in `source` (parsed as `parsed`)."""
    top_level = [module for module in parsed.modules if module.parent is None]
    if len(top_level) != 1 or top_level[0].kind != "defmodule":
        return []
    (module,) = top_level
    definitions = collections.Counter((f.name, f.arity) for f in module.functions)
    lines = source.split("\n")
    problems = []
    for function in module.functions:
        doc_line, do_line, end_line = function.doc_line, function.do_line, function.end_line
        if (function.kind != "def" or not isinstance(function.doc, str) or function.clauses != 1
                or definitions[function.name, function.arity] != 1 or None in (doc_line, do_line)):
            continue
        if end_line <= do_line or not lines[do_line - 1].rstrip().endswith("do") or module.end_line <= end_line:
            continue  # the body must start on its own line, and the function must sit inside the module
        tests = exunit_module(module, function)
        if tests is None:
            continue
        body = lines[do_line:end_line]
        indent = re.match(r"\s*", body[0]).group(0)
        rest = "\n".join(lines[:doc_line - 1] + lines[end_line:module.end_line - 1]).rstrip()
        prompt = rest + "\n\n" + "\n".join(lines[doc_line - 1:do_line]) + "\n" + indent
        reference = "\n".join(body)[len(indent):] + "\nend\n"
        title = f"{module.name}.{function.name}/{function.arity}"
        problems.append(Problem(f"{name}:{title}", prompt, f"ExUnit.start()\n{tests}\n", STOP_TOKENS, reference))
    return problems


def build_benchmark(sources: Iterable[tuple[str, str]], pool: ExecutionPool) -> tuple[list[Problem], dict]:
    """Problems from `(name, source)` pairs whose references pass their tests, and counts of what was dropped."""
    sources = list(sources)
    candidates = []
    with parser_pool(1) as parser:
        for name, source in tqdm(sources, desc="doctests: parse", unit="file"):
            try:
                parsed = parse_source(parser, name, source)
            except SourceSyntaxError:
                continue
            candidates.extend(problems_from_source(name, source, parsed))
    verdicts = pool.run([p.program(p.reference) for p in candidates], progress="doctests: check references")
    kept = [problem for problem, verdict in zip(candidates, verdicts) if verdict.passed]
    return kept, {"files": len(sources), "candidates": len(candidates), "kept": len(kept),
                  "dropped": {v.status: sum(1 for w in verdicts if w.status == v.status) for v in verdicts
                              if not v.passed}}
