"""The per-unit checkpoint store, so a killed run resumes where it stopped and a changed run redoes what changed.

A unit (a package release, a repository, a batch of local files, an OTP application) is the unit of
work: its result is written once, atomically, after it is fully processed, under a key of everything that
shaped it (`unit_settings`: the settings it read, its declared licence, the pipeline's code and the Elixir
that parsed it). A rerun skips every unit whose result exists under the same key and redoes the rest,
replacing the stale result; the final assembly reads only the current results of the units listed now.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Iterator

import ml_collections

from devstral_jax.atomic import atomic_write

_REPO = Path(__file__).resolve().parent.parent
# The code that turns sources into unit results: the pipeline, the Elixir toolkit, the record schema.
_CODE = ("data_pipeline", "devstral_jax/elixir", "devstral_jax/data/records.py")
# Source settings that change what a fetched unit holds (the rest only change which units are listed).
_FETCH_SETTINGS = {"hex": ("max_tarball_bytes", "max_uncompressed_bytes"),
                   "github": ("max_tarball_bytes", "max_uncompressed_bytes"), "local": ("licence",),
                   "book": ("max_bytes",)}
_SECTIONS = {"book": "books"}  # a unit kind whose settings live under another name


def code_version() -> str:
    """The pipeline version: a digest of the code that shapes a unit's result, so that any edit redoes units."""
    digest = hashlib.sha256()
    for path in sorted(p for part in _CODE for p in ([_REPO / part] if part.endswith(".py") else
                                                       (_REPO / part).rglob("*")) if p.suffix in (".py", ".exs")):
        digest.update(f"{path.relative_to(_REPO)}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def unit_settings(config: ml_collections.ConfigDict, kind: str, licences: Iterable[str] | None, code: str,
                  elixir: str) -> dict[str, Any]:
    """Everything that shapes one unit's result, flat (`instruct.fim_rate`), so changes can be named."""
    shaping = {"seed": config.seed, "extensions": list(config.extensions),
               "licences.allow": list(config.licences.allow),
               **{f"filters.{k}": v for k, v in config.filters.to_dict().items()},
               **{f"instruct.{k}": v for k, v in config.instruct.to_dict().items()},
               **{f"archive.{k}": v for k, v in config.archive.to_dict().items()},
               **{f"prose.{k}": v for k, v in config.prose.to_dict().items()},
               **{f"sources.{_SECTIONS.get(kind, kind)}.{k}": config.sources[_SECTIONS.get(kind, kind)][k]
                  for k in _FETCH_SETTINGS.get(kind, ())},
               "declared licence": sorted(licences) if licences is not None else None,
               "pipeline version": code, "elixir version": elixir}
    return json.loads(json.dumps(shaping))  # tuples as lists, as they come back from a checkpoint


def key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs, as `name: old -> new`."""
    return [f"{name}: {old.get(name)!r} -> {new.get(name)!r}" for name in sorted(set(old) | set(new))
            if old.get(name) != new.get(name)]


class UnitStore:
    """One JSON file per finished unit under `directory`: `<unit id, percent-encoded>@<key>.json`."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _stem(self, unit_id: str) -> str:
        return urllib.parse.quote(unit_id, safe="")  # never holds "@", so "<stem>@" names one unit's files

    def _path(self, unit_id: str, unit_key: str) -> Path:
        return self.directory / f"{self._stem(unit_id)}@{unit_key}.json"

    def done(self, unit_id: str, unit_key: str) -> bool:
        return self._path(unit_id, unit_key).exists()

    def failed(self, unit_id: str, unit_key: str) -> bool:
        """Whether the unit's result under this key records a failure (retried only when asked)."""
        path = self._path(unit_id, unit_key)
        return path.exists() and json.loads(path.read_text()).get("status") == "failed"

    def stale(self, unit_id: str, unit_key: str) -> dict[str, Any] | None:
        """The settings of a result saved for this unit under another key, if there is one."""
        for path in self.directory.glob(f"{self._stem(unit_id)}@*.json"):
            if path.name != self._path(unit_id, unit_key).name:
                return json.loads(path.read_text()).get("settings", {})
        return None

    def save(self, result: dict[str, Any], unit_key: str) -> None:
        """Writes the result (which holds its `settings`), then removes the unit's results under other keys."""
        unit_id = result["unit"]["id"]
        path = self._path(unit_id, unit_key)
        atomic_write(path, json.dumps(result, ensure_ascii=False).encode())
        for other in self.directory.glob(f"{self._stem(unit_id)}@*.json"):
            if other != path:
                other.unlink()

    def results(self, units: Iterable[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        """The results of (unit id, key) pairs that exist, one at a time, in unit-id order (the assembly's
        determinism)."""
        for unit_id, unit_key in sorted(set(units)):
            path = self._path(unit_id, unit_key)
            if path.exists():
                yield json.loads(path.read_text())
