"""Markdown guides, ExDoc cheatsheets (`.cheatmd`) and Livebook notebooks (`.livemd`) read into a Document.

markdown-it-py (CommonMark) finds the headings and code blocks, so a `#` inside a fence or a fence inside a list
is read as Markdown reads it; the prose between them is kept as written. What is only markup for a tool is left
out of the prose: HTML comments (Livebook's `<!-- livebook:{...} -->` cell metadata among them) and cheatsheets'
`{: .col-2}` attribute lines. A Livebook output (the fence after `<!-- livebook:{"output":true} -->`) is
labelled `output`, not code.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from markdown_it import MarkdownIt

from data_pipeline.document import Block, Document, Section

_MARKDOWN = MarkdownIt("commonmark").enable("table")
_COMMENT_LINE = re.compile(r"^\s*<!--.*-->\s*$")
_ATTRIBUTE_LINE = re.compile(r"^\s*\{:[^}]*\}\s*$")  # {: .col-2} in a cheatsheet
_OUTPUT_MARK = re.compile(r"<!--\s*livebook:\{.*\"output\"\s*:\s*true.*\}\s*-->")
KINDS = {".md": "guide", ".cheatmd": "cheatsheet", ".livemd": "notebook"}


def without_markup(text: str) -> str:
    """The text without lines that are only an HTML comment or an attribute list (tool markup, not prose)."""
    return "\n".join(line for line in text.split("\n")
                     if not (_COMMENT_LINE.match(line) or _ATTRIBUTE_LINE.match(line)))


def read_markdown(path: str, text: str) -> Document:
    """The document at `path` (its kind from the extension); its title is its first heading when that is a `#`
    heading that comes first, else the file's name."""
    lines = text.split("\n")
    headings: list[tuple[int, int, int, str]] = []  # (start, end, level, title)
    code: list[tuple[int, int, str, str]] = []  # (start, end, language, content)
    tokens = _MARKDOWN.parse(text)
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.map:
            headings.append((token.map[0], token.map[1], int(token.tag[1]), tokens[index + 1].content.strip()))
        elif token.type in ("fence", "code_block") and token.map:
            language = token.info.split()[0].lower() if token.info.strip() else ""
            if _after_output_mark(lines, token.map[0]):
                language = "output"
            code.append((token.map[0], token.map[1], language, token.content))
    events = sorted([(start, end, ("heading", level, title)) for start, end, level, title in headings] +
                    [(start, end, ("code", language, content)) for start, end, language, content in code])
    sections: list[Section] = []
    heading_path: tuple[str, ...] = ()
    levels: tuple[int, ...] = ()
    blocks: list[Block] = []
    line = 0
    for start, end, event in events:
        _add_prose(blocks, lines[line:start])
        if event[0] == "heading":
            if blocks or heading_path:
                sections.append(Section(heading_path, tuple(blocks)))
            _, level, title = event
            keep = [i for i, held in enumerate(levels) if held < level]
            heading_path = tuple(heading_path[i] for i in keep) + (title,)
            levels = tuple(levels[i] for i in keep) + (level,)
            blocks = []
        else:
            _, language, content = event
            if content.strip():
                blocks.append(Block("code", content.rstrip("\n"), language))
        line = end
    _add_prose(blocks, lines[line:])
    if blocks or heading_path:
        sections.append(Section(heading_path, tuple(blocks)))
    titled = headings and headings[0][2] == 1 and not (sections and sections[0].path == ())
    title = headings[0][3] if titled else PurePosixPath(path).stem
    return Document(title, KINDS[PurePosixPath(path).suffix], tuple(sections))


def _add_prose(blocks: list[Block], lines: list[str]) -> None:
    text = without_markup("\n".join(lines)).strip("\n")
    if text.strip():
        blocks.append(Block("prose", text))


def _after_output_mark(lines: list[str], start: int) -> bool:
    previous = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
    return bool(_OUTPUT_MARK.search(previous))
