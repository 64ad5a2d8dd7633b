"""The per-unit checkpoint store, so a killed run resumes where it stopped.

A unit (a package release, a repository, a batch of local files, an OTP application) is the unit of
work: its result is written once, atomically, after it is fully processed. A resumed run skips every
unit whose result exists and redoes the rest; the final assembly always reads all results afresh.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

from devstral_jax.atomic import atomic_write


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
