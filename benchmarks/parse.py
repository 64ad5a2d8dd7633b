"""Elixir files analysed per second: the long-lived worker pool vs one `elixir` process per file.

Both run the same parser (devstral_jax/elixir/parser.exs) on the same files with the same parallelism.
The corpus is the installed Elixir's own modules rebuilt from their docs (what the OTP docs source
feeds the pipeline), or any local tree with --source_dir.

    python benchmarks/parse.py
    python benchmarks/parse.py --source_dir=~/src/phoenix --max_files=300 --workers=4
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from a checkout

from absl import app, flags  # noqa: E402

from data_pipeline.config import base_config  # noqa: E402
from data_pipeline.sources.otp_docs import otp_docs_worker  # noqa: E402
from devstral_jax.elixir.parse import PARSER_SCRIPT, SourceSyntaxError, parse_source, parser_pool  # noqa: E402
from devstral_jax.errors import FlagError  # noqa: E402

_SOURCE_DIR = flags.DEFINE_string("source_dir", None, "A local Elixir tree; default: the installed Elixir's docs.")
_MAX_FILES = flags.DEFINE_integer("max_files", 100, "Files to parse (the first ones in path order).")
_WORKERS = flags.DEFINE_integer("workers", 2, "Parallel Elixir processes, for both methods.")
_OUTPUT = flags.DEFINE_string("output", "out/benchmarks/parse.json", "Where the JSON results go.")


def corpus(directory: Path) -> list[Path]:
    """The files to parse: --source_dir's, or the installed Elixir's modules written under `directory`."""
    if _SOURCE_DIR.value:
        root = Path(_SOURCE_DIR.value).expanduser()
        if not root.is_dir():
            raise FlagError(f"--source_dir={root} is not a directory.")
        files = sorted(p for p in root.rglob("*") if p.suffix in (".ex", ".exs") and p.is_file())
    else:
        with otp_docs_worker() as worker:
            for otp_app in base_config().sources.otp_docs.apps:
                for entry in worker.call({"op": "app", "app": otp_app}):
                    path = directory / entry["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(entry["source"])
        files = sorted(directory.rglob("*.ex"))
    if not files:
        raise FlagError("No .ex/.exs files to parse.")
    return files[:_MAX_FILES.value]


def with_pool(files: list[Path], workers: int) -> tuple[float, list[bool]]:
    """Wall time from starting the pool to the last answer, and whether each file parsed."""
    def parses(path: Path) -> bool:
        try:
            parse_source(pool, str(path), path.read_bytes())
            return True
        except SourceSyntaxError:
            return False

    start = time.perf_counter()
    with parser_pool(workers) as pool, ThreadPoolExecutor(workers) as threads:
        outcomes = list(threads.map(parses, files))
    return time.perf_counter() - start, outcomes


def process_per_file(files: list[Path], workers: int) -> tuple[float, list[bool]]:
    """Wall time of `elixir parser.exs FILE` for every file, `workers` at a time."""
    def parses(path: Path) -> bool:
        result = subprocess.run(["elixir", str(PARSER_SCRIPT), str(path)], capture_output=True, text=True,
                                check=True)
        return result.stdout.split("\t")[1] == "ok"

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as threads:
        outcomes = list(threads.map(parses, files))
    return time.perf_counter() - start, outcomes


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as directory:
        files = corpus(Path(directory))
        size = sum(p.stat().st_size for p in files)
        pool_s, pool_ok = with_pool(files, _WORKERS.value)
        single_s, single_ok = process_per_file(files, _WORKERS.value)
    if pool_ok != single_ok:
        raise RuntimeError("The two methods disagree on which files parse.")
    rows = [("worker pool", pool_s), ("process per file", single_s)]
    print(f"{len(files)} files, {size / 1e6:.1f} MB ({_SOURCE_DIR.value or 'installed Elixir docs'}), "
          f"{sum(pool_ok)} parse; {_WORKERS.value} Elixir processes at a time")
    print(f"{'method':<18} {'seconds':>8} {'files/s':>9} {'speedup':>8}")
    for name, seconds in rows:
        print(f"{name:<18} {seconds:>8.2f} {len(files) / seconds:>9.1f} {single_s / seconds:>7.1f}x")
    results = {
        "benchmark": "parse", "files": len(files), "bytes": size, "parsed": sum(pool_ok), "workers": _WORKERS.value,
        "corpus": _SOURCE_DIR.value or "installed Elixir docs",
        "elixir": subprocess.run(["elixir", "--version"], capture_output=True, text=True).stdout.split("\n\n")[-1]
        .strip(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "methods": {name: {"seconds": seconds, "files_per_second": len(files) / seconds} for name, seconds in rows},
        "speedup": single_s / pool_s,
    }
    output = Path(_OUTPUT.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    app.run(main)
