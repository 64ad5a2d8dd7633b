"""Programs per second: the execution pool vs one `elixir file.exs` process per program (MultiPL-E's way).

    python benchmarks/exec.py [--chunks=8] [--repeats=2] [--workers=0] [--out=benchmarks/results/exec_cpu.json]

The programs: ten samples of every HumanEval-Elixir problem (benchmarks/exec_samples.py: hand-written ones where
tests/eval/data has them, else passing, wrong, raising, non-compiling, unparsable and looping ones), run by both
with the same number in flight (one per worker) and checked to get the same verdicts. Endless loops wait out the
same time limit on both sides, so they are run for the verdicts but timed apart; the other programs get a
generous limit in the baseline, whose VM start counts against it (on a busy machine it alone can take seconds).

The machine is shared, so the finishing programs are measured in chunks of whole problems, each chunk by the
baseline and then, `repeats` times, by fresh pools reusing test modules and compiling every program whole; each
figure carries the load average it was measured under, and the speed-up is the ratio within a chunk. Besides
wall-clock rates, both sides' CPU seconds per program are measured (the baseline's `elixir` processes, the
pool's VMs, and this process): on a loaded machine their ratio is the steadier estimate of the speed-up an idle
one would show, as both sides keep their cores busy.
A last row is the floor of compiling every program whole in a warm VM: exec_floor.exs loads each file as
`elixir file.exs` does, with no sandbox, capture or cleanup.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.exec_samples import answer_tables, hand_written, samples  # noqa: E402
from devstral_jax.errors import FlagError  # noqa: E402
from devstral_jax.eval.benchmarks import HUMANEVAL_EX, load_problems  # noqa: E402
from devstral_jax.eval.pool import ExecutionPool  # noqa: E402
from devstral_jax.eval.reference_run import run_elixir_file  # noqa: E402
from devstral_jax.eval.verdict import Program  # noqa: E402

COMPLETIONS = ROOT / "tests" / "eval" / "data" / "humaneval_ex_completions.jsonl"
FLOOR = ROOT / "benchmarks" / "exec_floor.exs"
LOOPS = ("loops", "infinite_loop")
_CHUNKS = flags.DEFINE_integer("chunks", 8, "Chunks of whole problems, each timed by the baseline and the pools.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Fresh pools per chunk and kind (reusing tests, compiling whole).")
_WORKERS = flags.DEFINE_integer("workers", 0, "Pool workers and baseline processes in flight; 0 = one per core.")
_TIMEOUT = flags.DEFINE_float("timeout", 5.0, "Seconds a program may run (MultiPL-E: 5).")
_BASELINE_TIMEOUT = 120.0  # seconds for a finishing program in the baseline, VM start included
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "results" / "exec_cpu.json"), "Where the JSON goes.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise FlagError(f"Unexpected arguments: {argv[1:]}")
    workers = _WORKERS.value or os.cpu_count() or 1
    problems = load_problems(HUMANEVAL_EX)
    written, tables = hand_written(COMPLETIONS), answer_tables(problems)
    sets = [[(kind, problem.program(completion))
             for kind, completion in samples(problem, i, written.get(problem.name, []), tables[problem.name])]
            for i, problem in enumerate(problems)]
    finishing = [[program for kind, program in s if kind not in LOOPS] for s in sets]
    looping = [program for s in sets for kind, program in s if kind in LOOPS]
    chunks = [sum(finishing[i::_CHUNKS.value], []) for i in range(_CHUNKS.value)]

    rows, expected, verdicts = [], [], {"reuse": [], "whole": []}
    for number, chunk in enumerate(chunks, 1):
        row = {"chunk": number, "programs": len(chunk)}
        row["baseline"], reference = _baseline(chunk, workers)
        expected += [(status, code) for status, code, _ in reference]
        for kind in ("reuse", "whole") * _REPEATS.value:
            figure, got, counts = _pool(chunk, workers, reuse=kind == "reuse")
            row.setdefault(kind, []).append(figure)
            if len(row[kind]) == 1:
                verdicts[kind] += got
                row[f"{kind}_cache"] = counts
        row["speedup"] = _best(row["reuse"]) / row["baseline"]["programs_per_second"]
        row["speedup_whole"] = _best(row["whole"]) / row["baseline"]["programs_per_second"]
        row["cpu_speedup"] = row["baseline"]["cpu_seconds_per_program"] / _least_cpu(row["reuse"])
        row["cpu_speedup_whole"] = row["baseline"]["cpu_seconds_per_program"] / _least_cpu(row["whole"])
        rows.append(row)
        print(f"chunk {number}/{len(chunks)}: {len(chunk)} programs; baseline "
              f"{row['baseline']['programs_per_second']:.1f}/s (load {row['baseline']['load']:.1f}); pool reusing "
              f"tests {_best(row['reuse']):.1f}/s ({row['speedup']:.1f}x wall, {row['cpu_speedup']:.1f}x CPU), "
              f"compiling whole {_best(row['whole']):.1f}/s ({row['speedup_whole']:.1f}x wall, "
              f"{row['cpu_speedup_whole']:.1f}x CPU); cache {row['reuse_cache']}", flush=True)

    loop_expected = [(status, code) for status, code, _ in _run_elixir_files(looping, workers, _TIMEOUT.value)]
    with ExecutionPool(workers, timeout=_TIMEOUT.value) as pool:
        loop_verdicts = [(v.status, v.exit_code) for v in pool.run(looping)]
    all_expected = expected + loop_expected
    mismatches = {kind: sum((v.status, v.exit_code) != e for v, e in zip(verdicts[kind], expected))
                  + sum(v != e for v, e in zip(loop_verdicts, loop_expected)) for kind in verdicts}
    floor = _floor_rate(sum(chunks, []), workers)

    total = sum(len(c) for c in chunks)
    baseline_rate = total / sum(r["baseline"]["seconds"] for r in rows)
    reuse_rate = total / sum(min(f["seconds"] for f in r["reuse"]) for r in rows)
    whole_rate = total / sum(min(f["seconds"] for f in r["whole"]) for r in rows)
    baseline_cpu = sum(r["baseline"]["cpu_seconds_per_program"] * r["programs"] for r in rows) / total
    reuse_cpu = sum(_least_cpu(r["reuse"]) * r["programs"] for r in rows) / total
    whole_cpu = sum(_least_cpu(r["whole"]) * r["programs"] for r in rows) / total
    statuses = {s: sum(e[0] == s for e in all_expected) for s in ("OK", "AssertionError", "SyntaxError", "Exception",
                                                                  "Timeout")}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "workers": workers, "timeout": _TIMEOUT.value,
        "problems": len(problems), "programs": total + len(looping), "timed_programs": total,
        "looping_programs": len(looping), "statuses": statuses,
        "baseline_programs_per_second": baseline_rate, "pool_programs_per_second": reuse_rate,
        "pool_whole_programs_per_second": whole_rate, "speedup": reuse_rate / baseline_rate,
        "speedup_whole": whole_rate / baseline_rate,
        "speedup_by_chunk": [round(r["speedup"], 2) for r in rows],
        "baseline_cpu_seconds_per_program": baseline_cpu, "pool_cpu_seconds_per_program": reuse_cpu,
        "pool_whole_cpu_seconds_per_program": whole_cpu, "cpu_speedup": baseline_cpu / reuse_cpu,
        "cpu_speedup_whole": baseline_cpu / whole_cpu,
        "cpu_speedup_by_chunk": [round(r["cpu_speedup"], 2) for r in rows],
        "load_averages": [r["baseline"]["load"] for r in rows],
        "elixir_floor_programs_per_second": floor["programs_per_second"], "elixir_floor_load": floor["load"],
        "elixir_floor_cpu_seconds_per_program": floor["cpu_seconds_per_program"],
        "cpu_ceiling_speedup": baseline_cpu / floor["cpu_seconds_per_program"],
        "verdict_mismatches": mismatches, "chunks": rows,
    }
    print(f"\n{'':44}{'programs/s':>12}{'x baseline':>12}{'CPU s/program':>15}{'x baseline':>12}")
    print(f"{'elixir file.exs per program':44}{baseline_rate:12.1f}{1:12.1f}{baseline_cpu:15.4f}{1:12.1f}")
    print(f"{'pool, test modules reused':44}{reuse_rate:12.1f}{reuse_rate / baseline_rate:12.1f}"
          f"{reuse_cpu:15.4f}{baseline_cpu / reuse_cpu:12.1f}")
    print(f"{'pool, every program compiled whole':44}{whole_rate:12.1f}{whole_rate / baseline_rate:12.1f}"
          f"{whole_cpu:15.4f}{baseline_cpu / whole_cpu:12.1f}")
    print(f"{'warm VM compiling whole (floor, load {:.1f})'.format(floor['load']):44}"
          f"{floor['programs_per_second']:12.1f}{floor['programs_per_second'] / baseline_rate:12.1f}"
          f"{floor['cpu_seconds_per_program']:15.4f}{baseline_cpu / floor['cpu_seconds_per_program']:12.1f}")
    print(f"{total} timed programs + {len(looping)} looping ones, {len(problems)} problems, {workers} workers; "
          f"statuses {statuses}; speed-up by chunk {result['speedup_by_chunk']}; verdict mismatches {mismatches}")
    Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    Path(_OUT.value).write_text(json.dumps(result, indent=2) + "\n")
    if any(mismatches.values()):
        raise SystemExit(f"Verdicts differ from `elixir file.exs`: {mismatches}.")


def _baseline(programs: list[Program], workers: int) -> tuple[dict, list]:
    load, cpu = os.getloadavg()[0], _cpu_seconds(resource.RUSAGE_CHILDREN) + _cpu_seconds(resource.RUSAGE_SELF)
    start = time.perf_counter()
    reference = _run_elixir_files(programs, workers, _BASELINE_TIMEOUT)
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds(resource.RUSAGE_CHILDREN) + _cpu_seconds(resource.RUSAGE_SELF) - cpu
    return _figure(len(programs), seconds, cpu, load), reference


def _figure(programs: int, seconds: float, cpu: float, load: float) -> dict:
    return {"seconds": seconds, "programs_per_second": programs / seconds, "cpu_seconds_per_program": cpu / programs,
            "load": load}


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _descendants_cpu() -> dict[int, float]:
    """CPU seconds so far of each live process descending from this one (the pool's VMs and their launchers)."""
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # it exited meanwhile
                continue
            parents[int(entry)] = int(fields[1])
            cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    mine = set()
    for pid in parents:
        ancestor = pid
        while ancestor in parents and ancestor not in mine and ancestor != os.getpid():
            ancestor = parents[ancestor]
        if ancestor == os.getpid() or ancestor in mine:
            mine.add(pid)
    return {pid: cpu[pid] for pid in mine}


def _run_elixir_files(programs: list[Program], workers: int, timeout: float) -> list:
    with concurrent.futures.ThreadPoolExecutor(workers) as threads:
        return list(threads.map(lambda program: run_elixir_file(program, timeout), programs))


def _pool(programs: list[Program], workers: int, reuse: bool) -> tuple[dict, list, dict]:
    """A fresh pool's figure over `programs` (started and warmed up first, on programs of no problem)."""
    with ExecutionPool(workers, timeout=_TIMEOUT.value, reuse_tests=reuse) as pool:
        pool.run([Program('IO.puts("warm")')] * workers)
        pool.cache_counts.clear()
        load, before, own = os.getloadavg()[0], _descendants_cpu(), _cpu_seconds(resource.RUSAGE_SELF)
        start = time.perf_counter()
        verdicts = pool.run(programs)
        seconds = time.perf_counter() - start
        after = _descendants_cpu()
        # Workers alive throughout (a replaced one's time is lost: counted in `restarts`).
        cpu = sum(after[pid] - before[pid] for pid in after.keys() & before.keys())
        cpu += _cpu_seconds(resource.RUSAGE_SELF) - own
        counts = {**pool.cache_counts, "restarts": pool.restarts}
    return _figure(len(programs), seconds, cpu, load), verdicts, counts


def _best(figures: list[dict]) -> float:
    return max(f["programs_per_second"] for f in figures)


def _least_cpu(figures: list[dict]) -> float:
    return min(f["cpu_seconds_per_program"] for f in figures)


def _floor_rate(programs: list[Program], workers: int) -> dict:
    """Programs per second of `workers` warm VMs running exec_floor.exs over the programs side by side."""
    with tempfile.TemporaryDirectory(prefix="exec-floor-") as directory:
        files = []
        for i, program in enumerate(programs):
            files.append(Path(directory) / str(i) / program.file_name)
            files[-1].parent.mkdir()
            files[-1].write_text(program.source, encoding="utf-8")
        load, cpu = os.getloadavg()[0], _cpu_seconds(resource.RUSAGE_CHILDREN)
        command = ["elixir", str(FLOOR), "1", *map(str, files)]
        vms = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=directory)
               for _ in range(workers)]
        seconds = [float(vm.communicate()[0].split()[-1]) for vm in vms]
        # Each VM loads every file twice (a warm-up pass, then the timed one): half its CPU is the timed pass's.
        cpu = (_cpu_seconds(resource.RUSAGE_CHILDREN) - cpu) / 2
    return {"programs_per_second": workers * len(programs) / max(seconds), "load": load,
            "cpu_seconds_per_program": cpu / (workers * len(programs))}


if __name__ == "__main__":
    app.run(main)
