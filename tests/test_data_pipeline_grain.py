"""The training input pipeline: record tokenization with loss masks, packing, resume, and bad shards."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from devstral_jax.data.pipeline import DataError, DataSpec, make_dataset, read_records, shard_files
from devstral_jax.data.records import Record
from devstral_jax.data.tokenize import training_windows
from devstral_jax.tokenizers import TekkenTokenizer

SOURCE = {"kind": "local", "package": "demo", "version": "0", "path": "lib/demo.ex", "licence": "MIT", "url": ""}


@pytest.fixture(scope="module")
def tokenizer() -> TekkenTokenizer:
    return TekkenTokenizer()


def _record(kind: str, **payload) -> Record:
    """A record whose id is a hash of its content, as the data pipeline makes them (the reader counts an id once)."""
    content_id = hashlib.sha256(json.dumps([kind, payload], sort_keys=True).encode()).hexdigest()[:24]
    return Record.from_dict({"id": content_id, "kind": kind, "task": "t", "source": SOURCE, **payload})


def test_chat_loss_mask_covers_exactly_the_assistant_turns(tokenizer):
    record = _record("chat", messages=[
        {"role": "system", "content": "You write idiomatic Elixir."},
        {"role": "user", "content": "Reverse a list."},
        {"role": "assistant", "content": "Enum.reverse(list)"},
        {"role": "user", "content": "Now sum it."},
        {"role": "assistant", "content": "Enum.sum(list)"}])
    tokens, mask = tokenizer.encode_record(record)
    trained = tokens[mask == 1].tolist()
    expected = [*tokenizer.encode("Enum.reverse(list)"), tokenizer.eos_id,
                *tokenizer.encode("Enum.sum(list)"), tokenizer.eos_id]
    assert trained == expected
    assert tokens[0] == tokenizer.bos_id and mask[0] == 0


def test_text_and_fim_masks(tokenizer):
    tokens, mask = tokenizer.encode_record(_record("text", text="defmodule A do\nend\n"))
    assert tokens[0] == tokenizer.bos_id and tokens[-1] == tokenizer.eos_id
    assert mask.tolist() == [0] + [1] * (len(tokens) - 1)
    tokens, mask = tokenizer.encode_record(_record("fim", prefix="def add(a, b) do\n  ", suffix="\nend\n",
                                                   middle="a + b"))
    assert tokens[mask == 1].tolist() == [*tokenizer.encode("a + b"), tokenizer.eos_id]
    assert mask[: np.argmax(mask)].sum() == 0


def test_long_sequences_become_windows_without_losing_or_repeating_targets():
    tokens = np.arange(23, dtype=np.int32)
    windows = training_windows(tokens, np.ones(23, np.int32), seq_len=8)
    targets = np.concatenate([w["targets"] for w in windows])
    assert targets.tolist() == list(range(1, 23))
    assert all(len(w["inputs"]) <= 8 for w in windows)
    np.testing.assert_array_equal(np.concatenate([w["inputs"] for w in windows]), np.arange(22))


def _write_jsonl(path, records):
    path.write_text("".join(r.to_json() + "\n" for r in records))
    return str(path)


def _write_array_record(path, records):
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
        writer.write(record.to_json().encode())
    writer.close()
    return str(path)


def _write(directory, records, fmt):
    """The records as a JSONL file (read into memory) or an ArrayRecord shard (streamed)."""
    if fmt == "jsonl":
        return _write_jsonl(directory / "train.jsonl", records)
    return _write_array_record(directory / "train-00000.array_record", records)


FORMATS = ("jsonl", "array_record")


@pytest.mark.parametrize("fmt", FORMATS)
def test_packed_batches_have_segments_positions_and_resume_exactly(tmp_path, tokenizer, fmt):
    records = [_record("text", text=f"defmodule M{i} do\n  def f, do: {i}\nend\n" * (1 + i % 5)) for i in range(40)]
    spec = DataSpec(paths=(_write(tmp_path, records, fmt),), split="train", seq_len=64, batch_size=4,
                    microbatches=2, seed=3)
    iterator = iter(make_dataset(spec, tokenizer))
    batch = next(iterator)
    assert {k: v.shape for k, v in batch.items()} == {k: (2, 2, 64) for k in
                                                      ("inputs", "targets", "loss_mask", "segment_ids", "positions")}
    row_segments, row_positions = batch["segment_ids"][0, 0], batch["positions"][0, 0]
    assert row_segments.max() >= 2  # several documents share a row
    for segment in range(1, row_segments.max() + 1):
        np.testing.assert_array_equal(row_positions[row_segments == segment], np.arange((row_segments == segment).sum()))
    assert np.all(batch["loss_mask"][batch["segment_ids"] == 0] == 0)  # padding never trains

    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]
    resumed = iter(make_dataset(spec, tokenizer))
    resumed.set_state(json.loads(json.dumps(state)))  # the state survives a JSON round trip (checkpoints)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_process_reads_its_own_records(tmp_path, tokenizer, fmt):
    records = [_record("text", text=f"x = {i}\n") for i in range(20)]
    spec = DataSpec(paths=(_write(tmp_path, records, fmt),), split="train", seq_len=32, batch_size=2,
                    num_epochs=1, shuffle=False)
    seen = []
    for process in range(2):
        for batch in make_dataset(spec, tokenizer, process_index=process, process_count=2):
            seen.append({tuple(r[s == k]) for r, s in zip(batch["inputs"][0], batch["segment_ids"][0])
                         for k in range(1, s.max() + 1)})
    assert seen  # both processes produced batches, and no document appears in both halves
    first, second = set().union(*seen[: len(seen) // 2]), set().union(*seen[len(seen) // 2:])
    assert not first & second


def test_bad_shards_are_clear_errors(tmp_path, tokenizer):
    spec = lambda path: DataSpec(paths=(str(path),), split="train", seq_len=32, batch_size=2)  # noqa: E731
    with pytest.raises(DataError, match="No training shards"):
        make_dataset(spec(tmp_path / "missing.jsonl"), tokenizer)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty"):
        make_dataset(spec(tmp_path / "empty.jsonl"), tokenizer)
    (tmp_path / "bad.jsonl").write_text('{"id": "x", "kind": "poem"}\n')
    with pytest.raises(DataError, match="kind must be one of"):
        next(iter(make_dataset(spec(tmp_path / "bad.jsonl"), tokenizer)))
    (tmp_path / "broken.array_record").write_bytes(b"not an array record")
    with pytest.raises(DataError, match="Cannot read training shard"):
        make_dataset(spec(tmp_path / "broken.array_record"), tokenizer)


@pytest.mark.parametrize("fmt", FORMATS)
def test_multiprocess_prefetch_is_deterministic_and_resumable(tmp_path, tokenizer, fmt):
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags, as under launch/train.py
    records = [_record("text", text=f"defmodule P{i} do\n  def v, do: {i}\nend\n") for i in range(30)]
    spec = DataSpec(paths=(_write(tmp_path, records, fmt),), split="train", seq_len=32, batch_size=2,
                    seed=1, worker_count=2)
    first = iter(make_dataset(spec, tokenizer))
    batches = [next(first) for _ in range(2)]
    state = first.get_state()
    batches += [next(first) for _ in range(3)]
    again = iter(make_dataset(spec, tokenizer))
    for want in batches:  # the worker processes interleave deterministically
        got = next(again)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    resumed = iter(make_dataset(spec, tokenizer))
    resumed.set_state(state)
    for want in batches[2:]:  # and their position is part of the checkpointable state
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_a_folder_with_shards_and_their_jsonl_mirror_is_read_once(tmp_path):
    """The data pipeline's old layout (shards and mirror side by side) and a path given twice count each record
    once; a folder is read as ArrayRecord when it has shards, and each split reads only its own files."""
    train = [_record("text", text=f"defmodule T{i} do\nend\n") for i in range(6)]
    validation = [dataclasses.replace(_record("text", text=f"defmodule V{i} do\nend\n"), split="validation")
                  for i in range(2)]
    _write_array_record(tmp_path / "train-00000.array_record", train)
    _write_array_record(tmp_path / "validation-00000.array_record", validation)
    _write_jsonl(tmp_path / "train.jsonl", train)  # the mirror, beside the shards
    _write_jsonl(tmp_path / "validation.jsonl", validation)

    assert shard_files((str(tmp_path),), "train") == [str(tmp_path / "train-00000.array_record")]
    assert shard_files((str(tmp_path),), "validation") == [str(tmp_path / "validation-00000.array_record")]
    assert [r.id for r in read_records((str(tmp_path),), "train")] == [r.id for r in train]
    assert read_records((str(tmp_path),), "validation") == validation
    twice = (str(tmp_path), str(tmp_path / "train-00000.array_record"), str(tmp_path / "train.jsonl"))
    assert [r.id for r in read_records(twice, "train")] == [r.id for r in train]

    mirror_only = tmp_path / "mirror"
    mirror_only.mkdir()
    _write_jsonl(mirror_only / "train.jsonl", train)
    assert len(read_records((str(mirror_only),), "train")) == len(train)  # no shards: the JSONL is read


def test_two_different_records_under_one_id_are_an_error(tmp_path):
    first = _record("text", text="x = 1\n")
    clash = dataclasses.replace(_record("text", text="x = 2\n"), id=first.id)
    paths = (_write_jsonl(tmp_path / "a.jsonl", [first]), _write_jsonl(tmp_path / "b.jsonl", [clash]))
    with pytest.raises(DataError, match="Two different records share the id"):
        read_records(paths, "train")
    with pytest.raises(DataError, match="No validation records"):
        read_records(paths[:1], "validation")


def test_array_record_shards_are_read_when_the_iterator_reaches_each_record(tmp_path, tokenizer):
    """Streaming: making the dataset reads no record beyond each shard's first; a record is read and decoded
    when the (unshuffled) iteration reaches it, so a broken one far into the shard does not stop the batches
    before it, and its error names it when it is reached. (Reading all records at load fails at once.)"""
    records = [_record("text", text=f"defmodule S{i} do\n  def v, do: {i}\nend\n") for i in range(60)]
    path = tmp_path / "train-00000.array_record"
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
        writer.write(record.to_json().encode())
    writer.write(b'{"id": "broken", "kind": "poem"}')
    writer.close()
    spec = DataSpec(paths=(str(path),), split="train", seq_len=64, batch_size=2, num_epochs=1, shuffle=False)
    iterator = iter(make_dataset(spec, tokenizer))
    first = [next(iterator) for _ in range(3)]
    assert all(batch["inputs"].shape == (1, 2, 64) for batch in first)
    with pytest.raises(DataError, match="Bad training record: .*kind must be one of"):
        for _ in iterator:
            pass


def test_copies_of_a_shard_and_shards_of_another_split_are_caught(tmp_path):
    """The same bytes at another path are read once (without comparing records); an ArrayRecord shard holds one
    split, so a validation shard given as training data is an error naming it, not silently empty."""
    train = [_record("text", text=f"defmodule C{i} do\nend\n") for i in range(5)]
    first = _write_array_record(tmp_path / "train-00000.array_record", train)
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "train-00007.array_record"
    copy.write_bytes(open(first, "rb").read())
    assert shard_files((first, str(copy)), "train") == [first]
    assert [r.id for r in read_records((first, str(copy)), "train")] == [r.id for r in train]

    validation = [dataclasses.replace(r, split="validation") for r in train]
    held_out = _write_array_record(tmp_path / "validation-00000.array_record", validation)
    with pytest.raises(DataError, match=f"{held_out} holds validation records, not train ones"):
        read_records((held_out,), "train")
