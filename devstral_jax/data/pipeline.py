"""The Grain input pipeline: record shards -> tokens -> next-token windows -> first-fit packed rows -> batches.

ArrayRecord shards are read by random access (`grain.sources.ArrayRecordDataSource` is the dataset's source):
a record is read and decoded only when the shuffled index order reaches it, so host memory does not grow
with the corpus. JSONL files are for small hand-made data: they are read whole into memory.

Each record is read once. A folder is read as ArrayRecord when it holds any `.array_record` shard and as
JSONL only when it holds none (the data pipeline's JSONL mirror of the same records is not read twice), and
only the files named after the split (`train-*.array_record`, `validation.jsonl`) where there are such
files (validation never scans the train shards). A file reached twice (the same path, or the same bytes at
another path) is read once. Among JSONL records each id counts once (ids are content hashes: the same id
is the same record; two different records under one id are an error), and an ArrayRecord record whose id
is one of the JSONL records' is skipped as it is read, so a mirror given by hand beside its shards is read
once too. Two ArrayRecord corpora are not compared record by record (that would need every id in memory):
the data pipeline removes duplicates within a build, so build one corpus from all the sources instead.

Paths may be local or any URL scheme `etils.epath` opens (e.g. `gs://bucket/shards`); ArrayRecord's own reader
opens local paths and `gs://`.

Rows are `seq_len` long; documents never straddle rows, each keeps its own `segment_ids` (1, 2, ... ; 0 is
padding) and `positions` restarting at 0, so attention never crosses documents. Shuffling is Grain's index
shuffle (seeded), each process reads its own slice of the records, and the iterator's state
(`get_state`/`set_state`) goes into every checkpoint, so a resumed run sees exactly the batches an
uninterrupted run would.
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
import xxhash
from array_record.python.array_record_module import ArrayRecordReader
from etils import epath

from devstral_jax.data import curriculum, mixture
from devstral_jax.data.records import Record, RecordError
from devstral_jax.data.tally import Tallied
from devstral_jax.data.tokenize import training_windows
from devstral_jax.errors import DataError
from devstral_jax.tokenizers import Tokenizer
from devstral_jax.storage import file_hash, files_under, is_remote

MAX_WINDOWS_PER_RECORD = 256  # a record longer than this many rows is cut (and counted in the log)
FEATURES = ("inputs", "targets", "loss_mask")
STEP_INPUTS = (*FEATURES, "segment_ids", "positions")  # what the train step reads of a batch (the rest is for the log)
# Grain reads without read-ahead; each shard's record index stays in the file instead of in memory.
READER_OPTIONS = {"index_storage_option": "offloaded", "footer_prefetch_bytes": "0"}
_SAMPLE_BYTES = 1 << 16  # of a file's head: with its size, what tells two shards apart before reading them whole


@dataclasses.dataclass(frozen=True)
class DataSpec:
    paths: tuple[str, ...]  # files, directories or globs of .jsonl / .array_record shards (local or URLs)
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
    # Set: training admits records from easy to hard (curriculum.py), inside each mixture source; validation reads all.
    curriculum: curriculum.Curriculum | None = None


# --- which files -----------------------------------------------------------------------------------------------

def shard_files(paths: tuple[str, ...], split: str) -> list[str]:
    """Expands directories and globs to `.jsonl` / `.array_record` files, each once (by path, then by content),
    one format per directory, the split's own files where it has some; clear errors when there are none."""
    files: list[str] = []
    seen: set[str] = set()
    by_content: dict[tuple[int, str], str] = {}
    for path in paths:
        matches = _split_files(path, split) if epath.Path(path).is_dir() else _glob(path)
        if not matches:
            raise DataError(f"No training shards at {path!r} (expected .jsonl or .array_record files).")
        for match in matches:
            if (identity := match if is_remote(match) else os.path.realpath(match)) in seen:
                continue
            seen.add(identity)
            key = _content_key(match)
            if (first := by_content.get(key)) is not None and file_hash(first) == file_hash(match):
                logging.warning("%s holds the same bytes as %s; it is read once.", match, first)
                continue
            by_content.setdefault(key, match)
            files.append(match)
    return files


def _split_files(directory: str, split: str) -> list[str]:
    """A directory's ArrayRecord shards (else its JSONL files), at any depth, the split's own where it has some."""
    def under(suffix: str) -> list[str]:
        if not is_remote(directory):  # glob skips hidden files and folders
            return sorted(glob.glob(os.path.join(directory, "**", f"*{suffix}*"), recursive=True))
        return [os.path.join(directory, name) for name in files_under(directory) if suffix in os.path.basename(name)]

    matches = under(".array_record") or [m for m in under(".jsonl") if m.endswith(".jsonl")]
    own = [m for m in matches if re.match(rf"{split}([-.]|$)", os.path.basename(m))]
    return own or matches


def _glob(pattern: str) -> list[str]:
    if not is_remote(pattern):
        return sorted(glob.glob(pattern))
    fixed = re.split(r"[*?\[]", pattern)[0]
    if fixed == pattern:
        return [pattern] if epath.Path(pattern).exists() else []
    folder = fixed.rpartition("/")[0]
    return sorted(os.fspath(match) for match in epath.Path(folder).glob(pattern[len(folder) + 1:]))


def _content_key(path: str) -> tuple[int, str]:
    """(size, hash of the first 64 KiB): equal for copies of one file; two different shards almost never agree."""
    try:
        with epath.Path(path).open("rb") as f:
            head = f.read(_SAMPLE_BYTES)
        return epath.Path(path).stat().length, xxhash.xxh3_128_hexdigest(head)
    except OSError as e:
        raise DataError(f"Cannot read training shard {path}: {e}") from None


# --- which records ---------------------------------------------------------------------------------------------

def record_source(paths: tuple[str, ...], split: str) -> grain.MapDataset:
    """The split's records in `paths` as a Grain MapDataset of `Record` (see the module docstring): JSONL records
    from memory, then ArrayRecord records read and decoded when asked for (an index may hold None: a record met
    again, which iteration skips)."""
    files = shard_files(paths, split)
    array_records = [f for f in files if ".array_record" in f]
    jsonl = _jsonl_records([f for f in files if ".array_record" not in f], split)
    parts = [grain.MapDataset.source(list(jsonl.values()))] if jsonl else []
    if array_records:
        instructions = [f"{path}[0:{_checked_length(path, split)}]" for path in array_records]
        source = grain.sources.ArrayRecordDataSource(instructions, reader_options=READER_OPTIONS)
        parts.append(grain.MapDataset.source(source).map(_ShardRecord(split, jsonl)))
    if not parts:
        raise DataError(f"No {split} records in {', '.join(files)} (each record's `split` field says which it is).")
    return parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)


def read_records(paths: tuple[str, ...], split: str) -> list[Record]:
    """Every record of the split, in memory: for tools and tests on small corpora (training streams them)."""
    records = record_source(paths, split)
    return [record for record in (records[i] for i in range(len(records))) if record is not None]


def _jsonl_records(files: list[str], split: str) -> dict[str, Record]:
    """The split's records of JSONL files by id, each id once."""
    records: dict[str, Record] = {}
    repeated = 0
    for path in files:
        try:
            entries = [line for line in epath.Path(path).read_bytes().splitlines() if line.strip()]
        except OSError as e:
            raise DataError(f"Cannot read training shard {path}: {e}") from None
        if not entries:
            raise DataError(f"Training shard {path} is empty.")
        for record in (_decode(raw) for raw in entries):
            if record.split != split:
                continue
            if (seen := records.setdefault(record.id, record)) is not record:
                _check_same(seen, record, path)
                repeated += 1
    if files and not records:
        raise DataError(f"No {split} records in {', '.join(files)} (each record's `split` field says which it is).")
    if repeated:
        logging.warning("%d records were given more than once (same id); each is read once.", repeated)
    return records


def _checked_length(path: str, split: str) -> int:
    """The shard's record count, after checking that it opens, is not empty and holds `split` records (its
    first one: the data pipeline writes one split per shard; the rest are checked as they are read)."""
    try:
        reader = ArrayRecordReader(path)
        count = reader.num_records()
        first = reader.read([0])[0] if count else None
        reader.close()
    except (OSError, RuntimeError, ValueError) as e:
        raise DataError(f"Cannot read training shard {path}: {e}") from None
    if not count:
        raise DataError(f"Training shard {path} is empty.")
    if (record := _decode(first)).split != split:
        raise DataError(f"Training shard {path} holds {record.split} records, not {split} ones: pass each split's "
                        f"own shards ({split}-*.array_record).")
    return count


@dataclasses.dataclass(frozen=True)
class _ShardRecord:
    """Decodes one ArrayRecord entry; None for a record also given as JSONL."""
    split: str
    jsonl: dict[str, Record]

    def __call__(self, raw: bytes) -> Record | None:
        record = _decode(raw)
        if record.split != self.split:
            raise DataError(f"Record {record.id} is a {record.split} record in a shard read for {self.split}: an "
                            f"ArrayRecord shard holds one split (pass the split's own shards, {self.split}-*).")
        if (seen := self.jsonl.get(record.id)) is not None:
            _check_same(seen, record, "an ArrayRecord shard")
            return None
        return record


def _check_same(seen: Record, record: Record, where: str) -> None:
    if seen != record:
        raise DataError(f"Two different records share the id {record.id!r} (one in {where}); record ids must be "
                        "unique: rebuild the shards, or give one corpus per id space.")


def _decode(raw: bytes) -> Record:
    try:
        return Record.from_json(raw)
    except (RecordError, ValueError) as e:
        raise DataError(f"Bad training record: {e} (record starts {raw[:120]!r}).") from None


# --- records -> batches ----------------------------------------------------------------------------------------

class _ToWindows(grain_exp.FlatMapTransform):
    max_fan_out = MAX_WINDOWS_PER_RECORD

    def __init__(self, tokenizer: Tokenizer, seq_len: int):
        self.tokenizer, self.seq_len = tokenizer, seq_len

    def flat_map(self, record: Record) -> list[dict[str, np.ndarray]]:
        windows = training_windows(*self.tokenizer.encode_record(record), self.seq_len)
        if len(windows) > MAX_WINDOWS_PER_RECORD:
            logging.warning("Record %s spans %d rows; keeping the first %d.", record.id, len(windows),
                            MAX_WINDOWS_PER_RECORD)
        return windows[:MAX_WINDOWS_PER_RECORD]


def _to_step_batch(rows: dict[str, np.ndarray], microbatches: int) -> dict[str, np.ndarray]:
    """Grain's packed features -> the train step's batch, shaped [microbatches, rows, seq] (plus the running
    token tallies of a mixture and a curriculum, as of the batch's last row, and the highest admitted difficulty)."""
    batch = {name: rows[name] for name in FEATURES}
    batch["segment_ids"] = rows["inputs_segment_ids"]
    batch["positions"] = rows["inputs_positions"]
    batch = {k: v.reshape(microbatches, -1, *v.shape[1:]).astype(np.int32) for k, v in batch.items()}
    for tally in (mixture.TALLY, curriculum.TALLY):
        if tally in rows:
            batch[tally] = rows[tally][-1]
    if curriculum.ADMITTED in rows:
        batch[curriculum.ADMITTED] = rows[curriculum.ADMITTED].max()
    return batch


def step_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of a batch that the train step reads."""
    return {name: batch[name] for name in STEP_INPUTS}


def _packed_rows(records: grain.MapDataset, spec: DataSpec, tokenizer: Tokenizer, seed: int, process_index: int,
                 process_count: int) -> grain.IterDataset:
    """`records` (repeated, shuffled, this process's slice) -> token windows -> first-fit packed rows."""
    ds = records
    if spec.num_epochs > 1:
        ds = ds.repeat(spec.num_epochs)
    if spec.shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds[process_index::process_count]
    lengths = {name: spec.seq_len for name in FEATURES}
    return grain_exp.FirstFitPackIterDataset(
        grain_exp.FlatMapIterDataset(ds.to_iter_dataset(), _ToWindows(tokenizer, spec.seq_len)),
        length_struct=lengths, num_packing_bins=spec.packing_bins, seed=seed, shuffle_bins=spec.shuffle)


class _Indexed:
    """Record `i` of a selection: the selection holds indices into the record source, never the records."""

    def __init__(self, records: grain.MapDataset):
        self.records = records

    def __call__(self, index: int) -> Record:
        return self.records[index]


def _selected(records: grain.MapDataset, indices: list[int]) -> grain.MapDataset:
    """The records at `indices`, read from the source when asked for (memory: one int per selected record)."""
    return grain.MapDataset.source(indices).map(_Indexed(records))


def _training_rows(records: grain.MapDataset, indices: list[int] | None, spec: DataSpec, tokenizer: Tokenizer,
                   seed: int, share: float, process_index: int, process_count: int) -> grain.IterDataset:
    """The packed rows of the records at `indices` (a mixture source's; None: all), paced by the curriculum if
    any; `share` is this stream's share of the training rows."""
    if spec.curriculum is None:
        selection = records if indices is None else _selected(records, indices)
        return _packed_rows(selection, spec, tokenizer, seed, process_index, process_count)
    everything = range(len(records)) if indices is None else indices
    buckets, tokens = curriculum.bucket_indices(records, everything, spec.curriculum)
    bucket_rows = [_packed_rows(_selected(records, chosen), spec, tokenizer, seed + 7919 * (k + 1), process_index,
                                process_count) if chosen else None for k, chosen in enumerate(buckets)]
    return curriculum.CurriculumDataset(bucket_rows, tokens, spec.curriculum, spec.batch_size // process_count, share,
                                        seed)


def make_dataset(spec: DataSpec, tokenizer: Tokenizer, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
    """The batches of `spec` for this process: dicts of int32 `[microbatches, rows, seq_len]` arrays
    (`inputs`, `targets`, `loss_mask`, `segment_ids`, `positions`); for a training mixture the running
    `tokens_by_source` tally, for a training curriculum `tokens_by_bucket` and `admitted_difficulty`."""
    if spec.batch_size % (spec.microbatches * process_count):
        raise DataError(f"batch_size {spec.batch_size} must divide into {spec.microbatches} microbatches on "
                        f"{process_count} process(es).")
    records = record_source(spec.paths, spec.split)
    if spec.split != "train":
        if spec.mixture:
            records = _selected(records, mixture.admitted_indices(records, spec.mixture))
            if not len(records):
                raise DataError(f"None of the {spec.split} records is admitted by the mixture's sources "
                                f"{[s.name for s in spec.mixture]}: add {spec.split} records of those kinds.")
        rows = _packed_rows(records, spec, tokenizer, spec.seed, process_index, process_count)
    elif not spec.mixture:
        rows = _training_rows(records, None, spec, tokenizer, spec.seed, 1.0, process_index, process_count)
    else:
        selected = mixture.source_indices(records, spec.mixture)
        total_weight = sum(source.weight for source in spec.mixture)
        rows = mixture.mix_rows({
            source.name: _training_rows(records, selected[source.name], spec, tokenizer, spec.seed + index,
                                        source.weight / total_weight, process_index, process_count).map(
                                            functools.partial(mixture.with_source, index=index))
            for index, source in enumerate(spec.mixture)}, spec.mixture)
    if spec.curriculum is not None and spec.split == "train":  # after the mixer: the buckets' totals over sources
        rows = Tallied(rows, curriculum.BUCKET, curriculum.TALLY, spec.curriculum.num_buckets)
    batches = rows.batch(spec.batch_size // process_count, drop_remainder=True).map(
        functools.partial(_to_step_batch, microbatches=spec.microbatches))
    if spec.worker_count:
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=spec.worker_count))
    return batches
