"""Python text as Elixir source: the one place that knows how an Elixir string literal is escaped."""

from __future__ import annotations

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def string_literal(text: str) -> str:
    """`text` as a one-line, double-quoted Elixir string that evaluates back to `text`; `#{` stays literal."""
    escaped = "".join(_ESCAPES.get(char, char) for char in text).replace("#{", "\\#{")
    return f'"{escaped}"'
