"""An EPUB book read into a Document: the zip's package document (OPF) gives the title and the spine (reading
order), the navigation document (EPUB 3 `nav`, or EPUB 2's NCX) gives the chapters and sections, and each
XHTML content document gives headings, paragraphs and listings (`<pre>`), read with lxml.

Why no EPUB library: an EPUB is a zip of XML; the package and navigation documents are a few elements each, and
a library (ebooklib, the maintained one) would still leave the XHTML to us. zipfile and lxml (maintained,
already a dependency through sacrebleu) do it, with the limits we choose: the archive is never extracted, only
members the package names are read, each within a size cap, and XML is parsed without DTDs, external entities
or network access.

Structure: a navigation entry starts a section at its depth where its target (a document, or an element id
in it) begins; a heading (or a paragraph: some books set titles so) that repeats the entry's title right there
is its title, not content; other headings start subsections below it (one level per heading rank). With no
navigation document, headings alone give the structure. Depth-1 sections are chapters. Inline
`code`/`tt`/`kbd`/`samp` become `inline code`; a `<pre>`'s language comes from a `language-*` or `elixir`
class, else the real Elixir decides (document.py).
"""

from __future__ import annotations

import dataclasses
import io
import posixpath
import re
import urllib.parse
import zipfile
from typing import Any, Iterator

import lxml.etree
import lxml.html

from data_pipeline.document import Block, Document, Section, merge_prose, normal

MiB = 1 << 20
MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 64 * MiB
MAX_TOTAL_BYTES = 512 * MiB

_NS = {"c": "urn:oasis:names:tc:opendocument:xmlns:container", "opf": "http://www.idpf.org/2007/opf",
       "dc": "http://purl.org/dc/elements/1.1/", "ncx": "http://www.daisy.org/z3986/2005/ncx/"}
_XML = lxml.etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_INLINE_CODE = {"code", "tt", "kbd", "samp"}
_PARAGRAPHS = {"p", "dt", "dd", "figcaption", "caption", "td", "th"}
_SKIPPED = {"script", "style", "img", "svg", "math", "head", "nav"}


class EpubError(ValueError):
    """The file is not a usable EPUB."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    depth: int
    title: str
    document: str  # the content document's path in the zip
    fragment: str | None


def read_epub(data: bytes, fallback_title: str) -> tuple[Document, dict[str, Any]]:
    """The book and the figures of its reading (spine documents, navigation entries, whether it has one)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise EpubError(f"not a zip archive: {error}") from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        if len(members) > MAX_MEMBERS or sum(i.file_size for i in members.values()) > MAX_TOTAL_BYTES:
            raise EpubError(f"too large: more than {MAX_MEMBERS} members or {MAX_TOTAL_BYTES} bytes unpacked")
        read = lambda name: _member(archive, members, name)  # noqa: E731
        container = _xml(read("META-INF/container.xml"))
        package_path = container.xpath("string(//c:rootfile/@full-path)", namespaces=_NS)
        package = _xml(read(package_path))
        base = posixpath.dirname(package_path)
        title = " ".join(package.xpath("string(//dc:title)", namespaces=_NS).split()) or fallback_title
        items = {item.get("id"): item for item in package.xpath("//opf:manifest/opf:item", namespaces=_NS)}
        spine = [_resolve(base, items[ref.get("idref")].get("href"))
                 for ref in package.xpath("//opf:spine/opf:itemref", namespaces=_NS)
                 if ref.get("idref") in items and ref.get("linear") != "no"
                 and "nav" not in (items[ref.get("idref")].get("properties") or "").split()]
        entries = _navigation(package, items, base, read)
        events = [event for path in spine if path in members for event in _events(path, read(path), entries)]
    sections = _sections(events, navigated=bool(entries))
    facts = {"spine_documents": len(spine), "navigation_entries": len(entries), "outline": bool(entries)}
    return Document(title, "book", tuple(sections)), facts


def _member(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], name: str) -> bytes:
    info = members.get(name)
    if info is None:
        raise EpubError(f"it names {name!r}, which it does not hold")
    if info.file_size > MAX_MEMBER_BYTES:
        raise EpubError(f"{name} is {info.file_size} bytes, over the {MAX_MEMBER_BYTES}-byte cap")
    with archive.open(info) as stream:
        data = stream.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise EpubError(f"{name} unpacks to more than {MAX_MEMBER_BYTES} bytes")
    return data


def _xml(data: bytes) -> lxml.etree._Element:
    try:
        return lxml.etree.fromstring(data, _XML)
    except lxml.etree.XMLSyntaxError as error:
        raise EpubError(f"bad XML: {error}") from None


def _resolve(base: str, href: str | None) -> str:
    path = urllib.parse.unquote((href or "").split("#", 1)[0])
    return posixpath.normpath(posixpath.join(base, path)) if path else ""


# --- navigation -----------------------------------------------------------------------------------------------

def _navigation(package: lxml.etree._Element, items: dict[str, Any], base: str, read) -> list[_Entry]:
    """The table of contents as (depth, title, target) entries, in order: EPUB 3's nav, else EPUB 2's NCX."""
    for item in items.values():
        if "nav" in (item.get("properties") or "").split():
            path = _resolve(base, item.get("href"))
            document = lxml.html.document_fromstring(read(path))
            toc = document.xpath("//nav[@epub:type='toc' or @*[local-name()='type']='toc']",
                                 namespaces={"epub": "http://www.idpf.org/2007/ops"}) or document.xpath("//nav")
            if toc:
                return list(_nav_entries(toc[0].find("ol"), posixpath.dirname(path), 1))
    ncx_id = package.xpath("string(//opf:spine/@toc)", namespaces=_NS)
    if ncx_id in items:
        path = _resolve(base, items[ncx_id].get("href"))
        root = _xml(read(path))
        return list(_ncx_entries(root.find("ncx:navMap", _NS), posixpath.dirname(path), 1))
    return []


def _nav_entries(ol: Any, base: str, depth: int) -> Iterator[_Entry]:
    if ol is None:
        return
    for li in ol.findall("li"):
        link = li.find("a")
        if link is not None and link.get("href"):
            yield _entry(depth, link.text_content(), base, link.get("href"))
        yield from _nav_entries(li.find("ol"), base, depth + 1)


def _ncx_entries(parent: Any, base: str, depth: int) -> Iterator[_Entry]:
    if parent is None:
        return
    for point in parent.findall("ncx:navPoint", _NS):
        label = point.find("ncx:navLabel/ncx:text", _NS)
        content = point.find("ncx:content", _NS)
        if label is not None and content is not None and content.get("src"):
            yield _entry(depth, label.text or "", base, content.get("src"))
        yield from _ncx_entries(point, base, depth + 1)


def _entry(depth: int, title: str, base: str, href: str) -> _Entry:
    fragment = urllib.parse.unquote(href.split("#", 1)[1]) if "#" in href else None
    return _Entry(depth, " ".join(title.split()), _resolve(base, href), fragment)


# --- content --------------------------------------------------------------------------------------------------

def _events(path: str, data: bytes, entries: list[_Entry]) -> Iterator[tuple]:
    """A content document as ("entry", _Entry), ("heading", rank, text), ("prose", text), ("code", text,
    language) events in reading order."""
    targets: dict[str | None, list[_Entry]] = {}
    for entry in entries:
        if entry.document == path:
            targets.setdefault(entry.fragment, []).append(entry)
    for entry in targets.get(None, ()):
        yield "entry", entry
    body = lxml.html.document_fromstring(data).find("body")
    if body is not None:
        yield from _walk(body, targets)


def _walk(element: Any, targets: dict[str | None, list[_Entry]]) -> Iterator[tuple]:
    for child in element:
        if not isinstance(child.tag, str) or child.tag in _SKIPPED:
            continue
        for entry in targets.get(child.get("id"), ()) if child.get("id") else ():
            yield "entry", entry
        if child.tag in _HEADINGS:
            yield "heading", _HEADINGS[child.tag], " ".join(child.text_content().split())
        elif child.tag == "pre":
            yield "code", _preformatted(child), _language(child)
        elif child.tag in _PARAGRAPHS or (child.tag == "li" and not _has_blocks(child)):
            text = _inline(child)
            if text:
                yield "prose", f"- {text}" if child.tag == "li" else text
        else:
            yield from _walk(child, targets)


def _has_blocks(element: Any) -> bool:
    return any(isinstance(c.tag, str) and c.tag in _PARAGRAPHS | {"pre", "ul", "ol", "div"} for c in element)


def _inline(element: Any) -> str:
    """A paragraph's text, inline code in backticks, white space collapsed."""
    parts = [element.text or ""]
    for child in element:
        if isinstance(child.tag, str) and child.tag in _INLINE_CODE:
            parts.append(f"`{' '.join(child.text_content().split())}`")
        elif isinstance(child.tag, str) and child.tag not in _SKIPPED:
            parts.append(_inline(child))
        parts.append(child.tail or "")
    return " ".join("".join(parts).split())


def _preformatted(pre: Any) -> str:
    for br in pre.iter("br"):
        br.tail = "\n" + (br.tail or "")
    return pre.text_content().strip("\n")


def _language(pre: Any) -> str:
    classes = " ".join(filter(None, [pre.get("class")] + [c.get("class") for c in pre.iter("code")])).lower()
    match = re.search(r"(?:language|lang)-([\w+-]+)", classes)
    if match:
        return match[1]
    return "elixir" if re.search(r"\belixir\b", classes) else ""


# --- sections -------------------------------------------------------------------------------------------------

def _sections(events: list[tuple], navigated: bool) -> list[Section]:
    ranks = sorted({event[1] for event in events if event[0] == "heading"})
    sections: list[Section] = []
    path: tuple[str, ...] = ()
    blocks: list[Block] = []
    chapter, chapters = None, -1
    depth = 0  # of the last navigation entry (0: none yet, or no navigation at all)
    base: int | None = None if navigated else (ranks[0] - 1 if ranks else 0)  # the heading rank at `depth`
    fresh = ""  # the title of an entry just started, while nothing else followed it

    def start(level: int, title: str) -> None:
        nonlocal path, blocks, chapter, chapters
        if blocks or path:
            sections.append(Section(path, tuple(blocks), chapter))
        blocks = []
        path = path[:level - 1] + (title,)
        if level == 1:
            chapters += 1
            chapter = chapters

    for event in events:
        if event[0] == "entry":
            entry = event[1]
            start(entry.depth, entry.title)
            depth, base, fresh = entry.depth, None, entry.title
        elif event[0] == "heading":
            rank, text = event[1], event[2]
            if fresh and normal(text) and normal(fresh).endswith(normal(text)):
                base, fresh = rank, ""  # the entry's own title
                continue
            if base is None:
                base = rank - 1
            start(max(1, depth + rank - base), text)
            fresh = ""
        elif event[0] == "prose" and fresh and normal(event[1]) == normal(fresh):
            fresh = ""  # the entry's title, set as a paragraph
        else:
            kind = event[0]
            blocks.append(Block("prose", event[1]) if kind == "prose" else Block("code", event[1], event[2]))
            fresh = ""
    if blocks or path:
        sections.append(Section(path, tuple(blocks), chapter))
    return [dataclasses.replace(section, blocks=merge_prose(section.blocks)) for section in sections]
