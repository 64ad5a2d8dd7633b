"""Records from documents (guides, cheatsheets, Livebook notebooks, books), built from their own structure.

    text   guide_text     a guide or cheatsheet as written (Markdown)
           notebook       a Livebook notebook, without its cell metadata
           book_text      a book's chapter (books.py), as Markdown with its headings and fenced code
    chat   *_explain      "Explain <section title> in Elixir" -> the section as the document writes it
           *_code         a listing's introducing paragraph -> the listing (Elixir that parses, not an IEx session)
           *_qa           "What is `X`?" -> the document's sentence defining `X`; a question heading -> its section
    (* is `guide` for guides, cheatsheets and notebooks, `book` for books)

Every answer is the document's own text: nothing is written for it. What could not become a record is counted
by reason (a section with too little prose, a listing that does not parse or that nothing introduces). Each
record carries its `place` (records.py): title, heading path, order, position 0..1, chapter, pages, code labels
and the concepts first used there. Pure and deterministic given the labelled document.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
from typing import Any

from data_pipeline.document import Block, Document, Section, introductions, labelled, render
from data_pipeline.markdown import read_markdown, without_markup
from devstral_jax.data.records import Message, Place, Record, Source
from devstral_jax.elixir.worker import ElixirPool


@dataclasses.dataclass(frozen=True)
class ProseConfig:
    enabled: bool
    folders: tuple[str, ...]  # a .md file under one of these folders (at any depth) is a guide
    excluded_names: tuple[str, ...]  # file names (without extension, any case) that are never guides
    max_line_length: int  # prose filters: a paragraph is often one long line
    max_mean_line_length: float
    min_explain_chars: int  # a section with less prose gives no explanation
    max_answer_chars: int  # an explanation is cut at a block or paragraph within this
    min_intro_words: int  # a paragraph introducing a listing has at least this many words
    min_listing_chars: int


@dataclasses.dataclass
class Made:
    """A document's records, and its figures for the manifest (`prose` there)."""

    records: list[Record]
    facts: dict[str, Any]


TEXT_TASKS = {"guide": "guide_text", "cheatsheet": "guide_text", "notebook": "notebook", "book": "book_text"}


def guide_records(source: Source, text: str, pool: ElixirPool, config: ProseConfig) -> Made:
    """A guide, cheatsheet or notebook: its text record and its section records."""
    document = labelled(read_markdown(source.path, text), pool)
    builder = Builder(source, document, config)
    everything = range(len(document.sections))
    shown = without_markup(text) if document.kind == "notebook" else text
    records, dropped = builder.section_records(everything)
    return Made([builder.text_record(TEXT_TASKS[document.kind], shown, everything, section=())] + records,
                builder.facts(everything, dropped))


class Builder:
    """Makes the records of one labelled document (or of a range of its sections: a book's chapter)."""

    def __init__(self, source: Source, document: Document, config: ProseConfig):
        self.source = source
        self.document = document
        self.config = config
        self.prefix = "book" if document.kind == "book" else "guide"
        self.positions = document.positions()
        self.introduced = introductions(document)
        self.dropped: collections.Counter[str] = collections.Counter()  # of the sections being made
        self.defined: set[str] = set()  # terms already given a QA record in this document

    def text_record(self, task: str, text: str, indices: range, section: tuple[str, ...]) -> Record:
        return self._record(task, "text", self._place(indices, section), text=text)

    def section_records(self, indices: range) -> tuple[list[Record], collections.Counter[str]]:
        """The explanation, code and QA records of these sections, and what could not become one, by reason."""
        self.dropped = collections.Counter()
        records = []
        for index in indices:
            section = self.document.sections[index]
            records += self._explanation(index, section)
            records += self._listings(index, section)
            records += self._definitions(index, section)
        return records, self.dropped

    def facts(self, indices: range, dropped: collections.Counter[str]) -> dict[str, Any]:
        """The figures of these sections for the manifest: documents, sections, code blocks by label, drops."""
        sections = [self.document.sections[i] for i in indices]
        code = collections.Counter(_code_kind(b) for s in sections for b in s.blocks if b.kind == "code")
        return {"documents": {self.document.kind: 1}, "sections": len(sections), "code_blocks": dict(code),
                "dropped": dict(dropped)}

    # --- the three kinds of section record --------------------------------------------------------------------

    def _explanation(self, index: int, section: Section) -> list[Record]:
        prose = sum(len(b.text) for b in section.blocks if b.kind == "prose")
        if prose < self.config.min_explain_chars:
            self.dropped["section: too little prose"] += 1
            return []
        answer = self._within(section.blocks)
        heading = section.title or self.document.title
        if heading.endswith("?"):
            request = f"{heading} (In Elixir; as {self._origin()}{self._part(section)} answers it.)"
            task = f"{self.prefix}_qa"
        else:
            request = f'Explain "{heading}" in Elixir, following {self._origin()}{self._part(section)}.'
            task = f"{self.prefix}_explain"
        place = self._place(range(index, index + 1), section.path)
        return [self._record(task, "chat", place, messages=(request, answer))]

    def _listings(self, index: int, section: Section) -> list[Record]:
        records = []
        for position, block in enumerate(section.blocks):
            if block.kind != "code" or block.label is None or block.label.language != "elixir":
                continue
            reason = self._unusable(block)
            if reason:
                self.dropped[f"listing: {reason}"] += 1
                continue
            previous = section.blocks[position - 1] if position else None
            intro = _last_paragraph(previous.text) if previous is not None and previous.kind == "prose" else ""
            heading = section.title or self.document.title
            if len(intro.split()) >= self.config.min_intro_words:
                request = (f'Write the Elixir code that this passage from {self._origin()} (section "{heading}") '
                           f"introduces.\n\n{intro}")
            elif self.document.kind == "cheatsheet" and position == 0 and section.path:
                request = f'Show "{heading}" in Elixir, as {self._origin()} does.'
            else:
                self.dropped["listing: no introducing paragraph"] += 1
                continue
            place = dataclasses.replace(self._place(range(index, index + 1), section.path), code=(block.label,),
                                        introduces=self.introduced[index][position])
            records.append(self._record(f"{self.prefix}_code", "chat", place,
                                        messages=(request, f"```elixir\n{block.text.strip(chr(10))}\n```")))
        return records

    def _unusable(self, block: Block) -> str | None:
        if not block.label.parses:
            return "does not parse"
        if block.session:
            return "an IEx session"
        if len(block.text.strip()) < self.config.min_listing_chars:
            return "too short"
        return None

    def _definitions(self, index: int, section: Section) -> list[Record]:
        records = []
        for block in section.blocks:
            if block.kind != "prose":
                continue
            for paragraph in re.split(r"\n\s*\n", block.text):
                sentences = _sentences(" ".join(paragraph.split()))
                for at, sentence in enumerate(sentences):
                    match = _DEFINITION.match(sentence)
                    if not match or match["term"] in self.defined:
                        continue
                    if sentence.endswith(":"):
                        self.dropped["definition: introduces what follows it"] += 1
                        continue
                    self.defined.add(match["term"])
                    answer = sentences[at:at + 3]
                    while answer[-1].endswith(":"):  # it introduced a listing or a list left out
                        answer.pop()
                    place = dataclasses.replace(self._place(range(index, index + 1), section.path), code=(),
                                                introduces=())
                    records.append(self._record(f"{self.prefix}_qa", "chat", place,
                                                messages=(_question(match), " ".join(answer))))
        return records

    # --- helpers ----------------------------------------------------------------------------------------------

    def _within(self, blocks: tuple[Block, ...]) -> str:
        """The blocks as Markdown, cut after the last whole block (or paragraph) within max_answer_chars."""
        kept: list[Block] = []
        for block in blocks:
            if len(render(kept + [block])) > self.config.max_answer_chars:
                if block.kind == "prose":
                    paragraphs = re.split(r"\n\s*\n", block.text)
                    while paragraphs and len(render(kept + [Block("prose", "\n\n".join(paragraphs))])) > \
                            self.config.max_answer_chars:
                        paragraphs.pop()
                    if paragraphs:
                        kept.append(Block("prose", "\n\n".join(paragraphs)))
                break
            kept.append(block)
        return render(kept)

    def _origin(self) -> str:
        document = self.document
        if document.kind == "book":
            return f'the book "{document.title}"'
        noun = {"notebook": "Livebook notebook", "cheatsheet": "cheatsheet"}.get(document.kind, "guide")
        return f'the {self.source.package} {noun} "{document.title}"'

    def _part(self, section: Section) -> str:
        parents = [p for i, p in enumerate(section.path[:-1]) if not (i == 0 and p == self.document.title)]
        return f', part "{" > ".join(parents)}"' if parents else ""

    def _place(self, indices: range, section: tuple[str, ...]) -> Place:
        sections = [self.document.sections[i] for i in indices]
        pages = [p for s in sections if s.pages for p in s.pages]
        introduced = [c for i in indices for block in self.introduced[i] for c in block]
        return Place(document=self.document.title, section=section, order=indices.start,
                     position=self.positions[indices.start] if sections else 0.0,
                     chapter=sections[0].chapter if sections else None,
                     pages=(min(pages), max(pages)) if pages else None,
                     code=tuple(b.label for s in sections for b in s.blocks if b.label is not None),
                     introduces=tuple(introduced))

    def _record(self, task: str, kind: str, place: Place, **payload) -> Record:
        if "messages" in payload:
            user, assistant = payload["messages"]
            payload["messages"] = (Message("user", user.strip()), Message("assistant", assistant.strip()))
        content = {k: [dataclasses.asdict(m) for m in v] if k == "messages" else v for k, v in payload.items()}
        key = json.dumps([task, dataclasses.asdict(self.source), content, place.section, place.order],
                         sort_keys=True, ensure_ascii=False)
        return Record(id=hashlib.sha256(key.encode()).hexdigest()[:24], kind=kind, task=task, source=self.source,
                      place=place, **payload)


def _code_kind(block: Block) -> str:
    label = block.label
    if label is None or label.language != "elixir":
        return "other"
    return "elixir" if label.parses else "elixir, does not parse"


_RULE = re.compile(r"^\s*(?:[-*_]\s*){3,}$", re.M)  # a thematic break (`---`) ends a paragraph too


def _last_paragraph(text: str, max_chars: int = 800) -> str:
    """The prose right before a listing (its last sentences within `max_chars`), on one line."""
    paragraph = " ".join(_RULE.split(re.split(r"\n\s*\n", text.strip())[-1])[-1].split())
    sentences = _sentences(paragraph)
    while len(" ".join(sentences)) > max_chars and len(sentences) > 1:
        sentences.pop(0)
    return " ".join(sentences)


_INLINE_CODE = re.compile(r"`[^`]*`")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\[(*_])")


def _sentences(text: str) -> list[str]:
    """Sentences of a one-line paragraph; a full stop inside inline code (`Enum.map/2`) ends none."""
    codes: list[str] = []
    masked = _INLINE_CODE.sub(lambda m: codes.append(m[0]) or f"\0{len(codes) - 1}\0", text)
    restore = lambda s: re.sub(r"\0(\d+)\0", lambda m: codes[int(m[1])], s)  # noqa: E731
    return [restore(s) for s in _SENTENCE_END.split(masked) if s.strip()]


_VERBS = ("is", "are", "returns", "lets", "allows", "starts", "sends", "spawns", "creates", "defines", "takes",
          "runs", "provides", "accepts", "converts", "keeps", "stores", "waits", "blocks", "raises", "matches",
          "calls", "works")
# "The `:max_demand` option is ...", "`GenServer.call/3` returns ...": a sentence that says what an inline-code
# term is or does (not what it is not).
_DEFINITION = re.compile(r"(?:(?:The|A|An)\s+)?`(?P<term>[^`\n]{1,60})`(?:\s+(?P<noun>function|module|macro|behaviour|"
                         r"protocol|operator|construct|callback|option|struct|process))?\s+(?P<verb>" + "|".join(_VERBS)
                         + r")\s+(?!not\b)\S")


def _question(match: re.Match) -> str:
    subject = f"the `{match['term']}` {match['noun']}" if match["noun"] else f"`{match['term']}`"
    if match["verb"] in ("is", "are"):
        return f"What {match['verb']} {subject} in Elixir?"
    if match["verb"] == "returns":
        return f"What does {subject} return in Elixir?"
    return f"What does {subject} do in Elixir?"


@dataclasses.dataclass
class ProseTally:
    """What the run read from documents, for manifest.json's `prose`: documents by kind, sections, code blocks
    by label, what could not become a record (by reason), and each book's reading figures."""

    documents: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    sections: int = 0
    code_blocks: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    dropped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    books: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def add(self, entry: dict[str, Any]) -> None:
        """Counts a kept file entry's prose figures (a code file has none)."""
        facts = entry.get("prose")
        if not facts:
            return
        self.documents.update(facts["documents"])
        self.sections += facts["sections"]
        self.code_blocks.update(facts["code_blocks"])
        self.dropped.update(facts["dropped"])
        if "book" in facts:
            self.books.append(facts["book"])

    def summary(self) -> dict[str, Any]:
        return {"documents": dict(sorted(self.documents.items())), "sections": self.sections,
                "code_blocks": dict(sorted(self.code_blocks.items())),
                "dropped_by_reason": dict(self.dropped.most_common()), "books": self.books}
