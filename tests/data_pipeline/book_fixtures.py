"""Small books made here (the repo ships no copyrighted book): a PDF written with PyMuPDF, laid out as a
publisher's would be, and EPUBs zipped by hand.

The PDF "Elixir in Practice": a title page; chapter 1 "Processes" with a section "Sending messages" whose
listing starts at the bottom of page 2 and ends on page 3 (written there without leading spaces, indented by
glyph position), and a paragraph with a line that is only inline code; chapter 2 "OTP and supervision" on a two-column page under a title set across both columns.
Pages 2-4 carry a running header ("Elixir in Practice · <page>") and a page number at the foot. Prose is
Times, code Courier (monospace), inline code Courier inside a Times line.
"""

from __future__ import annotations

import io
import zipfile

import pymupdf

TITLE = "Elixir in Practice"
WIDTH, HEIGHT = 595, 842
BODY, CODE, CODE_PITCH, PITCH = 11, 10, 12, 14
CHAR = 6.0  # Courier's width at 10 pt: 0.6 em

# (indent, text) of the listing, split by the page break; the first part is written with its spaces.
LISTING_PAGE_2 = [(0, "defmodule Ping do"), (2, '@moduledoc "Answers pings."'), None,
                  (2, "def start do"), (4, "spawn(fn -> loop() end)"), (2, "end")]
LISTING_PAGE_3 = [(2, "defp loop do"), (4, "receive do"), (6, "{:ping, from} -> send(from, :pong)"), (4, "end"),
                  (2, "end"), (0, "end")]
LISTING = """defmodule Ping do
  @moduledoc "Answers pings."

  def start do
    spawn(fn -> loop() end)
  end
  defp loop do
    receive do
      {:ping, from} -> send(from, :pong)
    end
  end
end"""
COUNTER = """defmodule Counter do
  use GenServer

  def handle_call(:get, _from, n) do
    {:reply, n, n}
  end
end"""


def _line(page: pymupdf.Page, x: float, y: float, parts: list[tuple[str, str]] | str, size: float = BODY) -> None:
    """One line of text: (text, font) parts side by side (fonts: tiro Times, cour Courier, hebo Helvetica bold)."""
    if isinstance(parts, str):
        parts = [(parts, "tiro")]
    writer = pymupdf.TextWriter(page.rect)
    point = pymupdf.Point(x, y)
    for text, font in parts:
        writer.append(point, text, font=pymupdf.Font(font), fontsize=size)
        point = writer.last_point
    writer.write_text(page)


def _running(page: pymupdf.Page, number: int) -> None:
    _line(page, 72, 30, [(f"{TITLE} · {number}", "helv")], size=9)
    _line(page, 290, 820, [(str(number), "helv")], size=9)


def pdf_book(outline: bool = True, title_page: bool = True) -> bytes:
    doc = pymupdf.open()
    if title_page:
        page = doc.new_page(width=WIDTH, height=HEIGHT)
        _line(page, 150, 300, [(TITLE, "hebo")], size=24)
        _line(page, 150, 340, "A small book made for the tests.")

    page = doc.new_page(width=WIDTH, height=HEIGHT)
    first = page.number + 1
    _running(page, first)
    _line(page, 72, 110, [("Processes", "hebo")], size=20)
    y = 150
    for parts in ([("Every Elixir program runs in processes. A process is cheap: start one with ", "tiro")],
                  [("spawn/1", "cour"), (" and give it a function to run. Processes share nothing", "tiro")],
                  [("and talk by sending each other messages, which keeps them isolated from each other's fail-",
                    "tiro")],
                  [("ures and lets the runtime schedule them on every core.", "tiro")]):
        _line(page, 72, y, parts)
        y += PITCH
    y += 20
    _line(page, 72, y, [("Sending messages", "hebo")], size=14)
    y += 28
    _line(page, 72, y, "A message is any term. The following module answers a ping with a pong, in a loop")
    y += PITCH
    _line(page, 72, y, "that waits for the next message:")
    y = 700
    for item in LISTING_PAGE_2:
        if item is None:
            y += CODE_PITCH
            continue
        indent, text = item
        _line(page, 72, y, [(" " * indent + text, "cour")], size=CODE)
        y += CODE_PITCH

    page = doc.new_page(width=WIDTH, height=HEIGHT)
    _running(page, first + 1)
    y = 90
    for indent, text in LISTING_PAGE_3:
        _line(page, 72 + indent * CHAR, y, [(text, "cour")], size=CODE)
        y += CODE_PITCH
    y += 20
    _line(page, 72, y, [("send/2", "cour"),
                        (" returns the message it sent, so a send can end a pipeline. The", "tiro")])
    y += PITCH
    _line(page, 72, y, "receiving process takes messages from its mailbox in the order they came.")
    y += PITCH + 20
    _line(page, 72, y, "To answer later rather than at once, a process can call")  # a lone code line inside prose
    y += PITCH
    _line(page, 72, y, [("Process.send_after/3", "cour")])
    y += PITCH
    _line(page, 72, y, "with the message and a delay in milliseconds.")

    page = doc.new_page(width=WIDTH, height=HEIGHT)
    _running(page, first + 2)
    _line(page, 200, 100, [("OTP and supervision", "hebo")], size=20)
    left, right = 50, 315
    y = 140
    _line(page, left, y, [("GenServer", "hebo")], size=14)
    y += 26
    for text in ("A GenServer keeps state in a process and", "answers calls one at a time. A counter",
                 "looks like this:"):
        _line(page, left, y, text)
        y += PITCH
    y += 10
    for line in COUNTER.split("\n"):
        if line:
            _line(page, left, y, [(line, "cour")], size=9)
        y += 11
    y = 140
    for text in ("Clients ask it with GenServer.call/2, which", "waits for the reply; the server's state",
                 "lives between calls."):
        _line(page, right, y, text)
        y += PITCH
    y += 20
    _line(page, right, y, [("Supervisors", "hebo")], size=14)
    y += 26
    for text in ("A supervisor starts children and restarts", "them when they crash, so a failure stays", "local."):
        _line(page, right, y, text)
        y += PITCH

    if outline:
        doc.set_toc([[1, "Processes", first], [2, "Sending messages", first], [1, "OTP and supervision", first + 2],
                     [2, "GenServer", first + 2], [2, "Supervisors", first + 2]])
    doc.set_metadata({"title": TITLE})
    return doc.tobytes()


# --- EPUB ----------------------------------------------------------------------------------------------------

_CONTAINER = """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"""


def _xhtml(body: str) -> str:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">
<head><title>x</title></head><body>{body}</body></html>"""


CHAPTER_1 = _xhtml("""
<section><h1>Processes</h1>
<p>Every Elixir program runs in processes. Start one with <code>spawn/1</code> and
   give it a function to run.</p>
<h2 id="send">Sending messages</h2>
<p>A message is any term. The following module answers a ping with a pong, in a loop that waits for the
   next message:</p>
<pre><code class="language-elixir">defmodule Ping do
  def loop do
    receive do
      {:ping, from} -&gt; send(from, :pong)
    end
  end
end</code></pre>
<p><code>send/2</code> returns the message it sent.</p>
<pre>$ iex ping.exs</pre>
</section>""")

CHAPTER_2 = _xhtml("""
<p class="chapter-title">OTP and supervision</p>
<p>OTP is how Elixir programs are built to last.</p>
<h2 id="genserver">GenServer</h2>
<p>A counter server holds a number and answers calls for it, one at a time:</p>
<pre>defmodule Counter do
  use GenServer
  def handle_call(:get, _from, n), do: {:reply, n, n}
end</pre>
<h3>Calling it</h3>
<p>Clients use <code>GenServer.call/2</code>, which waits for the reply.</p>""")

COVER = _xhtml("<p>Elixir in Practice. Copyright the tests.</p>")

NAV = _xhtml("""<nav epub:type="toc"><ol>
<li><a href="ch1.xhtml">Processes</a><ol><li><a href="ch1.xhtml#send">Sending messages</a></li></ol></li>
<li><a href="ch2.xhtml">OTP and supervision</a><ol><li><a href="ch2.xhtml#genserver">GenServer</a></li></ol></li>
</ol></nav>""")

NCX = """<?xml version="1.0" encoding="utf-8"?>
<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1"><navMap>
<navPoint id="p1"><navLabel><text>Processes</text></navLabel><content src="ch1.xhtml"/>
  <navPoint id="p2"><navLabel><text>Sending messages</text></navLabel><content src="ch1.xhtml#send"/></navPoint>
</navPoint>
<navPoint id="p3"><navLabel><text>OTP and supervision</text></navLabel><content src="ch2.xhtml"/>
  <navPoint id="p4"><navLabel><text>GenServer</text></navLabel><content src="ch2.xhtml#genserver"/></navPoint>
</navPoint></navMap></ncx>"""


def epub_book(navigation: str = "nav", chapter_1: str = CHAPTER_1) -> bytes:
    """The EPUB, with an EPUB 3 nav document ("nav"), an EPUB 2 NCX ("ncx") or no navigation ("none")."""
    nav_item = '<item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>'
    ncx_item = '<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>'
    items = {"nav": nav_item, "ncx": ncx_item, "none": ""}[navigation]
    spine_toc = ' toc="ncx"' if navigation == "ncx" else ""
    opf = f"""<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>{TITLE}</dc:title></metadata>
  <manifest>
    <item id="cover" href="cover.xhtml" media-type="application/xhtml+xml"/>
    <item id="ch1" href="ch1.xhtml" media-type="application/xhtml+xml"/>
    <item id="ch2" href="ch2.xhtml" media-type="application/xhtml+xml"/>
    {items}
  </manifest>
  <spine{spine_toc}><itemref idref="cover"/><itemref idref="ch1"/><itemref idref="ch2"/></spine>
</package>"""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        archive.writestr("META-INF/container.xml", _CONTAINER)
        archive.writestr("OEBPS/content.opf", opf)
        for name, text in (("cover.xhtml", COVER), ("ch1.xhtml", chapter_1), ("ch2.xhtml", CHAPTER_2),
                           ("nav.xhtml", NAV), ("toc.ncx", NCX)):
            archive.writestr(f"OEBPS/{name}", text, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()
