"""A PDF book read into a Document with PyMuPDF: chapters and sections in order, prose apart from code.

    lines      every text line with its spans' fonts (PyMuPDF's `dict` output); spans of one visual line that the
               PDF wrote apart are merged
    order      a page with three or more lines on each side of its middle is two columns: read the left column,
               then the right, band by band between lines that cross the middle (a title over both columns)
    running    lines in the top or bottom 8% of the page whose text (digits as #) recurs on two or more pages, and
               bare page numbers there, are running headers, footers and folios: removed
    headings   the PDF's outline (its table of contents) when it has one: each entry is found on its page by its
               text; else lines at least 1.2 times the body text's size, larger sizes being higher levels;
               level-1 headings are chapters
    code       lines set in a monospace font (the font's flag or name), indented from the position of their first
               glyph against the column's code margin; consecutive code lines form one listing, across a page break
               too (the running lines between them are gone), with blank lines where the PDF leaves a gap; the real
               Elixir then says whether each listing parses (document.py)
    prose      the other lines joined into paragraphs (a gap, or a short line ending a sentence, ends one; a
               hyphenated line end before a lower-case letter is joined); monospace spans inside become `inline code`
"""

from __future__ import annotations

import collections
import dataclasses
import re
import statistics
from typing import Any, Iterable

import pymupdf

from data_pipeline.document import Block, Document, Section, merge_prose, normal

_MONO_NAME = re.compile(r"mono|courier|consol|menlo|inconsolata|typewriter|cmtt|lucidaconsole|andale|code", re.I)
_FOLIO = re.compile(r"^(\d+|[ivxlcdm]+)$", re.I)
_SENTENCE_END = re.compile(r"[.!?:]['\")\]]?$")
_TEXT_FLAGS = pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP
RUNNING_BAND = 0.08  # of the page height, at the top and at the bottom
HEADING_SCALE = 1.2  # a heading's size against the body text's


@dataclasses.dataclass
class _Span:
    text: str
    mono: bool
    size: float
    width: float  # of its box, for a monospace character width


@dataclasses.dataclass(eq=False)
class _Line:
    page: int  # 1-based
    column: int  # 0: single column or left, 1: right
    x0: float
    y0: float
    x1: float
    y1: float
    spans: list[_Span]

    @property
    def text(self) -> str:
        return "".join(span.text for span in self.spans)

    @property
    def mono(self) -> bool:
        return all(span.mono for span in self.spans if span.text.strip())

    @property
    def size(self) -> float:
        return max((span.size for span in self.spans if span.text.strip()), default=0.0)


@dataclasses.dataclass(frozen=True)
class _Heading:
    at: int  # index of the line (in reading order, running lines removed) it stands before
    level: int
    title: str


def read_pdf(data: bytes, fallback_title: str) -> tuple[Document, dict[str, Any]]:
    """The book and the figures of its reading (pages, running lines removed, two-column pages, listings
    rejoined across a page break, whether the outline was used)."""
    with pymupdf.open(stream=data, filetype="pdf") as pdf:
        title = (pdf.metadata or {}).get("title", "").strip() or fallback_title
        toc = [(level, text.strip(), page) for level, text, page in pdf.get_toc() if text.strip() and page >= 1]
        pages = []
        two_columns = 0
        for number, page in enumerate(pdf, start=1):
            lines, columns = _page_lines(page, number)
            pages.append((page.rect.height, lines))
            two_columns += columns == 2
    lines, removed = _without_running_lines(pages)
    headings, heading_lines = _outline_headings(lines, toc) if toc else _size_headings(lines)
    sections, rejoined = _sections(lines, headings, heading_lines)
    facts = {"pages": len(pages), "running_lines_removed": removed, "two_column_pages": two_columns,
             "listings_across_pages": rejoined, "outline": bool(toc)}
    return Document(title, "book", tuple(sections)), facts


# --- lines, in reading order ---------------------------------------------------------------------------------

def _page_lines(page: pymupdf.Page, number: int) -> tuple[list[_Line], int]:
    lines = []
    for block in page.get_text("dict", flags=_TEXT_FLAGS)["blocks"]:
        for line in block.get("lines", ()):
            spans = [_Span(s["text"], bool(s["flags"] & pymupdf.TEXT_FONT_MONOSPACED) or bool(_MONO_NAME.search(
                s["font"])), round(s["size"], 1), s["bbox"][2] - s["bbox"][0]) for s in line["spans"] if s["text"]]
            if spans and "".join(s.text for s in spans).strip():
                lines.append(_Line(number, 0, *line["bbox"], spans))
    return _reading_order(_merged(lines), page.rect.width)


def _merged(lines: list[_Line]) -> list[_Line]:
    """Pieces of one visual line (same baseline, side by side) as one line."""
    merged: list[_Line] = []
    for line in sorted(lines, key=lambda l: (round(l.y1), l.x0)):
        last = merged[-1] if merged else None
        if last and abs(last.y1 - line.y1) < 0.3 * (line.y1 - line.y0) and 0 <= line.x0 - last.x1 < 2 * line.size:
            gap = " " if line.x0 - last.x1 > 0.15 * line.size and not line.text[0].isspace() else ""
            last.spans += ([_Span(gap, last.spans[-1].mono and line.spans[0].mono, line.size, 0.0)] if gap else []) \
                + line.spans
            last.x1, last.y0 = line.x1, min(last.y0, line.y0)
        else:
            merged.append(line)
    return merged


def _reading_order(lines: list[_Line], width: float) -> tuple[list[_Line], int]:
    middle, slack = width / 2, 0.02 * width
    sides = [0 if l.x1 <= middle + slack else 1 if l.x0 >= middle - slack else None for l in lines]
    by_position = sorted(zip(lines, sides), key=lambda pair: (pair[0].y0, pair[0].x0))
    if sides.count(0) < 3 or sides.count(1) < 3:
        return [line for line, _ in by_position], 1
    ordered: list[_Line] = []
    band: list[_Line] = []
    for line, side in by_position:
        if side is None:  # a line across the middle closes a band
            ordered += sorted(band, key=lambda l: (l.column, l.y0, l.x0)) + [line]
            band = []
        else:
            line.column = side
            band.append(line)
    return ordered + sorted(band, key=lambda l: (l.column, l.y0, l.x0)), 2


def _without_running_lines(pages: list[tuple[float, list[_Line]]]) -> tuple[list[_Line], int]:
    """All pages' lines without running headers, footers and page numbers; and how many were removed."""
    def running_key(line: _Line) -> str:
        return re.sub(r"\d+", "#", " ".join(line.text.lower().split()))

    def in_band(height: float, line: _Line) -> bool:
        return line.y1 <= RUNNING_BAND * height or line.y0 >= (1 - RUNNING_BAND) * height

    recurring = collections.Counter(key for height, lines in pages for key in
                                    {running_key(l) for l in lines if in_band(height, l) and not l.mono})
    kept, removed = [], 0
    for height, lines in pages:
        for line in lines:
            running = in_band(height, line) and not line.mono and (
                recurring[running_key(line)] >= 2 or _FOLIO.match(line.text.strip()))
            removed += bool(running)
            if not running:
                kept.append(line)
    return kept, removed


# --- headings ------------------------------------------------------------------------------------------------

def _outline_headings(lines: list[_Line], toc: list[tuple[int, str, int]]) -> tuple[list[_Heading], set[int]]:
    """Each outline entry at the line(s) on its page that spell its title (searched after the previous entry);
    at the top of its page when no line does."""
    headings, taken, start = [], set(), 0
    for level, title, page in toc:
        wanted = normal(title)
        candidates = [i for i in range(start, len(lines)) if lines[i].page == page and not lines[i].mono]
        found = None
        for i in candidates:
            joined, j = "", i
            while j < len(lines) and lines[j].page == page and wanted.startswith(joined + normal(lines[j].text)):
                joined += normal(lines[j].text)
                j += 1
                if joined == wanted:
                    found = (i, j)
                    break
            if found:
                break
        if found:
            headings.append(_Heading(found[0], level, title))
            taken.update(range(*found))
            start = found[1]
        else:
            at = next((i for i in range(start, len(lines)) if lines[i].page >= page), len(lines))
            headings.append(_Heading(at, level, title))
            start = at
    return headings, taken


def _size_headings(lines: list[_Line]) -> tuple[list[_Heading], set[int]]:
    """Lines set larger than the body text: the larger, the higher; wrapped titles (consecutive lines of one
    size) are one heading."""
    sizes = collections.Counter()
    for line in lines:
        if not line.mono:
            sizes[line.size] += len(line.text)
    if not sizes:
        return [], set()
    body = sizes.most_common(1)[0][0]
    big = [i for i, line in enumerate(lines) if not line.mono and line.size >= HEADING_SCALE * body
           and len(line.text.strip()) <= 150 and re.search(r"[A-Za-z]", line.text)]
    levels = {size: level for level, size in enumerate(sorted({lines[i].size for i in big}, reverse=True), start=1)}
    headings: list[_Heading] = []
    previous = None
    for i in big:
        line = lines[i]
        if previous is not None and previous == i - 1 and lines[previous].size == line.size and \
                lines[previous].page == line.page:
            last = headings[-1]
            headings[-1] = _Heading(last.at, last.level, f"{last.title} {line.text.strip()}")
        else:
            headings.append(_Heading(i, levels[line.size], " ".join(line.text.split())))
        previous = i
    return headings, set(big)


# --- sections, paragraphs and listings -----------------------------------------------------------------------

def _sections(lines: list[_Line], headings: list[_Heading], heading_lines: set[int]) -> tuple[list[Section], int]:
    starts = collections.defaultdict(list)
    for heading in headings:
        starts[heading.at].append(heading)
    code = _CodeLayout(lines)
    pitch, code_pitch = _line_pitch(lines, mono=False), _line_pitch(lines, mono=True)
    listing = _listing_lines(lines, pitch)
    sections: list[Section] = []
    path: tuple[str, ...] = ()
    levels: tuple[int, ...] = ()
    chapter: int | None = None
    chapters = -1
    run: list[int] = []  # indices of consecutive code lines, or of consecutive prose lines
    blocks: list[Block] = []
    rejoined = 0

    def flush_run() -> None:
        nonlocal rejoined
        if not run:
            return
        if listing[run[0]]:
            text = code.text([lines[i] for i in run], code_pitch)
            blocks.append(Block("code", text, pages=(lines[run[0]].page, lines[run[-1]].page)))
            rejoined += lines[run[0]].page != lines[run[-1]].page
        else:
            paragraphs = _paragraphs([lines[i] for i in run], pitch)
            blocks.extend(Block("prose", text, pages=pages) for pages, text in paragraphs)
        run.clear()

    for i, line in enumerate(lines + [None]):
        if i in starts or line is None:
            flush_run()
            if blocks or path:
                sections.append(Section(path, merge_prose(blocks), chapter))
            blocks = []
            for heading in starts.get(i, ()):
                if heading.level == 1:
                    chapters += 1
                    chapter = chapters
                keep = [k for k, held in enumerate(levels) if held < heading.level]
                path = tuple(path[k] for k in keep) + (heading.title,)
                levels = tuple(levels[k] for k in keep) + (heading.level,)
        if line is None or i in heading_lines:
            continue
        if run and listing[run[0]] != listing[i]:
            flush_run()
        run.append(i)
    return sections, rejoined


def _listing_lines(lines: list[_Line], pitch: float) -> list[bool]:
    """Which lines are code: the monospace ones, except a lone monospace line inside a paragraph (prose right
    above and below it at the usual spacing), which is inline code that the layout put on a line of its own."""
    def inside_paragraph(i: int) -> bool:
        around = (lines[i - 1], lines[i + 1])
        return all(not n.mono and n.page == lines[i].page and abs(n.y0 - lines[i].y0) < 1.6 * pitch for n in around)

    return [line.mono and not (0 < i < len(lines) - 1 and inside_paragraph(i)) for i, line in enumerate(lines)]


def _line_pitch(lines: list[_Line], mono: bool) -> float:
    """The usual distance between consecutive lines of prose (or of code): the median, so blank lines and
    paragraph gaps do not count."""
    gaps = [b.y0 - a.y0 for a, b in zip(lines, lines[1:]) if a.mono == b.mono == mono and a.page == b.page
            and a.column == b.column and 0 < b.y0 - a.y0 < 4 * max(a.size, 1.0)]
    return statistics.median(gaps) if gaps else 12.0


def _paragraphs(run: list[_Line], pitch: float) -> Iterable[tuple[tuple[int, int], str]]:
    """((first page, last page), text) of each paragraph of a run of prose lines."""
    right = max(line.x1 for line in run)
    paragraph: list[_Line] = []
    for line in run:
        if paragraph and _new_paragraph(paragraph[-1], line, pitch, right):
            yield (paragraph[0].page, paragraph[-1].page), _joined(paragraph)
            paragraph = []
        paragraph.append(line)
    if paragraph:
        yield (paragraph[0].page, paragraph[-1].page), _joined(paragraph)


def _new_paragraph(previous: _Line, line: _Line, pitch: float, right: float) -> bool:
    ends_sentence = bool(_SENTENCE_END.search(previous.text.strip()))
    if previous.page != line.page or previous.column != line.column:
        return ends_sentence
    short = previous.x1 < right - 0.1 * (right - previous.x0)
    return line.y0 - previous.y0 > 1.5 * pitch or (ends_sentence and short)


def _joined(lines: list[_Line]) -> str:
    text = ""
    for line in lines:
        piece = _marked(line.spans).strip()
        if text.endswith("-") and piece[:1].islower():
            text = text[:-1] + piece
        else:
            text = f"{text} {piece}" if text else piece
    return text


def _marked(spans: list[_Span]) -> str:
    """A prose line's text with its monospace spans in backticks."""
    parts: list[list[Any]] = []
    for span in spans:
        mono = span.mono and bool(span.text.strip())
        if parts and (parts[-1][0] == mono or not span.text.strip()):
            parts[-1][1] += span.text
        else:
            parts.append([mono, span.text])
    out = []
    for mono, text in parts:
        if mono:
            core = text.strip()
            out.append(text[:len(text) - len(text.lstrip())] + f"`{core}`" + text[len(text.rstrip()):])
        else:
            out.append(text)
    return "".join(out)


class _CodeLayout:
    """Where code lines start, so indentation can be read from glyph positions: per page and column, the code
    margin is the prose margin plus the book's code offset (the smallest indent of any code line from its
    prose margin); a page or column with no prose uses its own leftmost code line."""

    def __init__(self, lines: list[_Line]):
        prose = collections.defaultdict(list)
        mono = collections.defaultdict(list)
        widths = []
        for line in lines:
            (mono if line.mono else prose)[line.page, line.column].append(line.x0)
            widths += [span.width / len(span.text) for span in line.spans if line.mono and span.text.strip()]
        self.prose_margin = {key: min(xs) for key, xs in prose.items()}
        self.code_margin = {key: min(xs) for key, xs in mono.items()}
        offsets = [self.code_margin[key] - self.prose_margin[key]
                   for key in self.code_margin if key in self.prose_margin]
        self.offset = min(offsets) if offsets else 0.0
        self.char_width = statistics.median(widths) if widths else 6.0

    def margin(self, line: _Line) -> float:
        key = (line.page, line.column)
        if key in self.prose_margin:
            return self.prose_margin[key] + self.offset
        return self.code_margin[key]

    def text(self, run: list[_Line], pitch: float) -> str:
        out: list[str] = []
        for previous, line in zip([None] + run[:-1], run):
            if previous is not None and previous.page == line.page and previous.column == line.column:
                out += [""] * min(2, max(0, round((line.y0 - previous.y0) / pitch) - 1))
            indent = max(0, round((line.x0 - self.margin(line)) / self.char_width))
            out.append(" " * indent + line.text.rstrip())
        return "\n".join(out)
