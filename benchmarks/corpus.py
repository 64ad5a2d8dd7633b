"""The data pipeline on real repositories: per-repository figures, three correctness checks, throughput.

    python benchmarks/corpus.py --src=../shared/corpus [--workers=2] [--nodoctests] [--noverify]
                                [--output=benchmarks/results/corpus.json]

Every folder under --src is one local source, its licence detected from the tree. A planted repository is
added: HumanEval-Elixir solutions (each a problem's prompt + a correct hand-written completion, from
tests/eval/data), as someone's "exercises" repo would hold them. One pipeline run builds the corpus, from
scratch, in a temporary folder; the figures come from its manifest.json and output. Prints per repository:
licence found, files, parsed, skipped by reason, records by kind and task (guides and notebooks among them),
secrets redacted, doctests kept/run/passed (where the manifest has them), then the totals (with the prose
documents, their code blocks and what could not become a record, by reason), the kinds verified by running them
(per kind: generated, run, passed, kept, dropped by reason; the share of generated items that passed), files/s end
to end (with the CPU seconds it took, its own and its subprocesses', and the load average before and after: on a
shared machine, run it a few times), and the checks:
  - training reads each record once: the records Grain reads from the output folder, given as
    `--config.data.train_paths='("<output_dir>",)'` (the README's form), against the manifest's count;
  - decontamination drops only benchmark solutions: every drop is a planted file, every planted file is out;
  - every repository's licence is the one in --src's README table (| folder | ... | licence | ...), if it has one.
"""

import collections
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from a checkout

import grain  # noqa: E402
from absl import app, flags  # noqa: E402

from data_pipeline.config import base_config  # noqa: E402
from data_pipeline.run import run  # noqa: E402
from devstral_jax.data.pipeline import read_records, shard_files  # noqa: E402
from devstral_jax.errors import FlagError  # noqa: E402
from devstral_jax.eval.benchmarks import HUMANEVAL_EX, load_problems, read_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMPLETIONS = REPO / "tests" / "eval" / "data" / "humaneval_ex_completions.jsonl"
PLANTED = "planted_humaneval"

_SRC = flags.DEFINE_string("src", "../shared/corpus", "A folder of Elixir repositories, one per subfolder.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Elixir parser processes.")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/corpus.json", "Where the JSON results go.")
_DOCTESTS = flags.DEFINE_bool("doctests", True, "Run the doctest check (--nodoctests: what the rest costs).")
_VERIFY = flags.DEFINE_bool("verify", True, "Build and run the verified kinds (--noverify: what the rest costs).")


def plant_solutions(root: Path) -> list[str]:
    """A repository of HumanEval-Elixir solutions (prompt + correct completion per file); returns their paths."""
    problems = {p.name: p for p in load_problems(HUMANEVAL_EX)}
    paths = []
    for _, line in read_jsonl(COMPLETIONS):
        if line.get("kind") == "correct":
            path = f"lib/{line['name'].lower()}.ex"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(problems[line["name"]].prompt + line["completion"])
            paths.append(path)
    (root / "LICENSE").write_text("MIT License\n\nHumanEval (OpenAI) in Elixir (MultiPL-E), with solutions.\n")
    return paths


def expected_licences(src: Path) -> dict[str, str]:
    """folder -> licence from a README table with `folder` and `licence` columns, if --src has one."""
    readme = src / "README.md"
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in (readme.read_text().splitlines() if readme.is_file() else []) if line.startswith("|")]
    header = next((row for row in rows if "folder" in row and "licence" in row), None)
    if header is None:
        return {}
    folder, licence = header.index("folder"), header.index("licence")
    return {row[folder]: row[licence] for row in rows if row is not header and not set(row[0]) <= {"-", ":"}}


def doctest_figures(figures: dict | None) -> str:
    """kept/run/passed of a package's doctest-derived tests (manifest `doctests.packages`); "-" when it has none."""
    if not figures:
        return "-"
    return "/".join(str(figures[key]) for key in ("kept", "run", "passed"))


def per_repository(manifest: dict, output: Path) -> dict[str, dict]:
    units = collections.defaultdict(list)
    for unit in manifest["units"]:
        units[unit["package"]].append(unit)
    package_of = {unit["id"]: unit["package"] for unit in manifest["units"]}
    skipped = collections.defaultdict(collections.Counter)
    for file in manifest["skipped_files"]:
        skipped[package_of[file["unit"]]][file["reason"].split(":")[0]] += 1
    secrets = collections.defaultdict(collections.Counter)
    for file in manifest["secrets"]["files"]:
        secrets[package_of[file["unit"]]].update(file["kinds"])
    kinds, tasks = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for split in ("train", "validation"):
        for name in manifest["splits"][split]["files"]:
            if name.endswith(".jsonl"):
                for line in (output / name).read_text().splitlines():
                    record = json.loads(line)
                    kinds[record["source"]["package"]][record["kind"]] += 1
                    tasks[record["source"]["package"]][record["task"]] += 1
    rows = {}
    for package, unit_rows in sorted(units.items()):
        licence = unit_rows[0]["licence"] or {}
        rows[package] = {
            "licence": licence.get("licence"), "licence_source": licence.get("source"),
            "licence_allowed": licence.get("allowed"), "status": sorted({u["status"] for u in unit_rows}),
            "files": sum(u["files_kept"] + u["files_skipped"] for u in unit_rows),
            "parsed": sum(u["files_kept"] for u in unit_rows), "skipped": dict(skipped[package]),
            "records": sum(kinds[package].values()), "records_by_kind": dict(sorted(kinds[package].items())),
            "records_by_task": dict(sorted(tasks[package].items())), "secrets": dict(sorted(secrets[package].items())),
            "doctests_kept_run_passed": doctest_figures(manifest["doctests"]["packages"].get(package)),
            "verified": manifest.get("verified", {}).get("packages", {}).get(package)}
    return rows


def training_reads(output: Path, manifest: dict) -> dict:
    """What the trainer reads from the output folder given whole: files, entries in them, distinct records."""
    figures = {}
    for split in ("train", "validation"):
        files = shard_files((str(output),), split)
        entries = sum(sum(1 for _ in open(f, "rb")) if f.endswith(".jsonl") else _array_record_len(f) for f in files)
        records = read_records((str(output),), split)
        figures[split] = {"files": [os.path.relpath(f, output) for f in files], "entries": entries,
                          "records": len(records), "distinct_ids": len({r.id for r in records}),
                          "manifest_records": manifest["splits"][split]["records"],
                          "read_twice": entries - manifest["splits"][split]["records"]}
    return figures


def _array_record_len(path: str) -> int:
    return len(grain.sources.ArrayRecordDataSource([path]))


def _priority() -> str:
    """How this process was prioritized, when it was: its nice value and (Linux) its autogroup's, which is what
    sets its share of the cores against other sessions'."""
    autogroup = Path("/proc/self/autogroup")
    group = int(autogroup.read_text().split()[-1]) if autogroup.is_file() else 0
    changed = [f"{name} {value}" for name, value in (("nice", os.nice(0)), ("autogroup nice", group)) if value]
    return f", run at {' and '.join(changed)}" if changed else ""


def _cpu_seconds() -> float:
    """CPU time of this process and of its subprocesses that have ended (the pipeline's Elixir VMs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _counts(counter: dict) -> str:
    return ", ".join(f"{k} {n}" for k, n in counter.items()) or "-"


def main(argv):
    del argv
    src = Path(_SRC.value).expanduser().resolve()
    repos = sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []
    if not repos:
        raise FlagError(f"--src={src}: no repositories (one folder each) there.")
    with tempfile.TemporaryDirectory() as tmp:
        planted_root = Path(tmp) / PLANTED
        planted = plant_solutions(planted_root)
        config = base_config()
        config.update(output_dir=str(Path(tmp) / "out"), workers=_WORKERS.value, progress=False)
        config.sources.local.paths = tuple(str(p) for p in repos) + (str(planted_root),)
        config.doctests.enabled = _DOCTESTS.value
        config.verify.enabled = _VERIFY.value
        load_before, cpu, start = os.getloadavg()[0], _cpu_seconds(), time.perf_counter()
        manifest = run(config)
        seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu
        output = Path(config.output_dir)
        rows = per_repository(manifest, output)
        reads = training_reads(output, manifest)

    drops = manifest["decontamination"]["records"]
    dropped_files = {d["file"] for d in drops}
    planted_files = {f"{PLANTED}:{path}" for path in planted}
    expected = expected_licences(src)
    files = manifest["files"]["kept"] + manifest["files"]["skipped"]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores{_priority()}", "src": str(src),
        "workers": _WORKERS.value, "doctests": _DOCTESTS.value, "verify": _VERIFY.value,
        "elixir": manifest["pipeline"]["elixir_version"],
        "seconds": seconds, "files": files, "files_per_second": files / seconds, "cpu_seconds": cpu_seconds,
        "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
        "repositories": rows,
        "totals": {"files": files, "parsed": manifest["files"]["kept"],
                   "skipped": manifest["files"]["skipped_by_reason"],
                   "needs_newer_elixir": manifest["files"]["needs_newer_elixir"],
                   "records": {split: manifest["splits"][split]["records_by_kind"]
                               for split in ("train", "validation")},
                   "secrets": manifest["secrets"]["found"],
                   "doctests": {key: manifest["doctests"][key] for key in ("kept", "run", "passed")},
                   "prose": manifest["prose"],
                   "verified": {key: value for key, value in manifest.get("verified", {}).items()
                                if key != "packages"}},
        "training_reads": reads,
        "decontamination": {"dropped_records": len(drops),
                            "dropped_not_planted": sorted(dropped_files - planted_files),
                            "planted_files": len(planted_files),
                            "planted_dropped": len(planted_files & dropped_files),
                            "planted_records_in_output": rows.get(PLANTED, {}).get("records", 0),
                            "records": drops},
        "licences_checked": {name: {"expected": want, "found": rows.get(name, {}).get("licence")}
                             for name, want in sorted(expected.items())},
    }
    result["checks"] = {
        "no_record_read_twice": all(r["read_twice"] == 0 and r["records"] == r["distinct_ids"] == r["manifest_records"]
                                    for r in reads.values()),
        "drops_are_benchmark_solutions": not result["decontamination"]["dropped_not_planted"],
        "planted_solutions_caught": planted_files <= dropped_files and not rows.get(PLANTED, {}).get("records"),
        "doctests_run_pass_95": (manifest["doctests"]["passed"] >= 0.95 * manifest["doctests"]["run"]
                                 if manifest["doctests"]["run"] else None),
        "licences_detected": (all(v["expected"] == v["found"] for v in result["licences_checked"].values())
                              if expected else None),
    }
    report(result)
    out = REPO / _OUTPUT.value if not Path(_OUTPUT.value).is_absolute() else Path(_OUTPUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if not all(v is not False for v in result["checks"].values()):
        sys.exit("corpus benchmark: a check failed (see above)")


def verified_kinds(verified: dict) -> None:
    """The kinds checked by running them (manifest `verified`): per kind what was generated, run, passed, kept
    and dropped by reason, and the share of generated items that passed."""
    if not verified.get("kinds"):
        return
    print(f"\nverified kinds: {verified['passed']} of {verified['generated']} generated items passed "
          f"({verified['passed_share']:.1%})")
    for kind, f in verified["kinds"].items():
        print(f"  {kind}: generated {f['generated']}, run {f['run']}, passed {f['passed']}, kept {f['kept']}; "
              f"dropped: {_counts(f['dropped_by_reason'])}; kept unverified: {_counts(f['unverified_by_reason'])}"
              + (f"; files not mutated: {_counts(f['not_mutated_by_reason'])}" if f["not_mutated_by_reason"] else ""))


def report(result: dict) -> None:
    header = ("repository", "licence (found in)", "files", "parsed", "skipped", "records", "secrets", "doctests k/r/p")
    lines = [header]
    for name, row in result["repositories"].items():
        lines.append((name, f"{row['licence']} ({row['licence_source']})", str(row["files"]), str(row["parsed"]),
                      _counts(row["skipped"]), f"{row['records']}: {_counts(row['records_by_kind'])}",
                      _counts(row["secrets"]), row["doctests_kept_run_passed"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    print("\nrecords by task:")
    for name, row in result["repositories"].items():
        print(f"  {name}: {_counts(row['records_by_task'])}")
    totals = result["totals"]
    print(f"\ntotal: {totals['files']} files, {totals['parsed']} parsed, skipped {_counts(totals['skipped'])}; "
          f"needing a newer Elixir than {result['elixir']}: {_counts(totals['needs_newer_elixir'])}; "
          f"records {totals['records']}; secrets {_counts(totals['secrets'])}; doctest tests kept/run/passed "
          f"{doctest_figures(totals['doctests'])}")
    prose = totals["prose"]
    print(f"prose: documents {_counts(prose['documents'])}, {prose['sections']} sections, code blocks "
          f"{_counts(prose['code_blocks'])}; not made into records: {_counts(prose['dropped_by_reason'])}")
    verified_kinds(totals["verified"])
    print(f"end to end: {result['files']} files in {result['seconds']:.1f} s = {result['files_per_second']:.1f} "
          f"files/s ({result['cpu_seconds']:.1f} CPU s; {result['workers']} workers; {result['machine']}; load "
          f"average {result['load_average_before']:.1f} before, {result['load_average_after']:.1f} after; doctest "
          f"check {'on' if result['doctests'] else 'off'})")
    for split, reads in result["training_reads"].items():
        print(f"training reads ({split}): {reads['files']}: {reads['entries']} entries, {reads['records']} records, "
              f"{reads['distinct_ids']} distinct, manifest {reads['manifest_records']}; read twice: "
              f"{reads['read_twice']}")
    decontam = result["decontamination"]
    print(f"decontamination: {decontam['dropped_records']} records dropped; not planted solutions: "
          f"{decontam['dropped_not_planted'] or 0}; planted solutions caught: {decontam['planted_dropped']} of "
          f"{decontam['planted_files']} (their records left in the output: {decontam['planted_records_in_output']})")
    checked = result["licences_checked"]
    wrong = {name: v for name, v in checked.items() if v["expected"] != v["found"]}
    print(f"licences: {len(checked) - len(wrong)} of {len(checked)} as in the README table of --src"
          + (f"; wrong: {wrong}" if wrong else "") if checked else "licences: not checked (--src has no README table)")
    print(f"checks: {result['checks']}")


if __name__ == "__main__":
    app.run(main)
