"""Where Elixir comes from. Each source lists units of work; each unit fetches its source files.

    hexpm.py       Hex.pm packages (API listing + repo tarballs)      hex_cache.py  tarballs already on disk
    github.py      GitHub repositories (GraphQL search + tarballs)   local.py      a directory or git repo
    otp_docs.py    the installed Elixir's own modules, from their docs chunks (offline)
    prose.py       which of a package's files are guides, cheatsheets, notebooks; Elixir's own guides
    books.py       PDF and EPUB books a user owns

The shared pieces: http.py (the polite HTTP client), safe_tar.py (archive reading with caps) and
hex_tarball.py (the Hex v3 tarball format).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Protocol

from data_pipeline import PipelineError


@dataclasses.dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the package or repository root
    content: bytes


@dataclasses.dataclass(frozen=True)
class Skipped:
    path: str
    reason: str  # "category: detail", e.g. "too large: 52428800 bytes over the 4194304-byte cap"


@dataclasses.dataclass
class Fetched:
    files: list[SourceFile]
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    licences: list[str] = dataclasses.field(default_factory=list)  # found while fetching (tarball metadata, LICENSE)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One checkpointed piece of work. `licences` is set when known before fetching, so a unit whose
    licence is not allowed is never downloaded; `licence_source` says where it was found."""

    id: str  # unique and stable across runs, e.g. "hex/jason/1.4.1"
    kind: str  # hex | github | local | otp_docs | elixir_guides | book
    package: str
    version: str
    url: str
    fetch: Callable[[], Awaitable[Fetched]] = dataclasses.field(compare=False, repr=False)
    licences: tuple[str, ...] | None = None
    licence_source: str = ""

    def describe(self) -> dict[str, object]:
        return {"id": self.id, "kind": self.kind, "package": self.package, "version": self.version, "url": self.url}


def existing_directories(paths: Iterable[str], setting: str) -> list[Path]:
    """`paths` as absolute directories (`~` expanded); a PipelineError naming `setting` for one that is not."""
    resolved = [Path(path).expanduser().resolve() for path in paths]
    for directory in resolved:
        if not directory.is_dir():
            raise PipelineError(f"{setting}: {directory} is not a directory.")
    return resolved


class UnitSource(Protocol):
    """What every source provides: its units, listed lazily (listing may page through an API)."""

    def units(self) -> AsyncIterator[Unit]: ...


class UnitRejected(PipelineError):
    """The unit's material is unusable for good (bad checksum, unsafe or corrupt archive): recorded, not retried."""


class FetchFailed(PipelineError):
    """The unit could not be fetched this time (network, rate limit): reported, and retried by the next run."""


class BadAnswer(PipelineError):
    """A remote answer that is not what the API documents (not JSON, the wrong shape, too large once inflated,
    too slow, a redirect loop): the unit fails alone, recorded with this reason; reruns skip it unless
    `retry_failed` is set."""


def expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """`value` if it is of `kind`, else a BadAnswer naming `what` was expected: every field of a remote answer
    goes through this (or a check like it) before it is used."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise BadAnswer(f"{what} is {type(value).__name__} {str(value)[:60]!r}, expected {names}")
    return value
