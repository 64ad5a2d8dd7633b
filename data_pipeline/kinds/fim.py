"""Fill-in-the-middle records: several spans per file, some across two functions, each with a window of context.

A file's text is already a `file` record, so a FIM record does not repeat it: its prefix and suffix are the
`context_lines` lines before and after the middle (cut at line boundaries), and `prefix + middle + suffix` is
that window of the file. Up to `spans` middles are cut per file, none overlapping another:
  body      a function's body (the lines between its head and its `end`), or a short function whole;
  across    from the middle of one function's body to the middle of the next one's: the end of one function
            and the start of the next, as an editor's cursor meets them.
"""

from __future__ import annotations

import dataclasses
import itertools
import random

from data_pipeline.kinds.records import record
from devstral_jax.data.records import Record, Source
from devstral_jax.elixir.parse import Function, ParsedFile


@dataclasses.dataclass(frozen=True)
class FimConfig:
    spans: int  # middles cut per file, at most
    context_lines: int  # lines of prefix and of suffix around each middle
    across_rate: float  # share of middles that cross from one function into the next


def fim_records(source: Source, lines: list[str], parsed: ParsedFile, rng: random.Random,
                config: FimConfig) -> list[Record]:
    functions = sorted({(f.line, f.end_line): f for m in parsed.modules for f in m.functions
                        if f.end_line <= len(lines)}.values(), key=lambda f: f.line)
    cuts: list[tuple[int, int]] = []  # 0-based [start, end) line ranges
    for _ in range(config.spans):
        free = [f for f in functions if not any(_overlaps(_whole(f), cut) for cut in cuts)]
        pairs = [(a, b) for a, b in itertools.pairwise(functions) if a in free and b in free and a.end_line < b.line]
        if pairs and rng.random() < config.across_rate:
            cut = _across(*rng.choice(pairs))
        elif free:
            cut = _body(rng.choice(free))
        else:
            break
        if "".join(lines[cut[0]:cut[1]]).strip():
            cuts.append(cut)
    return [_window(source, lines, start, end, config.context_lines) for start, end in sorted(cuts)]


def _body(function: Function) -> tuple[int, int]:
    """The lines between its head and its `end`, or the whole function when it has no such lines."""
    if function.end_line - function.line >= 2:
        return function.line, function.end_line - 1
    return _whole(function)


def _whole(function: Function) -> tuple[int, int]:
    return function.line - 1, function.end_line


def _across(first: Function, second: Function) -> tuple[int, int]:
    """From the middle of the first function's body (its head, when it has no body lines) to the middle of the
    second's (0-based, end exclusive)."""
    start = (first.line + first.end_line) // 2 if first.end_line - first.line >= 2 else first.line - 1
    return start, (second.line + second.end_line) // 2


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _window(source: Source, lines: list[str], start: int, end: int, context_lines: int) -> Record:
    first, last = max(0, start - context_lines), min(len(lines), end + context_lines)
    prefix = "\n".join(lines[first:start]) + ("\n" if start > first else "")
    middle = "\n".join(lines[start:end]) + ("\n" if end < last else "")
    suffix = "\n".join(lines[end:last])
    return record("fim", source, prefix=prefix, suffix=suffix, middle=middle)
