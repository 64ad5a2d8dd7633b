"""Atomic writes and the per-unit checkpoint store, so a killed run resumes where it stopped.

A unit (a package release, a repository, a batch of local files, an OTP application) is the unit of
work: its result is written once, atomically, after it is fully processed. A resumed run skips every
unit whose result exists and redoes the rest; the final assembly always reads all results afresh.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Iterator


def atomic_write(path: Path, data: bytes) -> None:
    """Writes `data` to `path` so that a reader sees either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class UnitStore:
    """One JSON file per finished unit under `directory`, named after the unit id (percent-encoded)."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, unit_id: str) -> Path:
        return self.directory / f"{urllib.parse.quote(unit_id, safe='')}.json"

    def done(self, unit_id: str) -> bool:
        return self._path(unit_id).exists()

    def save(self, result: dict[str, Any]) -> None:
        atomic_write(self._path(result["unit"]["id"]), json.dumps(result, ensure_ascii=False).encode())

    def results(self) -> Iterator[dict[str, Any]]:
        """Every saved result, one at a time, always in the same order (the assembly's determinism)."""
        for path in sorted(self.directory.glob("*.json")):
            yield json.loads(path.read_text())
