"""Quality filters on source files, in the spirit of StarCoder's: drop what would teach the model noise.

Each check returns the reason a file is dropped ("category: detail"), or None to keep it.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    min_chars: int
    max_chars: int
    max_line_length: int
    max_mean_line_length: float
    min_alnum_ratio: float
    excluded_dirs: tuple[str, ...]  # folders at any depth: "deps", "_build", "priv/static"
    generated_markers: tuple[str, ...]  # lower-case phrases that mark generated code near the top
    generated_marker_lines: int


def decode(content: bytes) -> str | None:
    """UTF-8 text with LF line ends, or None when the bytes are not UTF-8."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def rejection(path: str, text: str, config: FilterConfig) -> str | None:
    """Why `text` (the file at `path`) should be dropped, or None."""
    for excluded in config.excluded_dirs:
        if f"/{excluded.strip('/')}/" in f"/{path}":
            return f"excluded path: under {excluded}/"
    if len(text) < config.min_chars:
        return f"too small: {len(text)} characters, under {config.min_chars}"
    if len(text) > config.max_chars:
        return f"too large: {len(text)} characters, over {config.max_chars}"
    lines = text.splitlines() or [""]
    longest = max(len(line) for line in lines)
    if longest > config.max_line_length:
        return f"long line: {longest} characters, over {config.max_line_length}"
    mean = len(text) / len(lines)
    if mean > config.max_mean_line_length:
        return f"long lines: {mean:.0f} characters a line on average, over {config.max_mean_line_length:g}"
    alnum = sum(c.isalnum() for c in text) / len(text)
    if alnum < config.min_alnum_ratio:
        return f"low alphanumeric ratio: {alnum:.2f}, under {config.min_alnum_ratio:g}"
    head = "\n".join(lines[:config.generated_marker_lines]).lower()
    for marker in config.generated_markers:
        if marker in head:
            return f"generated: {marker!r} near the top"
    return None


# A run of characters that cannot end a literal or an expression (no blank, quote, backslash, interpolation or
# bracket): the body of a data URI, an embedded key or hash.
_LONG_RUN = re.compile(r"[^\s\"'`\\#()\[\]{}<>|]{200,}")
_KEPT_OF_RUN = 40


def elide_long_literals(text: str, max_line_length: int) -> str:
    """`text` with each 200+ character run on a line over `max_line_length` cut to its first 40 characters and
    "...": a base64 data URI in a string then costs that string, not the whole file, and every record made
    from the file shows the same short literal. The code around it, and every other line, stay as they are."""
    lines = text.split("\n")
    if max(map(len, lines)) <= max_line_length:
        return text
    return "\n".join(_LONG_RUN.sub(lambda run: run[0][:_KEPT_OF_RUN] + "...", line) if len(line) > max_line_length
                     else line for line in lines)
