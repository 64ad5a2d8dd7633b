"""Curriculum learning: training data admitted from easy to hard as training goes on.

    config.data.curriculum = dict(pacing="root", start=0.2, steps=0, buckets=(0.0, 0.25, 0.5, 0.75, 1.0))

Records fall into difficulty buckets by their score (records.Difficulty, set by the data pipeline): bucket k holds
the scores in [buckets[k], buckets[k+1]) (the last one includes 1). A pacing function maps training progress
t = step / steps (`steps` 0: the run's train.steps; t stops at 1) to the admitted difficulty d(t), which starts
at `start` and never decreases:

    linear      d = start + (1 - start) t
    root        d = sqrt(start^2 + (1 - start^2) t)          fast early, slow late (Platanios et al., 2019)
    step        d = start + (1 - start) floor(jumps t) / jumps   `jumps` equal jumps
    baby_steps  one bucket more at a time, cumulatively (Bengio et al., 2009; Spitkovsky et al., 2010): the
                buckets above the one holding `start` open at equal intervals, the last at t = 1 - 1/n (so
                the final phase trains on everything); d = the upper edge of the last bucket open

A bucket is admitted once d passes its lower edge (the bucket holding `start` from the first step) and stays
admitted. Each row of training data comes from one admitted bucket, drawn with probability proportional to the
bucket's tokens (every admitted token is equally likely: the admitted data is sampled uniformly) by a generator
keyed by (seed, row index). A bucket's rows are read in their own shuffled order whenever it is drawn; nothing
is skipped or dropped, a bucket not yet admitted simply has not been read yet. If the corpus has no record in
the buckets `start` admits, the easiest bucket that has records is admitted from the start as well.

Resuming is exact: the iterator's state (the row index and every bucket's iterator state) is Grain state,
saved with each checkpoint. With a mixture, the curriculum runs inside each source, so the sources keep their
weights exactly; a source counts its progress in its own rows divided by its share of the stream (Grain's mixer
interleaves the sources exactly in proportion, so this is the step to within a row).

Each row carries its bucket (counted into `tokens_by_bucket` by tally.py) and the admitted difficulty; the
trainer logs `admitted_difficulty` and `tokens_seen/difficulty_<low>-<high>` and plots them (curriculum.png).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from devstral_jax.errors import ConfigError, DataError

PACINGS = ("linear", "root", "step", "baby_steps")
OFF = "none"
TALLY = "tokens_by_bucket"  # int64 [buckets]: each bucket's tokens so far, in this process's rows
ADMITTED = "admitted_difficulty"  # the admitted difficulty when the row was drawn (a batch keeps its highest)
BUCKET = "curriculum_bucket"  # a row's bucket index, until the tally reads it
TOKENS_SEEN = "tokens_seen/difficulty_"  # + "<low>-<high>": a bucket's tokens so far, in the metrics


@dataclasses.dataclass(frozen=True)
class Curriculum:
    pacing: str  # one of PACINGS
    start: float  # the admitted difficulty at step 0, in (0, 1]
    steps: int  # the step from which everything is admitted
    buckets: tuple[float, ...]  # the buckets' edges: 0 = b0 < b1 < ... < bn = 1
    jumps: int = 4  # `step` pacing: how many equal jumps from start to 1

    @property
    def num_buckets(self) -> int:
        return len(self.buckets) - 1

    def admitted_difficulty(self, step: int) -> float:
        """d(step): the pacing function (see the module docstring); never decreasing, 1 from `steps` on."""
        if step >= self.steps:
            return 1.0  # exactly: the formulas below can round to just under it
        t = step / self.steps
        if self.pacing == "linear":
            return self.start + (1 - self.start) * t
        if self.pacing == "root":
            return math.sqrt(self.start ** 2 + (1 - self.start ** 2) * t)
        if self.pacing == "step":
            return self.start + (1 - self.start) * math.floor(self.jumps * t) / self.jumps
        first = self.bucket_of(self.start)
        return self.buckets[min(self.num_buckets, first + 1 + math.floor(t * (self.num_buckets - first)))]

    def admitted_buckets(self, difficulty: float) -> int:
        """How many buckets, from the easiest, are admitted at this difficulty: those whose lower edge it passed."""
        return sum(edge < difficulty for edge in self.buckets[:-1])

    def bucket_of(self, score: float) -> int:
        """The bucket holding `score`."""
        return min(self.num_buckets - 1, sum(edge <= score for edge in self.buckets[1:]))

    def bucket_names(self) -> list[str]:
        return [f"{low:.2f}-{high:.2f}" for low, high in zip(self.buckets, self.buckets[1:])]

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "buckets": list(self.buckets)}


def parse_curriculum(settings: Mapping[str, Any], train_steps: int) -> Curriculum | None:
    """`config.data.curriculum` -> a Curriculum (None when `pacing` is "none"); a value that cannot work is a
    ConfigError."""
    pacing = settings["pacing"]
    if pacing == OFF:
        return None
    if pacing not in PACINGS:
        raise ConfigError(f"config.data.curriculum.pacing={pacing!r}: must be one of {(OFF, *PACINGS)}.")
    start, steps, jumps, buckets = settings["start"], settings["steps"], settings["jumps"], tuple(settings["buckets"])
    if not 0.0 < start <= 1.0:
        raise ConfigError(f"config.data.curriculum.start={start!r}: must be in (0, 1], the difficulty admitted at "
                          "the first step.")
    if not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"config.data.curriculum.steps={steps!r}: must be a whole number >= 0 (0: train.steps).")
    if not isinstance(jumps, int) or jumps < 1:
        raise ConfigError(f"config.data.curriculum.jumps={jumps!r}: must be a whole number >= 1.")
    if len(buckets) < 3 or buckets[0] != 0.0 or buckets[-1] != 1.0 or any(
            not low < high for low, high in zip(buckets, buckets[1:])):
        raise ConfigError(f"config.data.curriculum.buckets={buckets!r}: must be increasing edges from 0 to 1 that "
                          "make two buckets or more, e.g. (0.0, 0.25, 0.5, 0.75, 1.0).")
    return Curriculum(pacing, float(start), steps or train_steps, tuple(float(b) for b in buckets), jumps)


def bucket_indices(records: grain.MapDataset, indices: Sequence[int],
                   curriculum: Curriculum) -> tuple[list[list[int]], list[int]]:
    """The indices (of `indices`) in each bucket, and each bucket's tokens; a record without a difficulty is a
    DataError."""
    buckets: list[list[int]] = [[] for _ in range(curriculum.num_buckets)]
    tokens = [0] * curriculum.num_buckets
    for index in indices:
        if (record := records[index]) is None:
            continue
        if record.difficulty is None:
            raise DataError(f"The curriculum needs each record's difficulty, and record {record.id!r} has none: "
                            "score the corpus first (python launch/score_data.py --input=FILE.jsonl, or rebuild it "
                            "with launch/prepare_data.py).")
        bucket = curriculum.bucket_of(record.difficulty.score)
        buckets[bucket].append(index)
        tokens[bucket] += max(1, record.difficulty.tokens)
    return buckets, tokens


class CurriculumDataset(grain.IterDataset):
    """Rows drawn from the admitted difficulty buckets (see the module docstring). `buckets[k]` is bucket k's
    packed rows (None: it has no records), `tokens[k]` its tokens; `rows_per_step` this process's rows per step,
    `share` this stream's share of them (a mixture source's weight over the total; 1 without a mixture)."""

    def __init__(self, buckets: list[grain.IterDataset | None], tokens: list[int], curriculum: Curriculum,
                 rows_per_step: int, share: float, seed: int):
        super().__init__([b for b in buckets if b is not None])
        if not any(tokens):
            raise DataError("The curriculum has no records to draw from.")
        self.buckets, self.tokens, self.curriculum = buckets, tokens, curriculum
        self.rows_per_step, self.share, self.seed = rows_per_step, share, seed
        easiest = next(k for k, n in enumerate(tokens) if n)
        if curriculum.admitted_buckets(curriculum.start) <= easiest:
            logging.warning("No record is easier than difficulty %.2f; the curriculum starts with bucket %s, the "
                            "easiest that has records.", curriculum.start, curriculum.bucket_names()[easiest])

    def __iter__(self) -> grain.DatasetIterator:
        return _CurriculumIterator(self)


class _CurriculumIterator(grain.DatasetIterator):
    def __init__(self, dataset: CurriculumDataset):
        self._buckets = [None if b is None else b.__iter__() for b in dataset.buckets]
        super().__init__([b for b in self._buckets if b is not None])
        self._dataset = dataset
        self._easiest = next(k for k, n in enumerate(dataset.tokens) if n)
        self._row = 0

    def __next__(self) -> dict[str, np.ndarray]:
        d = self._dataset
        step = math.floor(self._row / (d.rows_per_step * d.share))
        difficulty = d.curriculum.admitted_difficulty(step)
        admitted = max(d.curriculum.admitted_buckets(difficulty), self._easiest + 1)
        weights = np.cumsum(d.tokens[:admitted], dtype=np.float64)
        draw = np.random.default_rng([d.seed, self._row]).random() * weights[-1]
        bucket = int(np.searchsorted(weights, draw, side="right"))
        row = next(self._buckets[bucket])
        self._row += 1
        return {**row, BUCKET: np.int64(bucket), ADMITTED: np.float64(difficulty)}

    def get_state(self) -> dict[str, Any]:
        return {"row": self._row, "buckets": [None if b is None else b.get_state() for b in self._buckets]}

    def set_state(self, state: dict[str, Any]) -> None:
        self._row = state["row"]
        for bucket, bucket_state in zip(self._buckets, state["buckets"], strict=True):
            if bucket is not None:
                bucket.set_state(bucket_state)


def tally_metrics(settings: Mapping[str, Any], batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """`admitted_difficulty` and `tokens_seen/difficulty_<low>-<high>` for a metrics record, from a curriculum
    batch (nothing otherwise)."""
    if TALLY not in batch:
        return {}
    names = parse_curriculum(settings, 1).bucket_names()
    return {ADMITTED: float(batch[ADMITTED]),
            **{f"{TOKENS_SEEN}{name}": int(n) for name, n in zip(names, batch[TALLY], strict=True)}}
