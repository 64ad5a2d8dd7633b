"""Output: the train/validation split by package, ArrayRecord shards for Grain and a JSONL mirror.

Each ArrayRecord entry and each JSONL line is one record's JSON (devstral_jax.data.records), so the
mirror reads directly as the `messages` / `text` columns that TRL, Axolotl and OpenAI tools expect.
Grain reads the shards with `grain.sources.ArrayRecordDataSource(paths)`. The mirror lives in its own
folder, `jsonl/`, so a reader given the output folder finds one copy of each record, not two.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

from array_record.python.array_record_module import ArrayRecordWriter

from devstral_jax.data.records import SPLITS, Record


def validation_packages(files_per_package: Mapping[str, int], fraction: float, seed: int) -> set[str]:
    """The packages held out for validation, whole, so that no package is in both splits.

    Packages are taken in a stable pseudo-random order (a hash of seed and name) until they hold
    `fraction` of the files; with two or more packages and fraction > 0, validation is never empty
    and never everything.
    """
    def score(package: str) -> str:
        return hashlib.sha256(f"{seed}:{package}".encode()).hexdigest()

    total = sum(files_per_package.values())
    chosen: set[str] = set()
    held = 0
    for package in sorted(files_per_package, key=score):
        if fraction <= 0 or held >= fraction * total or len(chosen) == len(files_per_package) - 1:
            break
        chosen.add(package)
        held += files_per_package[package]
    return chosen


MIRROR_DIR = "jsonl"


class SplitWriter:
    """Writes one split as `{split}-NNNNN.array_record` shards of `records_per_shard` plus `jsonl/{split}.jsonl`."""

    def __init__(self, directory: Path, split: str, records_per_shard: int):
        assert split in SPLITS
        self.directory = directory
        self.split = split
        self.records_per_shard = records_per_shard
        self.shards: list[Path] = []
        self._writer: ArrayRecordWriter | None = None
        self._in_shard = 0
        (directory / MIRROR_DIR).mkdir(exist_ok=True)
        self._jsonl = open(directory / MIRROR_DIR / f"{split}.jsonl", "w", encoding="utf-8")

    def write(self, record: Record) -> None:
        line = record.to_json()
        if self._writer is None or self._in_shard == self.records_per_shard:
            self._roll()
        self._writer.write(line.encode("utf-8"))
        self._in_shard += 1
        self._jsonl.write(line + "\n")

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
        path = self.directory / f"{self.split}-{len(self.shards):05d}.array_record"
        self._writer = ArrayRecordWriter(str(path), "group_size:1")
        self.shards.append(path)
        self._in_shard = 0

    def close(self) -> list[Path]:
        """Closes the files; returns the shard paths and the JSONL mirror's, in order."""
        if self._writer is not None:
            self._writer.close()
        self._jsonl.close()
        return self.shards + [Path(self._jsonl.name)]
