"""Prose that packages ship beside their code, and Elixir's own guides.

Guides travel with the code: a package's `.md` files under `guides/`, `pages/` or `docs/` (at any depth), its
ExDoc cheatsheets (`*.cheatmd`) and its Livebook notebooks (`*.livemd`) are listed by every source that lists
files (local trees, Hex tarballs, GitHub), read under the package's licence, and made into records by
data_pipeline/prose.py instead of the parser. Left out by name wherever they are (`prose.excluded_names`):
README (its overview is the main module's @moduledoc, already an explanation record, and the rest is badges,
installation and links), CHANGELOG and release notes (what changed in which version: no Elixir to learn, and
about APIs that may be gone), and the licence, contribution and conduct files. Test folders hold fixtures, not
guides.

Elixir's own guides (`lib/elixir/pages` of its source: getting started, Mix and OTP, anti-patterns,
cheatsheets) come from `sources.elixir_guides`: the installed Elixir's, if it ships them, or a path to them.
Debian's `elixir` package ships none (only compiled modules, man pages and the changelog), so there the path of
a checkout is needed: `git clone --branch v1.14.0 https://github.com/elixir-lang/elixir`.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path, PurePosixPath
from typing import AsyncIterator

from data_pipeline import PipelineError
from data_pipeline.instruct import is_test_path
from data_pipeline.markdown import KINDS
from data_pipeline.sources import Fetched, Skipped, SourceFile, Unit
from data_pipeline.sources.local import tree_version

ELIXIR_LICENCE = "Apache-2.0"


def prose_kind(path: str, folders: tuple[str, ...], excluded_names: tuple[str, ...]) -> str | None:
    """guide, cheatsheet or notebook for a prose file a package ships, else None."""
    parts = PurePosixPath(path)
    kind = KINDS.get(parts.suffix.lower())
    if kind is None or is_test_path(path) or parts.stem.upper() in {n.upper() for n in excluded_names}:
        return None
    if kind == "guide" and not set(parts.parts[:-1]) & set(folders):
        return None
    return kind


def installed_guides() -> Path | None:
    """The installed Elixir's `lib/elixir/pages`, if it ships one."""
    elixir = shutil.which("elixir")
    if elixir is None:
        return None
    pages = Path(elixir).resolve().parent.parent / "lib" / "elixir" / "pages"
    return pages if pages.is_dir() else None


class ElixirGuidesSource:
    """One unit: every guide, cheatsheet and notebook under Elixir's `pages` folder, as `pages/<path>` (so the
    prose selection takes each), under Elixir's licence."""

    def __init__(self, path: str, max_file_bytes: int):
        root = Path(path).expanduser().resolve() if path else installed_guides()
        if root is None:
            raise PipelineError(
                "sources.elixir_guides: the installed Elixir ships no guides (Debian's elixir package installs only "
                "compiled modules). Set sources.elixir_guides.path to lib/elixir/pages of an Elixir checkout "
                "(git clone --branch v1.14.0 https://github.com/elixir-lang/elixir), or disable the source.")
        if not root.is_dir():
            raise PipelineError(f"sources.elixir_guides.path: {root} is not a directory.")
        self.root = root
        self.max_file_bytes = max_file_bytes

    async def units(self) -> AsyncIterator[Unit]:
        paths = await asyncio.to_thread(lambda: sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                                                       if p.suffix in KINDS and p.is_file()))
        version = tree_version(self.root, paths)
        yield Unit(id=f"elixir_guides/{version}", kind="elixir_guides", package="elixir", version=version,
                   url=self.root.as_uri(), licences=(ELIXIR_LICENCE,), licence_source="Elixir's licence",
                   fetch=lambda: asyncio.to_thread(self._read, paths))

    def _read(self, paths: list[str]) -> Fetched:
        fetched = Fetched(files=[])
        for relative in paths:
            size = (self.root / relative).stat().st_size
            if size > self.max_file_bytes:
                fetched.skipped.append(Skipped(f"pages/{relative}", f"too large: {size} bytes, over the "
                                                                    f"{self.max_file_bytes}-byte cap per file"))
            else:
                fetched.files.append(SourceFile(f"pages/{relative}", (self.root / relative).read_bytes()))
        return fetched
