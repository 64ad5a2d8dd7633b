"""Decontamination: drop training records that contain an evaluation problem.

Benchmarks are JSONL files in MultiPL-E's format (`name`, `prompt`, `tests`), e.g. HumanEval or MBPP in
Elixir, read by the evaluation's own reader (devstral_jax.eval.benchmarks); the default is the shipped
HumanEval-Elixir. A record is dropped when, after lower-casing, removing comment markers and collapsing
white space (StarCoder's substring rule), it contains
  - a problem's docstring (the description in the prompt's leading comments), or
  - both its signature (the `def` line the completion continues) and its tests' assertions;
or when it shares a run of `ngram` code tokens with the problem's prompt + tests that holds at least
`min_informative` informative tokens: words, not numbers, other than the scaffold every problem shares
(`defmodule HumanEval`, `candidate`, ExUnit's boilerplate, Elixir keywords). A run of numbers is data that
any numeric library repeats (Nx's `[[1, 2, 3, 4], [5, 6, 7, 8], ...]` is in HumanEval 129's tests), not a
copied problem. Every hit names its rule and the matched span of the record.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterable

from data_pipeline import PipelineError
from devstral_jax.data.near_duplicates import CODE_TOKEN, code_tokens
from devstral_jax.eval.benchmarks import Problem, load_problems

# Tokens every MultiPL-E Elixir problem has (its module, `candidate`, the ExUnit script) and Elixir keywords.
SCAFFOLD = frozenset("humaneval humanevaltest candidate exunit start use case async test assert refute defmodule "
                     "def defp do end fn true false nil when and or not in if else".split())
MAX_SPAN_CHARS = 300  # of a matched span in the manifest
_PROMPT = re.compile(r"^[^\S\n]*(?:#+|iex>|\.\.\.>)[^\S\n]?", re.M)  # at a line start: comment marker or prompt


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What decontamination looks for of one benchmark problem."""

    benchmark: str  # the file it came from
    name: str
    docstring: str
    signature: str
    assertions: str
    tokens: tuple[str, ...]  # lower-cased code tokens of prompt + tests


@dataclasses.dataclass(frozen=True)
class Hit:
    benchmark: str
    problem: str
    rule: str  # docstring | signature+tests | ngram
    span: str  # what matched: the normalized docstring or signature, or the record's text of the n-gram


def normalize(text: str) -> str:
    """Lower case, comment markers and `iex>` prompts removed, white space collapsed."""
    return " ".join(_PROMPT.sub("", text.lower()).split())


def informative(token: str) -> bool:
    """A word that can tell one problem from ordinary code: not a number, not scaffold."""
    return not token[0].isdigit() and token not in SCAFFOLD


def load_benchmarks(paths: Iterable[str]) -> list[Fingerprint]:
    """The fingerprints of the problems in JSONL files, or in every *.jsonl under a directory."""
    fingerprints = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(path.glob("*.jsonl"))
        elif path.is_file():
            files = [path]
        else:
            raise PipelineError(f"decontam.benchmarks: {path} does not exist (pass benchmark JSONL files or "
                                f"folders, or --config.decontam.benchmarks='()' to skip decontamination).")
        for file in files:
            fingerprints.extend(_fingerprint(file.name, problem) for problem in load_problems(file))
    return fingerprints


def _fingerprint(benchmark: str, problem: Problem) -> Fingerprint:
    prompt, tests = problem.prompt, problem.tests
    return Fingerprint(benchmark=benchmark, name=problem.name, docstring=_docstring(prompt),
                       signature=_signature(prompt), assertions=_assertions(tests),
                       tokens=tuple(t.lower() for t in CODE_TOKEN.findall(prompt + "\n" + tests)))


def _docstring(prompt: str) -> str:
    """The description that opens a MultiPL-E Elixir prompt: its comment lines up to the `>>>` examples."""
    lines = []
    for line in prompt.split("\n"):
        comment = line.lstrip()
        if not comment.startswith("#") or comment.lstrip("# ").startswith(">>>"):
            if lines:
                break
            continue
        lines.append(line)
    return normalize("\n".join(lines))


def _signature(prompt: str) -> str:
    heads = [line for line in prompt.split("\n") if re.match(r"\s*defp?\s", line) and "candidate" not in line]
    return normalize(heads[-1]) if heads else ""


def _assertions(tests: str) -> str:
    return normalize("\n".join(line for line in tests.split("\n") if line.strip().startswith("assert")))


class Decontaminator:
    def __init__(self, problems: list[Fingerprint], ngram: int, min_chars: int, min_informative: int):
        self.problems = problems
        self.ngram = ngram
        self.min_chars = min_chars  # shorter docstrings/signatures would match innocent code
        self._ngrams: dict[tuple[bytes, ...], Fingerprint] = {}  # tokens as bytes, as `code_tokens` gives them
        for problem in problems:
            for i in range(len(problem.tokens) - ngram + 1):
                gram = problem.tokens[i:i + ngram]
                if sum(map(informative, gram)) >= min_informative:
                    self._ngrams.setdefault(tuple(token.encode() for token in gram), problem)
        # What lets `find` skip most of the work and still find what a scan of every problem and every window
        # finds: a word each searched text holds whole (its anchor, see `_anchor`), and the n-grams' tokens.
        self._docstrings = _Anchors([p.docstring if len(p.docstring) >= min_chars else "" for p in problems])
        self._signatures = _Anchors([p.signature if p.assertions else "" for p in problems])
        self._assertions = _Anchors([p.assertions if p.signature else "" for p in problems])
        self._vocabulary = frozenset(token for gram in self._ngrams for token in gram)
        self._known_run = re.compile(f"1{{{ngram},}}")

    def find(self, texts: list[str]) -> Hit | None:
        """The first benchmark problem found in the record made of `texts`, or None."""
        if not self.problems:
            return None
        joined = "\n".join(texts)
        haystack = normalize(joined)
        words = set(haystack.split(" "))
        docstrings = self._docstrings.found(haystack, words)
        signatures = self._signatures.found(haystack, words) & self._assertions.found(haystack, words)
        if (first := min(docstrings | signatures, default=None)) is not None:
            problem = self.problems[first]
            if first in docstrings:
                return Hit(problem.benchmark, problem.name, "docstring", problem.docstring[:MAX_SPAN_CHARS])
            return Hit(problem.benchmark, problem.name, "signature+tests", problem.signature[:MAX_SPAN_CHARS])
        tokens = code_tokens(joined, lower=True)
        # Only a window of tokens that all occur in some n-gram can match: look inside runs of those.
        known = "".join(["1" if token in self._vocabulary else "0" for token in tokens])
        for run in self._known_run.finditer(known):
            for i in range(run.start(), run.end() - self.ngram + 1):
                if problem := self._ngrams.get(tuple(tokens[i:i + self.ngram])):
                    matches = list(CODE_TOKEN.finditer(joined))  # where the tokens are, only for a hit
                    span = joined[matches[i].start():matches[i + self.ngram - 1].end()]
                    return Hit(problem.benchmark, problem.name, "ngram", span[:MAX_SPAN_CHARS])
        return None


class _Anchors:
    """Normalized texts to look for (one per problem; "" for none) and, for each, its anchor: the longest word
    inside it, with a space on each side, which a normalized haystack holding the text holds whole. Only the
    texts whose anchor is among the haystack's words (or that have none) need a substring search."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.by_anchor: dict[str, list[int]] = {}
        self.unanchored: list[int] = []
        for index, text in enumerate(texts):
            inner = text.split(" ")[1:-1]
            if inner:
                self.by_anchor.setdefault(max(inner, key=len), []).append(index)
            elif text:
                self.unanchored.append(index)

    def found(self, haystack: str, words: set[str]) -> set[int]:
        """The indices of the texts that `haystack` holds."""
        candidates = self.unanchored + [i for word in words & self.by_anchor.keys() for i in self.by_anchor[word]]
        return {i for i in candidates if self.texts[i] in haystack}

