"""Quality filters on source files, in the spirit of StarCoder's: drop what would teach the model noise.

Each check returns the reason a file is dropped ("category: detail"), or None to keep it.
"""

from __future__ import annotations

import dataclasses


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
