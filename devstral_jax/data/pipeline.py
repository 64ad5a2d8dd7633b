"""The Grain input pipeline: record shards -> tokens -> next-token windows -> first-fit packed rows -> batches.

Each record is read once. A folder is read as ArrayRecord when it holds any `.array_record` shard and as
JSONL only when it holds none (the data pipeline's JSONL mirror of the same records is not read twice), and
only the files named after the split (`train-*.array_record`, `validation.jsonl`) where there are such
files (validation never scans the train shards). A record id met again (the same file reached twice, a mirror
given by hand, two corpora built from one source) is counted once: ids are content hashes, so the same id is
the same record; two different records under one id are an error.

Rows are `seq_len` long; documents never straddle rows, each keeps its own `segment_ids` (1, 2, ... ; 0 is
padding) and `positions` restarting at 0, so attention never crosses documents. Shuffling is seeded,
each process reads its own slice of the records, and the iterator's state (`get_state`/`set_state`)
goes into every checkpoint, so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import logging
import os
import re

import grain
import grain.experimental as grain_exp
import numpy as np

from devstral_jax.data import mixture
from devstral_jax.data.records import Record, RecordError
from devstral_jax.data.tokenize import RecordTokenizer, training_windows
from devstral_jax.errors import DataError

MAX_WINDOWS_PER_RECORD = 256  # a record longer than this many rows is cut (and counted in the log)
FEATURES = ("inputs", "targets", "loss_mask")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    paths: tuple[str, ...]  # files, directories or globs of .jsonl / .array_record shards
    split: str  # which records to use: "train" or "validation"
    seq_len: int
    batch_size: int  # rows per optimizer step, across all processes
    microbatches: int = 1  # gradient accumulation: the step's batch arrives as [microbatches, rows, seq]
    seed: int = 0
    num_epochs: int = 1000  # effectively unbounded for training; the trainer stops at its step count
    shuffle: bool = True
    packing_bins: int = 16
    worker_count: int = 0  # >0: multiprocess prefetch (Grain mp_prefetch)
    # Non-empty: train on these sources mixed by weight (mixture.py); validation reads their union, unmixed.
    mixture: tuple[mixture.MixtureSource, ...] = ()


def shard_files(paths: tuple[str, ...], split: str) -> list[str]:
    """Expands directories and globs to `.jsonl` / `.array_record` files, each once, one format per directory,
    the split's own files where it has some; clear errors when there are none."""
    files: list[str] = []
    seen: set[str] = set()
    for path in paths:
        if os.path.isdir(path):
            matches = sorted(glob.glob(os.path.join(path, "**", "*.array_record*"), recursive=True)) or sorted(
                glob.glob(os.path.join(path, "**", "*.jsonl"), recursive=True))
            own = [m for m in matches if re.match(rf"{split}([-.]|$)", os.path.basename(m))]
            matches = own or matches
        else:
            matches = sorted(glob.glob(path))
        if not matches:
            raise DataError(f"No training shards at {path!r} (expected .jsonl or .array_record files).")
        for match in matches:
            if (real := os.path.realpath(match)) not in seen:
                seen.add(real)
                files.append(match)
    return files


def read_records(paths: tuple[str, ...], split: str) -> list[Record]:
    """The split's records in `paths` (files, directories, globs), each id once (see the module docstring)."""
    files = shard_files(paths, split)
    records: dict[str, Record] = {}
    repeated = 0
    for path in files:
        try:
            if ".array_record" in path:
                source = grain.sources.ArrayRecordDataSource([path])
                entries = [source[i] for i in range(len(source))]
            else:
                with open(path, "rb") as f:
                    entries = [line for line in f.read().splitlines() if line.strip()]
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(f"Cannot read training shard {path}: {e}") from None
        if not entries:
            raise DataError(f"Training shard {path} is empty.")
        for record in (_decode(raw) for raw in entries):
            if record.split != split:
                continue
            if (seen := records.setdefault(record.id, record)) is not record:
                if seen != record:
                    raise DataError(f"Two different records share the id {record.id!r} (one in {path}); record "
                                    "ids must be unique: rebuild the shards, or give one corpus per id space.")
                repeated += 1
    if not records:
        raise DataError(f"No {split} records in {', '.join(files)} (each record's `split` field says which it is).")
    if repeated:
        logging.warning("%d records were given more than once (same id); each is read once.", repeated)
    return list(records.values())


def _decode(raw: bytes) -> Record:
    try:
        return Record.from_json(raw)
    except (RecordError, ValueError) as e:
        raise DataError(f"Bad training record: {e} (record starts {raw[:120]!r}).") from None


class _ToWindows(grain_exp.FlatMapTransform):
    max_fan_out = MAX_WINDOWS_PER_RECORD

    def __init__(self, tokenizer: RecordTokenizer, seq_len: int):
        self.tokenizer, self.seq_len = tokenizer, seq_len

    def flat_map(self, record: Record) -> list[dict[str, np.ndarray]]:
        windows = training_windows(*self.tokenizer(record), self.seq_len)
        if len(windows) > MAX_WINDOWS_PER_RECORD:
            logging.warning("Record %s spans %d rows; keeping the first %d.", record.id, len(windows),
                            MAX_WINDOWS_PER_RECORD)
        return windows[:MAX_WINDOWS_PER_RECORD]


def _to_step_batch(rows: dict[str, np.ndarray], microbatches: int) -> dict[str, np.ndarray]:
    """Grain's packed features -> the train step's batch, shaped [microbatches, rows, seq] (plus a mixture's
    running token tally, as of the batch's last row)."""
    batch = {name: rows[name] for name in FEATURES}
    batch["segment_ids"] = rows["inputs_segment_ids"]
    batch["positions"] = rows["inputs_positions"]
    batch = {k: v.reshape(microbatches, -1, *v.shape[1:]).astype(np.int32) for k, v in batch.items()}
    if mixture.TALLY in rows:
        batch[mixture.TALLY] = rows[mixture.TALLY][-1]
    return batch


def _packed_rows(records: list[Record], spec: DataSpec, tokenizer: RecordTokenizer, seed: int, process_index: int,
                 process_count: int) -> grain.IterDataset:
    """`records` (repeated, shuffled, this process's slice) -> token windows -> first-fit packed rows."""
    ds = grain.MapDataset.source(records)
    if spec.num_epochs > 1:
        ds = ds.repeat(spec.num_epochs)
    if spec.shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds[process_index::process_count]
    lengths = {name: spec.seq_len for name in FEATURES}
    return grain_exp.FirstFitPackIterDataset(
        grain_exp.FlatMapIterDataset(ds.to_iter_dataset(), _ToWindows(tokenizer, spec.seq_len)),
        length_struct=lengths, num_packing_bins=spec.packing_bins, seed=seed, shuffle_bins=spec.shuffle)


def make_dataset(spec: DataSpec, tokenizer: RecordTokenizer, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
    """The batches of `spec` for this process: dicts of int32 `[microbatches, rows, seq_len]` arrays
    (`inputs`, `targets`, `loss_mask`, `segment_ids`, `positions`), and for a training mixture the running
    `tokens_by_source` tally."""
    if spec.batch_size % (spec.microbatches * process_count):
        raise DataError(f"batch_size {spec.batch_size} must divide into {spec.microbatches} microbatches on "
                        f"{process_count} process(es).")
    records = read_records(spec.paths, spec.split)
    if not spec.mixture:
        rows = _packed_rows(records, spec, tokenizer, spec.seed, process_index, process_count)
    elif spec.split != "train":
        admitted = [r for r in records if any(s.admits(r) for s in spec.mixture)]
        if not admitted:
            raise DataError(f"None of the {len(records)} {spec.split} records is admitted by the mixture's sources "
                            f"{[s.name for s in spec.mixture]}: add {spec.split} records of those kinds.")
        rows = _packed_rows(admitted, spec, tokenizer, spec.seed, process_index, process_count)
    else:
        selected = mixture.source_records(records, spec.mixture)
        rows = mixture.mix_rows({
            source.name: _packed_rows(selected[source.name], spec, tokenizer, spec.seed + index, process_index,
                                      process_count).map(functools.partial(mixture.with_source, index=index))
            for index, source in enumerate(spec.mixture)}, spec.mixture)
    batches = rows.batch(spec.batch_size // process_count, drop_remainder=True).map(
        functools.partial(_to_step_batch, microbatches=spec.microbatches))
    if spec.worker_count:
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=spec.worker_count))
    return batches
