"""What every kind of record is built from: the record itself (a content-hashed id), Elixir code blocks and
source lines, and the check a record must pass in its package's run before it is kept (verify.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import textwrap

from devstral_jax.data.records import Message, Record, Source

SNIPPET_MODULE = "KindsCheck.Snippet"  # the module a compile check's code defines; verify.py numbers it


@dataclasses.dataclass(frozen=True)
class Check:
    """How a record made from one file is verified by running its package (verify.py)."""

    compile: str | None = None  # a module `SNIPPET_MODULE` that must compile here
    file: str | None = None  # a lib file that must compile (with its package, or else on its own)
    parse: str | None = None  # code that must read as Elixir
    # The outcomes that keep the record: "passed", "missing" (it needs a module or a file that is not here: a
    # package that does not compile without its dependencies), "not run" (no sandbox, or verification off).
    keep_if: tuple[str, ...] = ("passed",)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def record(task: str, source: Source, **payload) -> Record:
    """A record whose id is a hash of its task, provenance and content: the same input gives the same id."""
    if "messages" in payload:
        user, assistant = payload["messages"]
        payload["messages"] = (Message("user", user.strip()), Message("assistant", assistant.strip()))
    kind = "text" if task in ("file", "test_file") else "fim" if task == "fim" else "chat"
    content = {k: [dataclasses.asdict(m) for m in v] if k == "messages" else v for k, v in payload.items()}
    key = json.dumps([task, dataclasses.asdict(source), content], sort_keys=True, ensure_ascii=False)
    return Record(id=hashlib.sha256(key.encode()).hexdigest()[:24], kind=kind, task=task, source=source, **payload)


def elixir(code: str) -> str:
    return f"```elixir\n{code.strip(chr(10))}\n```"


def fenced(text: str) -> str:
    """Tool output (a compiler error, an ExUnit failure) as a plain code block."""
    return f"```\n{text.strip(chr(10))}\n```"


def dedented(lines: list[str], start: int, end: int) -> str:
    """Lines start..end (1-based, inclusive), dedented."""
    return textwrap.dedent("\n".join(lines[start - 1:end])).strip("\n")


def first_paragraph(text: str | bool | None) -> str:
    if not isinstance(text, str):
        return ""
    return re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0].strip()
