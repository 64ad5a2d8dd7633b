"""Training data as a weighted mixture of sources, each a filter over the records of one prepared corpus.

    config.data.mixture = (dict(name="chat", weight=0.7, kind="chat"),
                           dict(name="code", weight=0.2, kind="text", task="file"),
                           dict(name="docs", weight=0.1, source="otp_docs"))

A source admits the records whose fields match all of its filters (`kind`, `task`, `source` = the source's
kind, `package`; a filter is one value or a tuple of values; empty admits any) and, with `difficulty=(low, high)`,
whose difficulty score (records.Difficulty, set by the data pipeline) is in [low, high) (a band ending at 1
includes 1); a record without a score under a difficulty filter is an error, never silently left out. Each
source is tokenized and packed into rows of its own, and Grain's `IterDataset.mix` interleaves the rows in the
weights' proportions, so a source's weight is its share of the rows (every row is `seq_len` token slots). The
mixer's position and every source's iterator position are Grain state, which the trainer saves with each
checkpoint: a resumed run continues the same interleaving. A tally after the mixer (tally.py) counts each
source's real (non-padding) tokens and puts the running totals into every batch as `tokens_by_source`, so the
trainer can log them; the totals are part of the iterator state too, so they survive a resume.

Rehearsal records (a model's own answers, task `rehearsal`) enter only a source whose `task` names them, so no
other source trains on them unweighted.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import grain
import numpy as np

from devstral_jax.data.records import REHEARSAL_TASK, Record
from devstral_jax.data.tally import Tallied
from devstral_jax.errors import ConfigError, DataError

FILTERS = ("kind", "task", "source", "package")
TALLY = "tokens_by_source"  # int64 [sources]: each source's tokens so far, in this process's rows
SOURCE = "mixture_source"  # a row's source index, until the tally reads it


@dataclasses.dataclass(frozen=True)
class MixtureSource:
    name: str
    weight: float
    kind: tuple[str, ...] = ()
    task: tuple[str, ...] = ()
    source: tuple[str, ...] = ()  # the record's source kind: hex, github, otp_docs, book, ...
    package: tuple[str, ...] = ()
    difficulty: tuple[float, ...] = ()  # (low, high): scores in [low, high); empty admits any

    def admits(self, record: Record) -> bool:
        if record.task == REHEARSAL_TASK and REHEARSAL_TASK not in self.task:
            return False
        values = dict(kind=record.kind, task=record.task, source=record.source.kind, package=record.source.package)
        if not all(not allowed or values[name] in allowed for name, allowed in self.filters().items()):
            return False
        if not self.difficulty:
            return True
        if record.difficulty is None:
            raise DataError(f"Mixture source {self.name!r} filters on difficulty, but record {record.id!r} has none: "
                            "score the corpus first (python launch/score_data.py --input=FILE.jsonl, or rebuild it "
                            "with launch/prepare_data.py).")
        return record.difficulty.within(*self.difficulty)

    def filters(self) -> dict[str, tuple[str, ...]]:
        return {name: getattr(self, name) for name in FILTERS}


def parse_mixture(entries: Iterable[Mapping[str, Any]]) -> tuple[MixtureSource, ...]:
    """`config.data.mixture` -> sources; a misspelt filter, a missing name or a non-positive weight is a
    ConfigError."""
    sources = []
    for entry in entries:
        entry = dict(entry)
        if unknown := set(entry) - {"name", "weight", "difficulty", *FILTERS}:
            raise ConfigError(f"Mixture source {entry.get('name')!r} has unknown fields {sorted(unknown)}; a source "
                              f"has a name, a weight, filters among {FILTERS} and a difficulty band.")
        if not entry.get("name"):
            raise ConfigError(f"Mixture source {entry} has no name.")
        weight = entry.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or not weight > 0:
            raise ConfigError(f"Mixture source {entry['name']!r}: weight={weight!r} must be a positive number.")
        filters = {name: (value,) if isinstance(value, str) else tuple(value)
                   for name in FILTERS if (value := entry.get(name))}
        sources.append(MixtureSource(name=entry["name"], weight=float(weight),
                                     difficulty=_band(entry["name"], entry.get("difficulty", ())), **filters))
    if len({s.name for s in sources}) != len(sources):
        raise ConfigError(f"Mixture source names repeat: {[s.name for s in sources]}.")
    return tuple(sources)


def _band(name: str, band: Any) -> tuple[float, ...]:
    """A source's `difficulty=(low, high)` filter, checked: 0 <= low < high <= 1."""
    if band is None or (isinstance(band, (tuple, list)) and not band):
        return ()
    if not (isinstance(band, (tuple, list)) and len(band) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in band)
            and 0.0 <= band[0] < band[1] <= 1.0):
        raise ConfigError(f"Mixture source {name!r}: difficulty={band!r} must be a band (low, high) of scores with "
                          "0 <= low < high <= 1, e.g. (0.0, 0.5).")
    return (float(band[0]), float(band[1]))


def fingerprint(sources: tuple[MixtureSource, ...]) -> list[dict[str, Any]]:
    """The mixture as plain JSON, for the run fingerprint (no difficulty band: as before bands existed)."""
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(s).items()
             if k != "difficulty" or v} for s in sources]


def source_indices(records: grain.MapDataset, sources: tuple[MixtureSource, ...]) -> dict[str, list[int]]:
    """The indices of each source's records in `records` (one pass; an index holding None is skipped), in corpus
    order; a source that admits nothing is a ConfigError."""
    selected: dict[str, list[int]] = {s.name: [] for s in sources}
    total = 0
    for index in range(len(records)):
        if (record := records[index]) is None:
            continue
        total += 1
        for source in sources:
            if source.admits(record):
                selected[source.name].append(index)
    if empty := [s for s in sources if not selected[s.name]]:
        raise ConfigError(f"Mixture source {empty[0].name!r} ({empty[0].filters()}, difficulty "
                          f"{empty[0].difficulty or 'any'}) admits none of the "
                          f"{total} records: check its filters against the corpus.")
    return selected


def admitted_indices(records: grain.MapDataset, sources: tuple[MixtureSource, ...]) -> list[int]:
    """The indices of the records any source admits (validation reads their union, unmixed)."""
    return [i for i in range(len(records)) if (r := records[i]) is not None and any(s.admits(r) for s in sources)]


def mix_rows(rows: dict[str, grain.IterDataset], sources: tuple[MixtureSource, ...]) -> grain.IterDataset:
    """Each source's packed rows interleaved in proportion to its weight, with the running token tally."""
    mixed = grain.IterDataset.mix({s.name: rows[s.name] for s in sources}, {s.name: s.weight for s in sources})
    return Tallied(mixed, SOURCE, TALLY, len(sources))


def with_source(row: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    """Marks a packed row with the index of its mixture source (the tally reads and removes it)."""
    return {**row, SOURCE: np.int64(index)}


def tally_metrics(entries: Iterable[Mapping[str, Any]], batch: Mapping[str, np.ndarray]) -> dict[str, int]:
    """`tokens_seen/<source>` for a metrics record, from a mixture batch's running tally (nothing otherwise)."""
    if TALLY not in batch:
        return {}
    return {f"tokens_seen/{s.name}": int(n) for s, n in zip(parse_mixture(entries), batch[TALLY])}
