"""launch/prepare_data.py as a user runs it: killed twice with SIGKILL and resumed, it writes exactly what an
uninterrupted run writes; Grain reads the shards; bad flags give a clear error, not a traceback."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import pytest
from conftest import BENCHMARK, FIXTURES
from dp_fakes import FakeHub, package_tarball

from devstral_jax.data.records import Record

REPO = Path(__file__).resolve().parents[2]
LAUNCH = [sys.executable, str(REPO / "launch" / "prepare_data.py")]

CONFIG = """
from data_pipeline.config import base_config


def get_config():
    config = base_config()
    config.output_dir = {out!r}
    config.progress = False
    config.units_in_flight = 1
    config.decontam.benchmarks = ({benchmark!r},)
    config.sources.hex.update(enabled=True, api_url={url!r} + "/api", repo_url={url!r} + "/repo")
    config.sources.local.update(paths=({local!r},), batch_files=2, licence="LicenseRef-own-code")
    return config
"""


def write_config(tmp_path: Path, name: str, hub: FakeHub) -> tuple[Path, Path]:
    out = tmp_path / name
    config = tmp_path / f"{name}_config.py"
    config.write_text(CONFIG.format(out=str(out), benchmark=str(BENCHMARK), url=hub.url,
                                    local=str(FIXTURES / "elixir_tree")))
    return config, out


def checkpoints(out: Path) -> int:
    return len(list((out / "work" / "units").glob("*.json")))


def start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([*LAUNCH, f"--config={config}"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill_after(config: Path, out: Path, done_units: int) -> int:
    """Starts a run and SIGKILLs it once `done_units` units are checkpointed; returns the count then."""
    process = start(config)
    deadline = time.time() + 120
    while checkpoints(out) < done_units:
        assert process.poll() is None, f"the run ended before it could be killed:\n{process.stderr.read()}"
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    for pid in map(int, children):  # its Elixir workers see their request pipe close and halt
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower():
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"Elixir worker {pid} outlived the killed pipeline")
    return checkpoints(out)


def shard_records(out: Path) -> dict[str, list[str]]:
    """Each split's records, read back through Grain."""
    manifest = json.loads((out / "manifest.json").read_text())
    splits = {}
    for split in ("train", "validation"):
        shards = [str(out / name) for name in manifest["splits"][split]["files"] if name.endswith(".array_record")]
        source = grain.sources.ArrayRecordDataSource(shards)
        splits[split] = [source[i].decode() for i in range(len(source))]
    return splits


def test_killed_twice_and_resumed_equals_an_uninterrupted_run(tmp_path):
    with FakeHub(page_size=3) as hub:
        for i in range(8):
            hub.add_package(f"pkg{i}", "1.0.0", package_tarball(f"pkg{i}", "1.0.0"))
        hub.tarball_delay_s = 0.3  # slow enough to be killed mid-run

        config, reference = write_config(tmp_path, "reference", hub)
        finished = subprocess.run([*LAUNCH, f"--config={config}"], cwd=REPO, capture_output=True, text=True,
                                  timeout=300)
        assert finished.returncode == 0, finished.stderr[-3000:]

        config, resumed = write_config(tmp_path, "resumed", hub)
        first = kill_after(config, resumed, 2)
        second = kill_after(config, resumed, first + 2)
        assert 2 <= first < second < 11  # 8 packages + 3 local batches: both kills were mid-run
        finished = subprocess.run([*LAUNCH, f"--config={config}"], cwd=REPO, capture_output=True, text=True,
                                  timeout=300)
        assert finished.returncode == 0, finished.stderr[-3000:]

    expected, got = shard_records(reference), shard_records(resumed)
    assert got == expected  # same records, same ids, same order
    ids = [Record.from_json(line).id for split in got.values() for line in split]
    assert len(ids) == len(set(ids)) and len(ids) > 50
    for split, lines in got.items():  # the JSONL mirror holds the same records
        assert (resumed / "jsonl" / f"{split}.jsonl").read_text().splitlines() == lines
    packages = {split: {Record.from_json(line).package for line in lines} for split, lines in got.items()}
    assert packages["validation"] and not packages["train"] & packages["validation"]
    manifest = json.loads((resumed / "manifest.json").read_text())
    assert manifest["files"]["skipped_by_reason"] == {"parse error": 1, "invalid UTF-8": 1}
    assert "| train |" in (resumed / "report.md").read_text()


def test_grain_loads_the_shards_as_a_dataset(tmp_path, data_config):
    from data_pipeline.run import run

    data_config.sources.local.paths = (str(FIXTURES / "elixir_tree"),)
    run(data_config)
    out = Path(data_config.output_dir)
    shards = sorted(str(p) for p in out.glob("train-*.array_record"))
    dataset = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(shards)).map(Record.from_json)
    records = list(dataset)
    assert {r.kind for r in records} == {"text", "chat", "fim"} and all(r.split == "train" for r in records)
    assert [r.to_json() for r in records] == (out / "jsonl" / "train.jsonl").read_text().splitlines()


@pytest.mark.parametrize("flags, message", [
    (["--config=configs/data_otp_docs.py", "--config.workers=0"], "workers must be at least 1"),
    (["--config=configs/data_otp_docs.py", "--config.sources.local.paths=('/no/such/dir',)"],
     "/no/such/dir is not a directory"),
    (["--config=configs/data_otp_docs.py", "--config.decontam.benchmarks=('/no/bench.jsonl',)"],
     "decontam.benchmarks: /no/bench.jsonl does not exist"),
    (["--config=configs/data_otp_docs.py", "--config.no_such_setting=1"], "no_such_setting"),
    (["--config=configs/no_such_file.py"], "no_such_file.py"),
    ([], "--config"),
])
def test_bad_flags_and_config_are_clear_errors(flags, message):
    result = subprocess.run([*LAUNCH, *flags], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
