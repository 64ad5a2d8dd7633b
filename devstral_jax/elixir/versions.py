"""Which Elixir reads and runs the code, and what it cannot read.

The parser and the executor are whatever Elixir is installed (1.14 on Debian 12). Syntax a later version
introduced (Nx's `~VEC[1 2 3]` and `~MAT[...]`: multi-letter sigils, Elixir 1.15) does not parse there, yet the
code is not broken: the data pipeline reports such files as "needs a newer Elixir", and the evaluation warns
about problems that use it. MultiPL-E's published results come from its evaluation container's Elixir, so
results from another one are flagged, not silently compared.
"""

from __future__ import annotations

import functools
import re
import subprocess

# MultiPL-E's evaluation container (nuprl/MultiPL-E, evaluation/Dockerfile at commit 3d11fa3) installs Elixir
# 1.17.2 built for OTP 27.0 from builds.hex.pm.
MULTIPL_E_ELIXIR = "1.17.2"
MULTIPL_E_OTP = "27"

# (the version that introduced it, what it is, how to see it on a line)
NEWER_SYNTAX: tuple[tuple[tuple[int, int], str, re.Pattern[str]], ...] = (
    ((1, 15), "multi-letter sigil", re.compile(r"~[A-Z][A-Z0-9]+[/|\"'(\[{<]")),
)


@functools.cache
def installed_elixir() -> str:
    """The installed Elixir's version, e.g. "1.14.0"."""
    return subprocess.run(["elixir", "--short-version"], capture_output=True, text=True, check=True).stdout.strip()


@functools.cache
def installed_otp() -> str:
    """The installed Erlang/OTP release, e.g. "25"."""
    command = ["erl", "-noshell", "-eval", 'io:put_chars(erlang:system_info(otp_release)), halt().']
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def _version(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


def newer_syntax(line: str, installed: str) -> str | None:
    """Why `line` needs a newer Elixir than `installed`, or None."""
    for version, what, pattern in NEWER_SYNTAX:
        if _version(installed) < version and (match := pattern.search(line)):
            return (f"needs a newer Elixir: {version[0]}.{version[1]}+ ({what} {match.group()[:-1]}), "
                    f"installed {installed}")
    return None


def newer_syntax_uses(text: str, installed: str) -> list[str]:
    """Every line of `text` using syntax the `installed` Elixir cannot parse, as "line N: why"."""
    return [f"line {number}: {reason}" for number, line in enumerate(text.split("\n"), 1)
            if (reason := newer_syntax(line, installed))]


def needs_newer(text: str, error: str, installed: str) -> str | None:
    """Why a file that failed to parse with `error` needs a newer Elixir than `installed`, or None.

    The syntax must be on the line the parser stopped at: a file with a real error elsewhere stays broken.
    """
    line_number = re.search(r"\bline (\d+)", error)
    if line_number is None:
        return None
    lines = text.split("\n")
    return newer_syntax(lines[int(line_number.group(1)) - 1] if int(line_number.group(1)) <= len(lines) else "",
                        installed)
