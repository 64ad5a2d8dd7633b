"""Books a user owns (PDF, EPUB): what is read from them, exactly, and the records made for stage 3.

The books are made here (book_fixtures.py): a PDF with a title page, running headers and page numbers, a
listing broken across a page break, inline code, a hyphenated line end and a two-column page; EPUBs with an
EPUB 3 nav, an EPUB 2 NCX, or no navigation.
"""

import io
import zipfile
from pathlib import Path

import pymupdf
import pytest

from book_fixtures import CHAPTER_1, COUNTER, LISTING, TITLE, epub_book, pdf_book
from data_pipeline.books import BookError, book_chapters, read_book
from data_pipeline.config import USER_OWNED_LICENCE, base_config
from data_pipeline.epub import EpubError, read_epub
from data_pipeline.pdf import read_pdf
from data_pipeline.prose import ProseConfig
from data_pipeline.run import run
from devstral_jax.data.records import Record, Source

PROSE = ProseConfig(**{**base_config().prose, "min_explain_chars": 60})
PROCESSES = ("Every Elixir program runs in processes. A process is cheap: start one with `spawn/1` and give it a "
             "function to run. Processes share nothing and talk by sending each other messages, which keeps them "
             "isolated from each other's failures and lets the runtime schedule them on every core.")
INTRO = ("A message is any term. The following module answers a ping with a pong, in a loop that waits for the next "
         "message:")
SEND = ("`send/2` returns the message it sent, so a send can end a pipeline. The receiving process takes messages "
        "from its mailbox in the order they came.")
LATER = ("To answer later rather than at once, a process can call `Process.send_after/3` with the message and a delay "
         "in milliseconds.")
GENSERVER = "A GenServer keeps state in a process and answers calls one at a time. A counter looks like this:"
CLIENTS = "Clients ask it with GenServer.call/2, which waits for the reply; the server's state lives between calls."
SUPERVISORS = "A supervisor starts children and restarts them when they crash, so a failure stays local."


def structure(document):
    return [(s.path, s.chapter, s.pages, [(b.kind, b.text) for b in s.blocks]) for s in document.sections]


def book_source(name: str) -> Source:
    return Source("book", "practice", "file-1", name, USER_OWNED_LICENCE, "file:///books/" + name)


def test_a_pdf_is_read_in_order_without_running_lines():
    document, facts = read_pdf(pdf_book(), "fallback")
    assert document.title == TITLE and document.kind == "book"
    assert structure(document) == [
        ((), None, (1, 1), [("prose", f"{TITLE}\n\nA small book made for the tests.")]),
        (("Processes",), 0, (2, 2), [("prose", PROCESSES)]),  # `fail-` + `ures` joined, spawn/1 marked as code
        (("Processes", "Sending messages"), 0, (2, 3), [("prose", INTRO), ("code", LISTING),
                                                        ("prose", f"{SEND}\n\n{LATER}")]),
        (("OTP and supervision",), 1, None, []),
        # the title across both columns, then the left column, then the right one
        (("OTP and supervision", "GenServer"), 1, (4, 4), [("prose", GENSERVER), ("code", COUNTER),
                                                           ("prose", CLIENTS)]),
        (("OTP and supervision", "Supervisors"), 1, (4, 4), [("prose", SUPERVISORS)])]
    assert document.sections[2].blocks[1].pages == (2, 3)  # the listing, rejoined across the page break
    # 3 running headers ("Elixir in Practice · 2", · 3, · 4: digits differ) and 3 page numbers
    assert facts == {"pages": 4, "running_lines_removed": 6, "two_column_pages": 1, "listings_across_pages": 1,
                     "outline": True}


def test_without_an_outline_headings_come_from_font_sizes():
    document, facts = read_pdf(pdf_book(outline=False, title_page=False), "fallback")
    with_outline, _ = read_pdf(pdf_book(title_page=False), "fallback")
    assert not facts["outline"] and with_outline.sections[0].path == ("Processes",)
    assert structure(document) == structure(with_outline)


def test_an_epub_follows_its_spine_and_navigation():
    document, facts = read_epub(epub_book("nav"), "fallback")
    assert facts == {"spine_documents": 3, "navigation_entries": 4, "outline": True}
    expected = [
        ((), None, None, [("prose", "Elixir in Practice. Copyright the tests.")]),
        (("Processes",), 0, None, [("prose", "Every Elixir program runs in processes. Start one with `spawn/1` and "
                                             "give it a function to run.")]),
        (("Processes", "Sending messages"), 0, None, [
            ("prose", INTRO),
            ("code", "defmodule Ping do\n  def loop do\n    receive do\n      {:ping, from} -> send(from, :pong)\n"
                     "    end\n  end\nend"),
            ("prose", "`send/2` returns the message it sent."), ("code", "$ iex ping.exs")]),
        # chapter 2's title is a styled paragraph, not a heading: only the navigation makes it a chapter
        (("OTP and supervision",), 1, None, [("prose", "OTP is how Elixir programs are built to last.")]),
        (("OTP and supervision", "GenServer"), 1, None, [
            ("prose", "A counter server holds a number and answers calls for it, one at a time:"),
            ("code", "defmodule Counter do\n  use GenServer\n  def handle_call(:get, _from, n), do: {:reply, n, n}\n"
                     "end")]),
        (("OTP and supervision", "GenServer", "Calling it"), 1, None, [
            ("prose", "Clients use `GenServer.call/2`, which waits for the reply.")])]
    assert structure(document) == expected
    assert [b.language for s in document.sections for b in s.blocks if b.kind == "code"] == ["elixir", "", ""]
    ncx, _ = read_epub(epub_book("ncx"), "fallback")
    assert structure(ncx) == expected
    headings_only, facts = read_epub(epub_book("none"), "fallback")
    assert not facts["outline"]
    assert [s.path for s in headings_only.sections] == [
        (), ("Processes",), ("Processes", "Sending messages"), ("Processes", "GenServer"),
        ("Processes", "GenServer", "Calling it")]


@pytest.mark.parametrize("name, data", [("practice.pdf", pdf_book()), ("practice.epub", epub_book())])
def test_chapters_give_records_from_the_books_own_text(pool, name, data):
    chapters = book_chapters(book_source(name), data, pool, PROSE)
    assert [c.path for c in chapters] == [f"{name}#000", f"{name}#001"]
    first, second = (c.made.records for c in chapters)
    assert [r.task for r in first] == ["book_text", "book_explain", "book_explain", "book_code", "book_qa"]
    assert [r.task for r in second][:1] == ["book_text"] and "book_code" in [r.task for r in second]
    text, _, explain, code, qa = first
    assert text.text.startswith("# Processes\n\n") and "\n## Sending messages\n\n" in text.text
    assert "```elixir\ndefmodule Ping do\n" in text.text
    assert explain.messages[0].content == 'Explain "Sending messages" in Elixir, following the book ' \
                                          f'"{TITLE}", part "Processes".'
    assert code.messages[0].content == f'Write the Elixir code that this passage from the book "{TITLE}" (section ' \
                                       f'"Sending messages") introduces.\n\n{INTRO}'
    assert code.messages[1].content.startswith("```elixir\ndefmodule Ping do\n")
    assert qa.messages[0].content == "What does `send/2` return in Elixir?"
    assert qa.messages[1].content.startswith("`send/2` returns the message it sent")
    # provenance: book, chapter, section, pages; position grows through the book; all under the user's licence
    assert (code.place.document, code.place.chapter, code.place.section) == (TITLE, 0, ("Processes",
                                                                                      "Sending messages"))
    assert code.place.pages == ((2, 3) if name.endswith(".pdf") else None)
    positions = [r.place.position for chapter in chapters for r in chapter.made.records]
    assert positions == sorted(positions) and 0.0 < positions[0] and positions[-1] < 1.0
    assert {r.licence for chapter in chapters for r in chapter.made.records} == {USER_OWNED_LICENCE}
    # where the book's code first uses a concept: Ping's listing introduces receive and send, the counter GenServer
    assert {"receive", "send", "defmodule", "Ping"} <= set(code.place.introduces)
    counter = next(r for r in second if r.task == "book_code")
    assert counter.place.introduces == ("use", "Counter", "GenServer")
    facts = chapters[0].made.facts
    assert facts["documents"] == {"book": 1} and chapters[1].made.facts["documents"] == {}
    assert facts["dropped"] == {"front matter (sections before the first chapter)": 1}
    assert facts["book"]["title"] == TITLE and facts["book"]["chapters"] == 2


def test_books_that_cannot_be_read_say_why(tmp_path):
    with pytest.raises(BookError, match="unreadable book"):
        read_book("broken.pdf", b"%PDF-1.7 not really")
    scanned = pymupdf.open()
    scanned.new_page().draw_rect(pymupdf.Rect(50, 50, 200, 200))  # a page with no text layer
    with pytest.raises(BookError, match="no text"):
        read_book("scanned.pdf", scanned.tobytes())
    with pytest.raises(BookError, match="not a zip archive"):
        read_book("broken.epub", b"PK not really")
    no_container = io.BytesIO()
    with zipfile.ZipFile(no_container, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip")
    with pytest.raises(EpubError, match="META-INF/container.xml"):
        read_epub(no_container.getvalue(), "x")


def test_the_pipeline_reads_books_marked_as_the_users_own(tmp_path, data_config):
    books = tmp_path / "books"
    books.mkdir()
    (books / "Elixir in Practice.pdf").write_bytes(pdf_book())
    (books / "practice.epub").write_bytes(epub_book(chapter_1=CHAPTER_1.replace(
        "give it a function to run.", "give it a function to run. Errata go to jane.doe@acme-books.com.")))
    (books / "torn.pdf").write_bytes(b"%PDF-1.4 torn")
    (books / "notes.txt").write_text("not a book")
    data_config.sources.books.paths = (str(books),)
    manifest = run(data_config)
    units = {u["package"]: u for u in manifest["units"]}
    assert set(units) == {"elixir_in_practice", "practice", "torn"}
    assert all(u["kind"] == "book" and u["licence"]["licence"] == USER_OWNED_LICENCE and u["licence"]["allowed"]
               for u in units.values())
    assert units["elixir_in_practice"]["files_kept"] == 2 and units["torn"]["files_kept"] == 0
    assert manifest["skipped_files"][0]["reason"].startswith("unreadable book:")
    records = [Record.from_json(line) for split in ("train", "validation")
               for line in (Path(data_config.output_dir) / "jsonl" / f"{split}.jsonl").read_text().splitlines()]
    assert {r.source.kind for r in records} == {"book"} and {r.licence for r in records} == {USER_OWNED_LICENCE}
    tasks = {r.task for r in records}
    assert tasks == {"book_text", "book_explain", "book_code", "book_qa"}
    assert [b["file"] for b in manifest["prose"]["books"]] == ["Elixir in Practice.pdf", "practice.epub"]
    assert manifest["prose"]["documents"] == {"book": 2}
    # the author's email is redacted, and the chapter it was in noted
    assert not any("acme-books" in content for r in records for content in r.contents())
    assert any("Errata go to <EMAIL>." in content for r in records for content in r.contents())
    assert manifest["secrets"]["found"] == {"email": 1}
    assert [f["path"] for f in manifest["secrets"]["files"]] == ["practice.epub#000"]
