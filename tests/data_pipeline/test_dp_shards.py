"""The split by package, the shard writer and the output folder's layout."""

from pathlib import Path

import grain
from conftest import FIXTURES

from data_pipeline.run import run
from data_pipeline.shards import SplitWriter, validation_packages
from devstral_jax.data.pipeline import read_records, shard_files
from devstral_jax.data.records import Record, Source


def test_validation_takes_whole_packages_up_to_the_fraction():
    files = {f"pkg{i}": 10 for i in range(100)}
    held = validation_packages(files, 0.05, seed=0)
    assert len(held) == 5  # 5% of the files
    assert held == validation_packages(dict(reversed(files.items())), 0.05, seed=0)  # order-independent
    assert held != validation_packages(files, 0.05, seed=1)
    assert len(validation_packages({"big": 1000, "small": 1}, 0.05, seed=0)) == 1  # never empty...
    assert validation_packages({"only": 10}, 0.5, seed=0) == set()  # ...and never everything
    assert validation_packages(files, 0.0, seed=0) == set()


def test_writer_rolls_shards_and_mirrors_jsonl(tmp_path):
    source = Source("local", "p", "v", "lib/a.ex", "MIT", "")
    records = [Record(id=f"r{i}", kind="text", task="file", source=source, text=f"x = {i}\n") for i in range(5)]
    writer = SplitWriter(tmp_path, "train", records_per_shard=2)
    for record in records:
        writer.write(record)
    paths = writer.close()
    assert [str(p.relative_to(tmp_path)) for p in paths] == ["train-00000.array_record", "train-00001.array_record",
                                       "train-00002.array_record", "jsonl/train.jsonl"]
    data = grain.sources.ArrayRecordDataSource([str(p) for p in paths[:-1]])
    assert [Record.from_json(data[i]) for i in range(len(data))] == records
    assert (tmp_path / "jsonl" / "train.jsonl").read_text().splitlines() == [r.to_json() for r in records]


def test_training_reads_each_record_of_an_output_folder_once(data_config):
    """The README's `--config.data.train_paths='("<output_dir>",)'`: the trainer's reader finds the shards, not
    the JSONL mirror too (each record was read twice), and validation reads only the validation shards."""
    data_config.sources.local.paths = (str(FIXTURES / "elixir_tree"),)
    data_config.split.validation_fraction = 0.0
    manifest = run(data_config)
    out = Path(data_config.output_dir)
    assert manifest["splits"]["train"]["files"] == ["train-00000.array_record", "jsonl/train.jsonl"]
    assert shard_files((str(out),), "train") == [str(out / "train-00000.array_record")]
    records = read_records((str(out),), "train")
    assert len(records) == len({r.id for r in records}) == manifest["splits"]["train"]["records"] > 20
    assert [r.to_json() for r in records] == (out / "jsonl" / "train.jsonl").read_text().splitlines()
    assert len(read_records((str(out / "jsonl"),), "train")) == len(records)  # the mirror alone, for other tools
