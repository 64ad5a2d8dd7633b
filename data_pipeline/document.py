"""A document (a guide, a cheatsheet, a Livebook notebook, a book) as sections of prose and code blocks, in order.

Markdown (markdown.py), PDF (pdf.py) and EPUB (epub.py) are read into this one shape; prose.py and books.py make
records from it. Every code block is read by the real Elixir (the parser's `snippet` op) and labelled: its
language, whether it parses, the modules, calls and constructs it uses. From the labels, each section knows the
concepts that the document's code uses there for the first time (where a book introduces `GenServer.call` or
`with`).
"""

from __future__ import annotations

import dataclasses
import re

from devstral_jax.data.records import CodeLabel
from devstral_jax.elixir.parse import Snippet, read_snippet
from devstral_jax.elixir.worker import ElixirPool

ELIXIR_LABELS = ("elixir", "ex", "exs", "iex", "elixir-iex")  # a fence or class naming Elixir code


@dataclasses.dataclass(frozen=True)
class Block:
    kind: str  # prose | code
    text: str  # prose: Markdown (inline code in backticks); code: the code as written
    language: str = ""  # code: its label ("elixir", "shell", "output"), "" when it has none
    pages: tuple[int, int] | None = None  # first and last page it is on, 1-based (PDF)
    label: CodeLabel | None = None  # code, once labelled
    session: bool = False  # code: an IEx session (read as its expressions)


@dataclasses.dataclass(frozen=True)
class Section:
    path: tuple[str, ...]  # heading path, outermost first; () before the first heading
    blocks: tuple[Block, ...]
    chapter: int | None = None  # 0-based index of the chapter (top-level section) it belongs to (books)

    @property
    def title(self) -> str:
        return self.path[-1] if self.path else ""

    @property
    def pages(self) -> tuple[int, int] | None:
        pages = [page for block in self.blocks if block.pages for page in block.pages]
        return (min(pages), max(pages)) if pages else None

    def chars(self) -> int:
        return sum(len(block.text) for block in self.blocks)


@dataclasses.dataclass(frozen=True)
class Document:
    title: str
    kind: str  # guide | cheatsheet | notebook | book
    sections: tuple[Section, ...]

    def positions(self) -> list[float]:
        """Where each section starts, 0..1 through the document's text (prose and code, headings excluded)."""
        total = sum(section.chars() for section in self.sections) or 1
        starts, done = [], 0
        for section in self.sections:
            starts.append(round(done / total, 4))
            done += section.chars()
        return starts


def labelled(document: Document, pool: ElixirPool) -> Document:
    """The document with every code block labelled by the real Elixir."""
    return dataclasses.replace(document, sections=tuple(
        dataclasses.replace(section, blocks=tuple(_labelled(block, pool) for block in section.blocks))
        for section in document.sections))


def _labelled(block: Block, pool: ElixirPool) -> Block:
    if block.kind != "code":
        return block
    labelled_elixir = block.language.lower() in ELIXIR_LABELS
    if block.language and not labelled_elixir:
        return dataclasses.replace(block, label=CodeLabel(block.language, None))
    snippet = read_snippet(pool, block.text)
    # An unlabelled block is Elixir when Elixir reads it and finds something Elixir in it: `mix deps.get` or a
    # bare list parse too, but use no module, call or construct.
    elixir = labelled_elixir or (snippet.parses and (snippet.session or _uses_anything(snippet)))
    if not elixir:
        return dataclasses.replace(block, label=CodeLabel(block.language, False))
    label = CodeLabel("elixir", snippet.parses, tuple(sorted(set(snippet.modules) | set(snippet.defines))),
                      snippet.calls, snippet.constructs)
    return dataclasses.replace(block, label=label, session=snippet.session)


def _uses_anything(snippet: Snippet) -> bool:
    return bool(snippet.defines or snippet.modules or snippet.calls or snippet.constructs)


def is_elixir(block: Block) -> bool:
    """A labelled code block that is Elixir and parses."""
    return block.kind == "code" and block.label is not None and block.label.language == "elixir" and \
        bool(block.label.parses)


def concepts(label: CodeLabel) -> list[str]:
    """What a code block teaches by using it: calls without arity (Kernel's by bare name), constructs, modules."""
    calls = [re.sub(r"/\d+$", "", call).removeprefix("Kernel.") for call in label.calls]
    return list(dict.fromkeys(calls + list(label.constructs) + list(label.modules)))


def introductions(document: Document) -> list[list[tuple[str, ...]]]:
    """For each section and each of its blocks, the concepts the document's (parsing Elixir) code uses there for
    the first time."""
    seen: set[str] = set()
    result = []
    for section in document.sections:
        per_block = []
        for block in section.blocks:
            new = [c for c in concepts(block.label) if c not in seen] if is_elixir(block) else []
            seen.update(new)
            per_block.append(tuple(new))
        result.append(per_block)
    return result


def merge_prose(blocks: list[Block] | tuple[Block, ...]) -> tuple[Block, ...]:
    """Consecutive prose paragraphs as one prose block (paragraphs apart by a blank line), as in Markdown."""
    merged: list[Block] = []
    for block in blocks:
        if merged and block.kind == "prose" and merged[-1].kind == "prose":
            merged[-1] = dataclasses.replace(merged[-1], text=f"{merged[-1].text}\n\n{block.text}")
        else:
            merged.append(block)
    return tuple(merged)


def normal(title: str) -> str:
    """A title reduced to its letters and digits, lower-case: how an outline entry and a heading are matched."""
    return re.sub(r"[^a-z0-9]", "", title.lower())


def render(blocks: tuple[Block, ...] | list[Block]) -> str:
    """Blocks as Markdown: prose as it is, code fenced with its language; Elixir that does not parse is fenced
    without one, so that no answer presents it as Elixir."""
    parts = []
    for block in blocks:
        if block.kind == "prose":
            parts.append(block.text.strip("\n"))
        else:
            language = block.label.language if block.label else block.language
            if block.label is not None and block.label.parses is False:
                language = ""
            parts.append(f"```{language}\n{block.text.strip(chr(10))}\n```")
    return "\n\n".join(part for part in parts if part)
