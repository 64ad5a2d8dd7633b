"""Sampled completions kept on disk batch by batch, so an interrupted evaluation resumes where it stopped.

Sampling a benchmark from a 24B model takes GPU hours; executing the samples takes minutes. Each finished
generation batch is appended (and flushed to disk) to `<output_dir>/samples/<benchmark>.jsonl`, after a
first line holding the fingerprint of everything that decides the samples: the model (its spec and the
files it was loaded from), the sampling settings, the seed and the problems. A rerun with the same
fingerprint reuses the stored batches and samples only the rest, with the same batch composition and
seeds, so its samples equal an uninterrupted run's; a rerun with another fingerprint is refused rather
than mixing samples of two models or settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from devstral_jax.errors import StaleSamplesError


def model_marker(spec: str) -> list:
    """What identifies `--model=spec` beyond its name: (path, size, mtime) of the files it is loaded from
    (for a training workdir, its checkpoints; a GGUF is one file), so retraining or replacing weights changes the
    fingerprint."""
    path = Path(spec)
    if path.is_file():
        return [[path.name, path.stat().st_size, path.stat().st_mtime_ns]]
    if not path.is_dir():
        return []
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stat = os.stat(os.path.join(dirpath, name))
            entries.append([os.path.relpath(os.path.join(dirpath, name), root), stat.st_size, stat.st_mtime_ns])
    return entries


def problems_digest(problems: Iterable) -> str:
    """sha256 over each problem's name, prompt and stop tokens (what sampling sees)."""
    digest = hashlib.sha256()
    for problem in problems:
        digest.update(json.dumps([problem.name, problem.prompt, list(problem.stop_tokens)]).encode())
    return digest.hexdigest()


class SampleStore:
    """Finished batches of one benchmark: `batches[start]` = the completions of rows `start, start + 1, ...`."""

    def __init__(self, path: Path, fingerprint: dict[str, Any]):
        fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from disk (tuples become lists)
        self.path = path
        self.batches: dict[int, list[str]] = {}
        original = text = path.read_text(encoding="utf-8") if path.exists() else ""
        if not text.endswith("\n"):  # a line cut short by a crash: dropped (its batch is sampled again)
            text = text[:text.rfind("\n") + 1]
        if not text:
            text = json.dumps({"fingerprint": fingerprint}) + "\n"
        lines = text.splitlines()
        stored = json.loads(lines[0])["fingerprint"]
        if stored != fingerprint:
            keys = fingerprint.keys() | stored.keys()
            differing = sorted(key for key in keys if stored.get(key) != fingerprint.get(key))
            raise StaleSamplesError(
                f"{path} holds samples made with other settings (they differ in {', '.join(differing)}); "
                "pass another --output_dir, or delete that file to sample again.")
        for line in lines[1:]:
            batch = json.loads(line)
            self.batches[batch["start"]] = batch["completions"]
        if text != original:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")

    def add(self, start: int, completions: list[str]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"start": start, "completions": completions}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.batches[start] = completions
