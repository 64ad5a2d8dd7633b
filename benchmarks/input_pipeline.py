"""Input pipeline: packed tokens/s delivered to the train step and the host's peak memory as the corpus grows.

    python benchmarks/input_pipeline.py [--scales=1,10,100] [--workers=1,4] [--seq_len=4096] [--batch_size=8]

Builds ArrayRecord corpora of 1x, 10x, 100x the sample corpus (devstral_jax/data/sample/sample.jsonl, each copy
of a record under a new id), then measures each figure in a fresh process: the peak RSS of reading
--rss_batches batches with no worker process (the pipeline in the measuring process itself, so its memory is all
counted), and the rate of --speed_batches batches delivered through 1 and 4 Grain worker processes (on the 10x
corpus; after the first batch, which includes starting the workers). A train step consumes all of a batch's
positions, so `positions_per_s` is what to compare with the step's tokens/s; `tokens_per_s` counts only the
non-padding ones. The machine's load average is recorded with each figure (others may share it). Prints a
table and writes JSON to results/input_pipeline.json (or --out).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import flags

from devstral_jax.cli import run
from devstral_jax.data.records import Record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "devstral_jax", "data", "sample", "sample.jsonl")
STEP_TOKENS_PER_S = 3000  # what one H100 consumes at 40% MFU on the Devstral Small QLoRA step (issue 13)

_SCALES = flags.DEFINE_list("scales", ["1", "10", "100"], "Corpus sizes, in copies of the sample corpus.")
_WORKERS = flags.DEFINE_list("workers", ["1", "4"], "Grain worker process counts to measure the rate with.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 4096, "Row length.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Rows per batch.")
_RSS_BATCHES = flags.DEFINE_integer("rss_batches", 20, "Batches read for the memory figure.")
_SPEED_BATCHES = flags.DEFINE_integer("speed_batches", 60, "Batches timed for the rate figure.")
_SPEED_SCALE = flags.DEFINE_integer("speed_scale", 10, "The corpus (in copies) the rate is measured on.")
_RECORDS_PER_SHARD = flags.DEFINE_integer("records_per_shard", 10_000, "Records per ArrayRecord shard.")
_OUT = flags.DEFINE_string("out", os.path.join(ROOT, "benchmarks", "results", "input_pipeline.json"), "JSON output.")
_MEASURE = flags.DEFINE_string("measure", None, "Internal: measure one corpus in this process and print JSON.")
_MEASURE_WORKERS = flags.DEFINE_integer("measure_workers", 0, "Internal: worker processes of that measurement.")
_MEASURE_BATCHES = flags.DEFINE_integer("measure_batches", 20, "Internal: batches of that measurement.")


def build_corpus(directory: str, copies: int, records_per_shard: int) -> int:
    """`copies` of every train record of the sample, each under a new id, in `train-NNNNN.array_record` shards."""
    from array_record.python.array_record_module import ArrayRecordWriter

    with open(SAMPLE, "rb") as f:
        records = [Record.from_json(line) for line in f if line.strip()]
    records = [r for r in records if r.split == "train"]
    os.makedirs(directory, exist_ok=True)
    writer, written = None, 0
    for copy in range(copies):
        for record in records:
            if written % records_per_shard == 0:
                if writer is not None:
                    writer.close()
                path = os.path.join(directory, f"train-{written // records_per_shard:05d}.array_record")
                writer = ArrayRecordWriter(path, "group_size:1")
            data = json.loads(record.to_json())
            data["id"] = f"{record.id}-{copy}"
            writer.write(json.dumps(data).encode())
            written += 1
    writer.close()
    return written


def measure(corpus: str, workers: int, batches: int) -> dict:
    """Reads `batches` batches of `corpus` in this process (and `workers` Grain worker processes)."""
    from devstral_jax.data.pipeline import DataSpec, make_dataset
    from devstral_jax.tokenizers import TekkenTokenizer

    spec = DataSpec(paths=(corpus,), split="train", seq_len=_SEQ_LEN.value, batch_size=_BATCH_SIZE.value,
                    seed=0, worker_count=workers)
    iterator = iter(make_dataset(spec, TekkenTokenizer()))
    start = time.perf_counter()
    first = next(iterator)
    first_seconds = time.perf_counter() - start
    tokens = 0
    start = time.perf_counter()
    for _ in range(batches):
        tokens += int((next(iterator)["segment_ids"] > 0).sum())
    seconds = time.perf_counter() - start
    positions = batches * first["inputs"].size
    return dict(workers=workers, batches=batches, first_batch_s=first_seconds, seconds=seconds,
                positions_per_s=positions / seconds, tokens_per_s=tokens / seconds, fill=tokens / positions,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                load_average=os.getloadavg())


def _measure_in_child(corpus: str, workers: int, batches: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), f"--measure={corpus}", f"--measure_workers={workers}",
               f"--measure_batches={batches}", f"--seq_len={_SEQ_LEN.value}", f"--batch_size={_BATCH_SIZE.value}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    del argv
    if _MEASURE.value:
        print(json.dumps(measure(_MEASURE.value, _MEASURE_WORKERS.value, _MEASURE_BATCHES.value)))
        return
    load_before = os.getloadavg()
    scales = sorted({int(s) for s in _SCALES.value} | {_SPEED_SCALE.value})
    with tempfile.TemporaryDirectory(prefix="input_pipeline_") as tmp:
        corpora, records = {}, {}
        for scale in scales:
            corpora[scale] = os.path.join(tmp, f"x{scale}")
            records[scale] = build_corpus(corpora[scale], scale, _RECORDS_PER_SHARD.value)
        memory = [{"scale": scale, "records": records[scale],
                   **_measure_in_child(corpora[scale], 0, _RSS_BATCHES.value)}
                  for scale in scales if str(scale) in _SCALES.value]
        speed = [{"scale": _SPEED_SCALE.value, "records": records[_SPEED_SCALE.value],
                  **_measure_in_child(corpora[_SPEED_SCALE.value], int(w), _SPEED_BATCHES.value)}
                 for w in _WORKERS.value]
    result = dict(command=" ".join(["python benchmarks/input_pipeline.py", *sys.argv[1:]]), seq_len=_SEQ_LEN.value,
                  batch_size=_BATCH_SIZE.value, cpus=os.cpu_count(), load_average_before=load_before,
                  step_tokens_per_s=STEP_TOKENS_PER_S, memory=memory, speed=speed)
    print(f"{'corpus':>8}{'records':>10}{'workers':>9}{'peak RSS MB':>13}{'positions/s':>13}{'tokens/s':>11}"
          f"{'fill':>7}{'x step':>8}   load average")
    for row in memory + speed:
        print(f"{row['scale']:>7}x{row['records']:>10}{row['workers']:>9}{row['peak_rss_mb']:>13.0f}"
              f"{row['positions_per_s']:>13.0f}{row['tokens_per_s']:>11.0f}{row['fill']:>7.2f}"
              f"{row['positions_per_s'] / STEP_TOKENS_PER_S:>8.1f}   "
              f"{' '.join(f'{x:.1f}' for x in row['load_average'])}")
    os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    run(main)
