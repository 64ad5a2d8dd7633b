"""A record's difficulty, for curriculum learning: the real Elixir AST of its code, and its length.

A record's code is a source file's text (tasks `file`, `test_file`), a FIM record's whole file (prefix + middle +
suffix), and otherwise (documentation text, a chat's answers) its Markdown code blocks, fenced or indented,
labelled Elixir or unlabelled; for chat, those of the assistant's turns. The Elixir parser measures each piece
(`difficulty/1` in devstral_jax/elixir/parser.exs; an `iex>` session is read as its expressions, a piece that
does not parse counts nothing), and the record's figures are the sums over its pieces (depth: the deepest):

    component   what                                              full marks at   weight
    tokens      Tekken tokens of the whole record                 4096            0.25
    nodes       AST terms                                         2000            0.20
    depth       deepest nesting of blocks (defmodule, def, fn,    8 (linear)      0.15
                case, cond, with, if, receive, try, for, ...)
    functions   named functions defined                           25              0.10
    clauses     function clauses and `->` clauses                 60              0.10
    otp         use/@behaviour, receive, spawn, send, callbacks,  12              0.20
                calls into GenServer, Supervisor, Task, ...

Each component is scaled to [0, 1] on a log scale, `min(1, log(1 + x) / log(1 + full))` (depth linearly,
`min(1, x / 8)`), and the score is their weighted sum. The scale is fixed, not fitted to a corpus, so a score
is a property of the record alone: rescoring one record, or adding others, never moves it, and a difficulty
bucket such as [0.25, 0.5) means the same in every corpus.

The pipeline scores every record it writes; `launch/score_data.py` rescores existing JSONL files (e.g. the
shipped sample) with the same function.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Callable

from markdown_it import MarkdownIt

from devstral_jax.data.records import Difficulty, Record
from devstral_jax.elixir.parse import CodeMetrics, code_metrics
from devstral_jax.elixir.worker import ElixirPool

# component -> (full marks, weight); depth is scaled linearly, the rest on a log scale.
SCALE = {"tokens": (4096, 0.25), "nodes": (2000, 0.20), "depth": (8, 0.15), "functions": (25, 0.10),
         "clauses": (60, 0.10), "otp": (12, 0.20)}
CODE_TASKS = ("file", "test_file")  # text records whose text is a source file
ELIXIR_LABELS = ("", "elixir", "iex", "ex", "exs")  # code blocks read as Elixir
_MARKDOWN = MarkdownIt("commonmark")


def code_pieces(record: Record) -> list[str]:
    """The pieces of Elixir code in `record` (see the module docstring)."""
    if record.kind == "fim":
        return [record.prefix + record.middle + record.suffix]
    if record.kind == "text":
        return [record.text] if record.task in CODE_TASKS else _code_blocks(record.text)
    return [block for m in record.messages if m.role == "assistant" for block in _code_blocks(m.content)]


def _code_blocks(text: str) -> list[str]:
    return [token.content for token in _MARKDOWN.parse(text) if token.type in ("fence", "code_block")
            and (token.info.split()[0].lower() if token.info.strip() else "") in ELIXIR_LABELS
            and token.content.strip()]


def combine(tokens: int, pieces: list[CodeMetrics]) -> Difficulty:
    """The record's difficulty from its token count and its pieces' AST figures."""
    counts = {"tokens": tokens, "depth": max((p.depth for p in pieces), default=0),
              **{name: sum(getattr(p, name) for p in pieces) for name in ("nodes", "functions", "clauses", "otp")}}
    score = sum(weight * _scaled(name, counts[name], full) for name, (full, weight) in SCALE.items())
    return Difficulty(score=round(min(1.0, score), 6), **counts)


def _scaled(name: str, value: int, full: int) -> float:
    if name == "depth":
        return min(1.0, value / full)
    return min(1.0, math.log1p(value) / math.log1p(full))


def difficulty(pool: ElixirPool, record: Record, tokens: int) -> Difficulty:
    """`record`'s difficulty, its code measured by the Elixir parser in `pool` (one request)."""
    pieces = code_pieces(record)
    return combine(tokens, code_metrics(pool, pieces) if pieces else [])


def scored(pool: ElixirPool, records: list[Record], tokens: list[int]) -> list[Record]:
    """`records`, each with its difficulty (`tokens`: each one's Tekken token count)."""
    return [dataclasses.replace(record, difficulty=difficulty(pool, record, count))
            for record, count in zip(records, tokens, strict=True)]


def rescore_jsonl(source: str, target: str, pool: ElixirPool, count_tokens: Callable[[Record], int]) -> int:
    """Writes `source`'s records to `target` (which may be `source`) with their difficulty set (replaced if they
    had one), every other field as it was; returns how many. Lines are written as canonical JSON (sorted keys,
    no spaces), so a file written that way keeps every other byte."""
    lines = []
    for line in Path(source).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        data = json.loads(line)
        record = Record.from_dict(data)
        data["difficulty"] = difficulty(pool, record, count_tokens(record)).to_dict()
        lines.append(json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")))
    partial = f"{target}.partial"
    Path(partial).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(partial, target)
    return len(lines)
