"""Books a user owns: PDF and EPUB files (or folders of them) named in `sources.books.paths`.

One unit per book, named after its file; its version is a hash of the file's size and modification time, so a
replaced file is new work. Its licence is the configured one (`sources.books.licence`, by default
`LicenseRef-user-owned`: yours to train on, not to share); records are made by data_pipeline/books.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import AsyncIterator

from data_pipeline import PipelineError
from data_pipeline.books import BOOK_SUFFIXES
from data_pipeline.sources import Fetched, SourceFile, Unit, UnitRejected


class BooksSource:
    def __init__(self, paths: tuple[str, ...], licence: str, max_bytes: int):
        self.files = sorted({book for path in paths for book in _books(Path(path).expanduser().resolve())})
        self.licence = licence
        self.max_bytes = max_bytes

    async def units(self) -> AsyncIterator[Unit]:
        for file in self.files:
            stat = file.stat()
            version = "file-" + hashlib.sha256(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
            name = re.sub(r"[^a-z0-9]+", "_", file.stem.lower()).strip("_") or "book"
            yield Unit(id=f"book/{name}/{version}", kind="book", package=name, version=version, url=file.as_uri(),
                       licences=(self.licence,), licence_source="config sources.books.licence",
                       fetch=lambda file=file: asyncio.to_thread(self._read, file))

    def _read(self, file: Path) -> Fetched:
        size = file.stat().st_size
        if size > self.max_bytes:
            raise UnitRejected(f"too large: {file.name} is {size} bytes, over sources.books.max_bytes "
                               f"({self.max_bytes})")
        return Fetched([SourceFile(file.name, file.read_bytes())])


def _books(path: Path) -> list[Path]:
    if path.is_file() and path.suffix.lower() in BOOK_SUFFIXES:
        return [path]
    if path.is_dir():
        return [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BOOK_SUFFIXES]
    raise PipelineError(f"sources.books.paths: {path} is neither a PDF or EPUB file nor a folder of them.")
