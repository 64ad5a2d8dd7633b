"""Records from a book a user owns (PDF or EPUB), chapter by chapter.

A book is read (pdf.py, epub.py), its secrets redacted block by block, its code labelled by the real Elixir,
and each chapter becomes one entry of the unit, as a file is for a package: a `book_text` record (the chapter
as Markdown: headings, paragraphs, fenced listings) and the `book_explain`, `book_code` and `book_qa` records of
its sections (prose.py). Front matter (what comes before the first chapter: title page, copyright, contents) is
left out and counted. Every record's `place` says the book, chapter, section, pages and position (0..1 through
the book: how far into the book, and so how advanced, the material is). The licence is the one configured
(`sources.books.licence`, `LicenseRef-user-owned` by default), so a user can keep these records out of any
shared dataset by it.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import PurePosixPath
from typing import Any

import pymupdf

from data_pipeline import secret_filter
from data_pipeline.document import Document, Section, labelled, render
from data_pipeline.epub import EpubError, read_epub
from data_pipeline.pdf import read_pdf
from data_pipeline.prose import Builder, Made, ProseConfig
from devstral_jax.data.records import Source
from devstral_jax.elixir.worker import ElixirPool

BOOK_SUFFIXES = (".pdf", ".epub")


class BookError(ValueError):
    """The file cannot be read as a book (corrupt, not a PDF or EPUB, no text layer)."""


@dataclasses.dataclass
class Chapter:
    path: str  # the entry's name in the manifest: "<file>#<chapter index>"
    made: Made
    secrets: dict[str, Any]  # kinds found and the pages they were on ({} when none)


def read_book(name: str, data: bytes) -> tuple[Document, dict[str, Any]]:
    """The book in `data` (a PDF or an EPUB, by `name`'s suffix) and the figures of its reading."""
    title = PurePosixPath(name).stem
    try:
        document, facts = read_pdf(data, title) if name.lower().endswith(".pdf") else read_epub(data, title)
    except (pymupdf.FileDataError, EpubError) as error:
        raise BookError(f"unreadable book: {error}") from None
    if not any(block.kind == "prose" for section in document.sections for block in section.blocks):
        raise BookError("no text: the book has no text layer (a scanned book needs OCR first)")
    return document, facts


def book_chapters(source: Source, data: bytes, pool: ElixirPool, config: ProseConfig) -> list[Chapter]:
    """The book's chapters as entries with their records; the first also carries the book's figures."""
    document, facts = read_book(source.path, data)
    document, secrets = _redacted(document, source.path)
    if all(section.chapter is None for section in document.sections):  # no headings at all: one chapter
        document = dataclasses.replace(document, sections=tuple(
            dataclasses.replace(s, chapter=0, path=s.path or (document.title,)) for s in document.sections))
    document = labelled(document, pool)
    builder = Builder(source, document, config)
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for index, section in enumerate(document.sections):
        if section.chapter is not None:
            groups[section.chapter].append(index)
    front_matter = sum(section.chapter is None for section in document.sections)
    chapters = []
    for number, indices in sorted(groups.items()):
        span = range(indices[0], indices[-1] + 1)
        sections = [document.sections[i] for i in span]
        title = sections[0].path[0]
        text = "\n\n".join(_markdown(section) for section in sections)
        records, dropped = builder.section_records(span)
        if front_matter and not chapters:
            dropped["front matter (sections before the first chapter)"] += front_matter
        chapter_facts = builder.facts(span, dropped)
        if chapters:
            chapter_facts["documents"] = {}
        else:
            chapter_facts["book"] = {"title": document.title, "file": source.path, "chapters": len(groups), **facts}
        found = [(kind, page) for index, kind, page in secrets if index in span]
        chapters.append(Chapter(f"{source.path}#{number:03d}", Made(
            [builder.text_record("book_text", text, span, section=(title,))] + records, chapter_facts),
            _secret_note(found)))
    return chapters


def _markdown(section: Section) -> str:
    heading = f"{'#' * len(section.path)} {section.title}" if section.path else ""
    return "\n\n".join(part for part in (heading, render(section.blocks)) if part)


def _redacted(document: Document, path: str) -> tuple[Document, list[tuple[int, str, int | None]]]:
    """The document with secrets and personal data redacted in every block; what was found, as (section index,
    kind, first page of its block)."""
    found: list[tuple[int, str, int | None]] = []
    sections = []
    for index, section in enumerate(document.sections):
        blocks = []
        for block in section.blocks:
            scan = secret_filter.scan(path, block.text)
            found += [(index, finding.kind, block.pages[0] if block.pages else None) for finding in scan.found]
            blocks.append(dataclasses.replace(block, text=scan.text) if scan.found else block)
        sections.append(dataclasses.replace(section, blocks=tuple(blocks)))
    return dataclasses.replace(document, sections=tuple(sections)), found


def _secret_note(found: list[tuple[str, int | None]]) -> dict[str, Any]:
    """A chapter entry's note of what was redacted (kinds and pages, never the values); nothing when clean."""
    if not found:
        return {}
    kinds = collections.Counter(kind for kind, _ in found)
    return {"secrets": {"kinds": dict(sorted(kinds.items())), "lines": [],
                        "pages": sorted({page for _, page in found if page is not None})}}
