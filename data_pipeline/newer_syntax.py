"""Files written for a newer Elixir than the installed one: told apart from broken files.

The parser is whatever Elixir is installed (1.14 on Debian 12). A file that uses syntax a later version
introduced (Nx's `~VEC[1 2 3]` and `~MAT[...]`: multi-letter sigils, Elixir 1.15) does not parse there, but it
is not broken: it is reported as "needs a newer Elixir" and counted per version, and it parses once a newer
Elixir is installed (the Elixir version is part of every unit's checkpoint key, so that run redoes it).
"""

from __future__ import annotations

import re
import subprocess

# (the version that introduced it, what it is, how to see it on a line)
NEWER_SYNTAX: tuple[tuple[tuple[int, int], str, re.Pattern[str]], ...] = (
    ((1, 15), "multi-letter sigil", re.compile(r"~[A-Z][A-Z0-9]+[/|\"'(\[{<]")),
)


def installed_elixir() -> str:
    """The installed Elixir's version, e.g. "1.14.0"."""
    return subprocess.run(["elixir", "--short-version"], capture_output=True, text=True, check=True).stdout.strip()


def _version(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


def needs_newer(text: str, error: str, installed: str) -> str | None:
    """Why a file that failed to parse with `error` needs a newer Elixir than `installed`, or None.

    The syntax must be on the line the parser stopped at: a file with a real error elsewhere stays broken.
    """
    line_number = re.search(r"\bline (\d+)", error)
    if line_number is None:
        return None
    lines = text.split("\n")
    line = lines[int(line_number.group(1)) - 1] if int(line_number.group(1)) <= len(lines) else ""
    for version, what, pattern in NEWER_SYNTAX:
        if _version(installed) < version and (match := pattern.search(line)):
            return (f"needs a newer Elixir: {version[0]}.{version[1]}+ ({what} {match.group()[:-1]}), "
                    f"installed {installed}")
    return None
