"""Programs per second: the execution pool vs one `elixir file.exs` process per program (MultiPL-E's way).

    python benchmarks/exec.py [--repeats=4] [--workers=0] [--out=benchmarks/results/exec_cpu.json]

Both run the same programs (the hand-written HumanEval-Elixir completions in tests/eval/data: correct,
wrong, syntax errors, compile errors, raising; the infinite loops are left out, since they time both
sides out equally) with the same number of programs in flight (one per worker), and must agree on every
verdict. Pool start-up is reported apart; throughput counts the programs only.

A third row is the floor under any executor that runs the programs through Elixir: warm VMs that only
load each file as `elixir file.exs` does (exec_floor.exs: compile, run the tests; no sandbox, no capture,
no cleanup beyond unloading the modules). Its rate over the baseline's is the ceiling on the speed-up.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstral_jax.eval.benchmarks import load_problems  # noqa: E402
from devstral_jax.eval.pool import ExecutionPool  # noqa: E402
from devstral_jax.eval.reference_run import run_elixir_file  # noqa: E402

DATA = ROOT / "tests" / "eval" / "data"
FLOOR = ROOT / "benchmarks" / "exec_floor.exs"
_REPEATS = flags.DEFINE_integer("repeats", 4, "How many times the pool runs the program set (the baseline: once).")
_WORKERS = flags.DEFINE_integer("workers", 0, "Pool workers and baseline processes in flight; 0 = one per core.")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "results" / "exec_cpu.json"), "Where the JSON goes.")


def main(argv: list[str]) -> None:
    del argv
    workers = _WORKERS.value or os.cpu_count() or 1
    problems = {p.name: p for p in load_problems(DATA / "humaneval_ex_sample.jsonl")}
    lines = [json.loads(line) for line in (DATA / "humaneval_ex_completions.jsonl").read_text().splitlines()]
    programs = [problems[line["name"]].program(line["completion"]) for line in lines if line["kind"] != "infinite_loop"]

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as threads:
        reference = list(threads.map(run_elixir_file, programs))
    baseline_seconds = time.perf_counter() - start

    start = time.perf_counter()
    with ExecutionPool(workers) as pool:
        pool.run(programs[:workers])  # every worker booted and warm
        startup_seconds = time.perf_counter() - start
        start = time.perf_counter()
        verdicts = pool.run(programs * _REPEATS.value)
        pool_seconds = time.perf_counter() - start
        sandboxed = pool.sandbox.isolated

    floor_rate = _floor_rate(programs, workers, _REPEATS.value)
    expected = [(status, code) for status, code, _ in reference] * _REPEATS.value
    mismatches = sum((v.status, v.exit_code) != e for v, e in zip(verdicts, expected))
    baseline_rate = len(programs) / baseline_seconds
    pool_rate = len(verdicts) / pool_seconds
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "workers": workers, "sandboxed": sandboxed, "programs": len(programs), "repeats": _REPEATS.value,
        "baseline_programs_per_second": baseline_rate,
        "baseline_seconds_per_program": baseline_seconds / len(programs) * workers,
        "pool_programs_per_second": pool_rate, "pool_seconds_per_program": pool_seconds / len(verdicts) * workers,
        "pool_startup_seconds": startup_seconds, "speedup": pool_rate / baseline_rate, "verdict_mismatches": mismatches,
        "elixir_floor_programs_per_second": floor_rate, "elixir_floor_seconds_per_program": workers / floor_rate,
        "ceiling_speedup": floor_rate / baseline_rate,
    }
    print(f"{'':34}{'programs/s':>12}{'s/program/worker':>18}")
    print(f"{'elixir file.exs per program':34}{baseline_rate:12.1f}{result['baseline_seconds_per_program']:18.3f}")
    print(f"{'execution pool' + (' (sandboxed)' if sandboxed else ''):34}{pool_rate:12.1f}"
          f"{result['pool_seconds_per_program']:18.4f}")
    print(f"{'Elixir alone (warm VM, floor)':34}{floor_rate:12.1f}{result['elixir_floor_seconds_per_program']:18.4f}")
    print(f"speedup {result['speedup']:.1f}x (ceiling {result['ceiling_speedup']:.1f}x: the floor over the baseline) "
          f"with {workers} workers; {len(programs)} programs; pool start-up "
          f"{startup_seconds:.2f} s; verdict mismatches: {mismatches}; {result['machine']}")
    Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    Path(_OUT.value).write_text(json.dumps(result, indent=2) + "\n")
    if mismatches:
        raise SystemExit(f"{mismatches} verdicts differ from `elixir file.exs`.")


def _floor_rate(programs: list, workers: int, repeats: int) -> float:
    """Programs per second of `workers` warm VMs running exec_floor.exs over the programs side by side."""
    with tempfile.TemporaryDirectory(prefix="exec-floor-") as directory:
        files = []
        for i, program in enumerate(programs):
            files.append(Path(directory) / str(i) / program.file_name)
            files[-1].parent.mkdir()
            files[-1].write_text(program.source, encoding="utf-8")
        command = ["elixir", str(FLOOR), str(repeats), *map(str, files)]
        vms = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=directory)
               for _ in range(workers)]
        seconds = [float(vm.communicate()[0].split()[-1]) for vm in vms]
    return workers * len(programs) * repeats / max(seconds)


if __name__ == "__main__":
    app.run(main)
