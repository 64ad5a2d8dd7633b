"""Kinds that are kept only after running them against their package in the sandboxed execution pool.

Per package (the units of one source kind, package and version), programs of verify.exs compile its lib (and
test/support) as a package, or each file on its own where the package does not compile without its
dependencies, and run:

  checks     the doc_to_impl, docs_specs and otp_design records of its files carry a Check (kinds/records.py):
             a module to compile (doc_to_impl: its answer with the definitions and function heads the request
             shows; otp_design: the module), a lib file that must compile and code that must read as Elixir
             (docs_specs), and the outcomes that keep it: otp_design only when it passed; docs_specs also when
             the file needs a dependency that is not here (its answer read as Elixir); doc_to_impl (kept before
             checks existed) unless its check failed. A record kept without passing is counted as unverified.
  repair     mutants of its lib functions (kinds/repair.py): compile errors in every lib file, test failures in
             the lib files its tests (its own test files, and the tests generated from its doctests) exercise.
  tests      each test file paired with the lib file it tests (kinds/tests_code.py), run against the package:
             a pair whose tests pass gives tests_from_code and code_from_tests records.

Results are cached per package under output_dir/work/verify/, keyed by everything the programs are given, so
a rerun runs only what changed. The manifest's `verified` gives, per kind, what was generated, run, passed,
kept and dropped (by reason), and the share of generated items that passed.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import itertools
import json
import logging
import random
import re
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from data_pipeline.instruct import FileRecords
from data_pipeline.kinds import tests_code
from data_pipeline.kinds.records import SNIPPET_MODULE
from data_pipeline.kinds.repair import repair_record
from devstral_jax.atomic import atomic_write
from devstral_jax.data.records import Record, Source
from devstral_jax.elixir.terms import decode_term, encode_term
from devstral_jax.errors import SandboxUnavailable
from devstral_jax.eval.pool import ExecutionPool
from devstral_jax.eval.verdict import Program

log = logging.getLogger(__name__)

PROGRAM = Path(__file__).with_name("verify.exs")
_VERSION = 1  # bump when what a program computes changes: cached results are then redone
_RESULT = re.compile(r"^kinds-check (\S+)$", re.M)
_FENCED = re.compile(r"\A```elixir\n(.*)\n```\Z", re.S)
_OUTPUT_BUDGET = 48_000  # bytes a program may print: the execution pool keeps the first 64 KiB
# Bytes of a compressed result, about the largest seen on the corpus of issue 12 (the average is a third).
_EXPECTED_OUTPUT = {"compile": 450, "file": 400, "parse": 110, "test": 700}
_MUTANT_OUTPUT = 900
_INCOMPLETE = re.compile(r"undefined function|undefined module attribute|cannot find or invoke local")

MISSING = "needs a module or a file that is not here"
NOT_RUN = "not run"
KINDS = ("doc_to_impl", "docs_specs", "otp_design", "repair_compile", "repair_test", "tests_from_code",
         "code_from_tests")


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    enabled: bool  # False: run nothing; records that need a check are dropped, none is made here
    sandbox: str  # the execution pool's sandbox mode: required | best_effort | off
    timeout_s: float  # per program
    test_timeout_ms: int  # per ExUnit test
    repair_compile_per_file: int  # compile-error mutants per lib file
    repair_test_per_file: int  # test-failure mutants per lib file
    repair_test_files: int  # lib files of a package mutated for test failures, at most
    repair_test_runs: int  # test files a mutant is run against, at most: its own first, then others, then doctests


def facts(made: FileRecords) -> dict[str, Any]:
    """What a file's checkpoint entry keeps for verification: its records' checks and the modules it defines."""
    out: dict[str, Any] = {"modules": list(made.modules)}
    if made.checks:
        out["checks"] = {record_id: check.to_dict() for record_id, check in made.checks.items()}
    return out


@dataclasses.dataclass
class Verified:
    """The outcome: per-file records to drop, records made here (by the file they belong to), the figures."""

    dropped: dict[str, str] = dataclasses.field(default_factory=dict)  # record id -> reason
    added: dict[tuple[str, str, str, str], list[Record]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list))  # (source kind, package, version, path) -> records
    counts: dict[tuple[str, str], collections.Counter] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(collections.Counter))  # (package, kind) -> figures
    compiled: dict[str, str] = dataclasses.field(default_factory=dict)  # package -> compiled | not compiled: why

    def summary(self) -> dict[str, Any]:
        """Per kind: generated, run, passed, kept, dropped by reason (and kept unverified by reason, files not
        mutated by reason); the share of generated items that passed; the same per package."""
        packages = sorted({package for package, _ in self.counts} | set(self.compiled))
        return {**_totals({kind: sum((self.counts[p, kind] for p in packages), collections.Counter())
                           for kind in KINDS}),
                "packages": {p: {"package": self.compiled.get(p), **_totals({k: self.counts[p, k] for k in KINDS})}
                             for p in packages}}


def _totals(counts: dict[str, collections.Counter]) -> dict[str, Any]:
    kinds = {kind: _figures(counter) for kind, counter in counts.items() if counter}
    generated = sum(k["generated"] for k in kinds.values())
    passed = sum(k["passed"] for k in kinds.values())
    return {"kinds": kinds, "generated": generated, "passed": passed,
            "passed_share": round(passed / generated, 4) if generated else None}


def _figures(counts: collections.Counter) -> dict[str, Any]:
    def by(prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: n for k, n in sorted(counts.items()) if k.startswith(prefix)}
    return {"generated": counts["generated"], "run": counts["run"], "passed": counts["passed"],
            "kept": counts["kept"], "dropped_by_reason": by("dropped:"), "unverified_by_reason": by("unverified:"),
            "not_mutated_by_reason": by("not mutated:")}


# --- a package's material ------------------------------------------------------------------------------------

@dataclasses.dataclass
class _File:
    path: str
    source: Source
    text: str
    test: bool
    modules: list[str]  # the modules it defines
    checks: dict[str, dict]  # record id -> Check as a dict
    tasks: dict[str, str]  # record id -> task
    doctest_tests: dict[str, str]  # doctest_tests record id -> its test module


@dataclasses.dataclass
class _Package:
    key: tuple[str, str, str]  # (source kind, package, version)
    files: dict[str, _File] = dataclasses.field(default_factory=dict)

    def lib(self) -> dict[str, _File]:
        """What compiles as the package: lib/**/*.ex (also inside an umbrella's apps) and test/support/**/*.ex."""
        return {p: f for p, f in self.files.items() if p.endswith(".ex") and (
            "lib" in PurePosixPath(p).parts[:-1] and not f.test or f.test and "support" in PurePosixPath(p).parts)}

    def tests(self) -> dict[str, _File]:
        return {p: f for p, f in self.files.items() if f.test and p.endswith(".exs")}


def _packages(results: Iterable[dict[str, Any]], doctests_dropped: dict[str, str]) -> Iterator[_Package]:
    """A package per run of consecutive units with the same (kind, package, version): unit ids sort that way."""
    def describe(result: dict[str, Any]) -> tuple[str, str, str]:
        return result["unit"]["kind"], result["unit"]["package"], result["unit"]["version"]

    for key, units in itertools.groupby(results, key=describe):
        package = _Package(key)
        for result in units:
            for file in result["files"]:
                if file["status"] == "kept":
                    package.files[file["path"]] = _file(file, doctests_dropped)
        yield package


def _file(entry: dict[str, Any], doctests_dropped: dict[str, str]) -> _File:
    records = [e["record"] for e in entry["records"]]
    text_record = next(r for r in records if r["kind"] == "text")
    return _File(path=entry["path"], source=Source(**text_record["source"]), text=text_record["text"],
                 test=text_record["task"] == "test_file", modules=entry.get("modules", []),
                 checks=entry.get("checks", {}), tasks={r["id"]: r["task"] for r in records},
                 doctest_tests={r["id"]: _FENCED.match(r["messages"][1]["content"])[1] for r in records
                                if r["task"] == "doctest_tests" and r["id"] not in doctests_dropped})


# --- jobs ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Plan:
    """A package's jobs, and what each record or pair waits for."""

    jobs: list[tuple] = dataclasses.field(default_factory=list)
    checks: dict[str, tuple[str, list[str]]] = dataclasses.field(default_factory=dict)  # record id -> (path, job ids)
    pairs: list[tuple[tests_code.Pair, str]] = dataclasses.field(default_factory=list)  # (pair, job id)
    mutations: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (job id, path, mode)
    tests: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # test id -> (path, source)


def _plan(package: _Package, config: VerifyConfig, seed: int) -> _Plan:
    plan = _Plan(tests={path: (path, f.text) for path, f in package.files.items() if f.test})
    for path, file in sorted(package.files.items()):  # `Mod.FunTest` each: numbered, as they share a name
        for index, (record_id, module_source) in enumerate(sorted(file.doctest_tests.items()), 1):
            renamed = re.sub(r"\Adefmodule (\S+)Test do", rf"defmodule \1Doctest{index}Test do", module_source)
            stem = PurePosixPath(path).stem
            plan.tests[f"doctest:{record_id}"] = (f"test/doctests/{stem}_doctest{index}_test.exs", renamed)
    _check_jobs(package, plan)
    lib = {path: f for path, f in package.lib().items() if not f.test}
    for pair in tests_code.pairs({p: f.modules for p, f in lib.items()},
                                 {p: f.modules for p, f in package.tests().items()}):
        plan.jobs.append(("test", f"t:{pair.test_path}", pair.test_path))
        plan.pairs.append((pair, f"t:{pair.test_path}"))
    for path in sorted(lib) if config.repair_compile_per_file else []:
        plan.jobs.append(("mutate", f"rc:{path}", path, "compile", config.repair_compile_per_file, seed, []))
        plan.mutations.append((f"rc:{path}", path, "compile"))
    targets = [(path, tests) for path in sorted(lib) if (tests := _exercising(plan, path, lib[path].modules))]
    random.Random(f"{seed}:{package.key}").shuffle(targets)
    for path, tests in sorted(targets[:config.repair_test_files]) if config.repair_test_per_file else []:
        plan.jobs.append(("mutate", f"rt:{path}", path, "test", config.repair_test_per_file, seed,
                          tests[:config.repair_test_runs]))
        plan.mutations.append((f"rt:{path}", path, "test"))
    return plan


def _check_jobs(package: _Package, plan: _Plan) -> None:
    """The jobs of the records' checks (a file compiled once for all its records)."""
    files_compiled: set[str] = set()
    for path, file in sorted(package.files.items()):
        for record_id, check in sorted(file.checks.items()):
            ids = []
            if check["compile"]:
                code = check["compile"].replace(f"defmodule {SNIPPET_MODULE} do",
                                                f"defmodule {SNIPPET_MODULE}{record_id} do", 1)
                plan.jobs.append(("compile", f"c:{record_id}", code))
                ids.append(f"c:{record_id}")
            if check["file"]:
                if check["file"] not in files_compiled:
                    plan.jobs.append(("file", f"f:{check['file']}", check["file"]))
                    files_compiled.add(check["file"])
                ids.append(f"f:{check['file']}")
            if check["parse"]:
                plan.jobs.append(("parse", f"p:{record_id}", check["parse"]))
                ids.append(f"p:{record_id}")
            plan.checks[record_id] = (path, ids)


def _exercising(plan: _Plan, path: str, modules: list[str]) -> list[str]:
    """The tests that name a module of the lib file `path`: its own test file first, then the package's other
    test files, then the tests made from its doctests."""
    found = [test_id for test_id, (_, source) in plan.tests.items()
             if (test_id.endswith("_test.exs") or test_id.startswith("doctest:"))
             and any(_mentions(source, module) for module in modules)]
    return sorted(found, key=lambda test_id: (tests_code.conventional_lib_path(test_id) != path,
                                              test_id.startswith("doctest:"), test_id))


def _mentions(source: str, module: str) -> bool:
    """Whether test code names `module`: in full, or in a multi-alias (`alias Parent.{Module, Other}`)."""
    parent, _, last = module.rpartition(".")
    return bool(re.search(rf"\b{re.escape(module)}\b", source) or parent and re.search(
        rf"\b{re.escape(parent)}\.\{{[^}}]*\b{re.escape(last)}\b", source))


def _batches(jobs: list[tuple]) -> list[list[tuple]]:
    """Jobs in programs whose output fits what the execution pool keeps, those that run tests first."""
    batches: list[list[tuple]] = [[]]
    size = 0
    for job in sorted(jobs, key=lambda job: not _testing(job)):
        expected = job[4] * _MUTANT_OUTPUT + 200 if job[0] == "mutate" else _EXPECTED_OUTPUT[job[0]]
        if batches[-1] and size + expected > _OUTPUT_BUDGET:
            batches.append([])
            size = 0
        batches[-1].append(job)
        size += expected
    return [batch for batch in batches if batch]


def _testing(job: tuple) -> bool:
    return job[0] == "test" or job[0] == "mutate" and job[3] == "test"


def _program(package: _Package, plan: _Plan, jobs: list[tuple], config: VerifyConfig) -> Program:
    testing = any(map(_testing, jobs))
    helper = next((f.text for p, f in package.files.items() if PurePosixPath(p).name == "test_helper.exs"), None)
    data = {"lib": [(path, f.text) for path, f in sorted(package.lib().items())],
            "tests": [(test_id, path, source) for test_id, (path, source) in sorted(plan.tests.items())] if testing
            else [],
            "helper": helper if testing else None, "test_timeout_ms": config.test_timeout_ms, "jobs": jobs}
    encoded = base64.b64encode(encode_term(data)).decode()
    return Program(source=f'input = "{encoded}"\n' + PROGRAM.read_text(), file_name="verify.exs")


# --- running -------------------------------------------------------------------------------------------------

def verify(config: VerifyConfig, max_chars: int, seed: int, workers: int, output: Path,
           results: Iterable[dict[str, Any]], doctests_dropped: dict[str, str], elixir: str) -> Verified:
    """Runs (or reads from the cache) every package's jobs and decides what is kept and made; `elixir` is the
    installed version (part of the cache key)."""
    verified = Verified()
    cache = output / "work" / "verify"
    cache.mkdir(parents=True, exist_ok=True)
    with _Runner(config, workers) as runner:
        for package in _packages(results, doctests_dropped):
            plan = _plan(package, config, seed)
            if not plan.jobs:
                continue
            batches = _batches(plan.jobs)
            programs = [_program(package, plan, batch, config) for batch in batches]
            key = hashlib.sha256(json.dumps([_VERSION, elixir, [p.source for p in programs]]).encode())
            path = cache / f"{key.hexdigest()[:32]}.json"
            if path.exists():
                run = json.loads(path.read_text())
            else:
                run = runner.run(programs, batches) if config.enabled else {
                    "results": {}, "cacheable": False, "error": "verification is off"}
                if run["cacheable"]:
                    atomic_write(path, json.dumps(run).encode())
            _decide(package, plan, run, max_chars, verified)
    return verified


class _Runner:
    """The execution pool, started on first use (a rerun that finds everything cached needs none)."""

    def __init__(self, config: VerifyConfig, workers: int):
        self.config = config
        self.workers = workers
        self._pool: ExecutionPool | None = None
        self._unavailable: str | None = None

    def run(self, programs: list[Program], batches: list[list[tuple]]) -> dict[str, Any]:
        """{"results": {job id: result}, "package": compiled | not compiled: why, "cacheable": whether every
        program reported on every job, "error": why one did not}."""
        if self._pool is None and self._unavailable is None:
            try:
                self._pool = ExecutionPool(self.workers, timeout=self.config.timeout_s, sandbox=self.config.sandbox)
            except SandboxUnavailable as error:
                self._unavailable = str(error)
                log.warning("Kinds that need running are not verified (their records are not kept): %s", error)
        if self._pool is None:
            return {"results": {}, "cacheable": False, "error": "no sandbox"}
        run: dict[str, Any] = {"results": {}, "cacheable": True, "error": None}
        verdicts = self._pool.run(programs, progress="verify: run" if len(programs) > 1 else None)
        for verdict, jobs in zip(verdicts, batches):
            for match in _RESULT.finditer(verdict.stdout):
                result = decode_term(zlib.decompress(base64.b64decode(match[1])))
                if result["id"] == "package":
                    run["package"] = result["status"]
                else:
                    run["results"][result["id"]] = result
            if verdict.status != "OK" or any(job[1] not in run["results"] for job in jobs):
                run["cacheable"] = False
                run["error"] = f"program {verdict.error or verdict.status}"
                log.warning("A verification program of %s stopped early: %s", jobs[0][1], verdict.stderr[-500:])
        return run

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.close()


# --- deciding ------------------------------------------------------------------------------------------------

def _decide(package: _Package, plan: _Plan, run: dict[str, Any], max_chars: int, verified: Verified) -> None:
    results = run["results"]
    not_run = f"{NOT_RUN}: {run.get('error') or 'the program stopped first'}"
    if "package" in run:
        verified.compiled[package.key[1]] = run["package"]
    for record_id, (path, job_ids) in plan.checks.items():
        file = package.files[path]
        kind, keep_if = file.tasks[record_id], file.checks[record_id]["keep_if"]
        counts = verified.counts[package.key[1], kind]
        counts["generated"] += 1
        outcome, output = _check_outcome({job_id: results.get(job_id) for job_id in job_ids})
        counts["run"] += outcome in ("passed", "failed", "unreadable")
        counts["passed"] += outcome == "passed"
        reason = {"failed": "does not compile", "unreadable": "does not read as Elixir", "missing": MISSING,
                  None: not_run}.get(outcome)
        if kind == "doc_to_impl" and outcome == "failed" and _INCOMPLETE.search(output):
            reason = "uses a function or attribute the request does not show"
        if (outcome or "not run") in keep_if:
            counts["kept"] += 1
            if outcome != "passed":
                counts[f"unverified:{reason}"] += 1
        else:
            verified.dropped[record_id] = reason
            counts[f"dropped:{reason}"] += 1
    for job_id, path, mode in plan.mutations:
        _mutants(package, results, job_id, path, mode, not_run, verified)
    for pair, job_id in plan.pairs:
        _pair(package, pair, results.get(job_id), max_chars, not_run, verified)


def _check_outcome(results: dict[str, dict | None]) -> tuple[str | None, str]:
    """passed | failed | unreadable | missing, or None when a job did not report; with the failure's output."""
    if any(r is None for r in results.values()):
        return None, ""
    for job_id, result in results.items():
        if result["status"] == "failed":
            return ("unreadable", "") if job_id.startswith("p:") else ("failed", result["output"])
    if any(r["status"] == "missing" for r in results.values()):
        return "missing", ""
    return "passed", ""


def _mutants(package: _Package, results: dict[str, Any], job_id: str, path: str, mode: str, not_run: str,
             verified: Verified) -> None:
    counts = verified.counts[package.key[1], f"repair_{mode}"]
    job = results.get(job_id)
    if job is None or job["status"] != "mutated":
        counts[f"not mutated:{job['status'] if job else not_run}"] += 1
        return
    file = package.files[path]
    for index in range(job["mutants"]):
        mutant = results.get(f"{job_id}:{index}")
        counts["generated"] += 1
        if mutant is None:
            counts[f"dropped:{not_run}"] += 1
            continue
        counts["run"] += 1
        if mutant["status"] != "verified":
            counts[f"dropped:{mutant['status']}"] += 1
            continue
        counts["passed"] += 1
        counts["kept"] += 1
        verified.added[(*package.key, path)].append(repair_record(file.source, file.text, mutant, mode))


def _pair(package: _Package, pair: tests_code.Pair, result: dict | None, max_chars: int, not_run: str,
          verified: Verified) -> None:
    lib, test = package.files[pair.lib_path], package.files[pair.test_path]
    made = tests_code.pair_records(pair, lib.source, lib.text, test.source, test.text, max_chars)
    status = result["status"] if result else None
    reason = {"passed": None, "failed": "the tests fail against the package here", "missing": MISSING,
              "not compiled": "the test file does not compile here", "no tests": "no test runs",
              "not run": f"{NOT_RUN}: {result.get('output') if result else ''}", None: not_run}[status]
    for kind in ("tests_from_code", "code_from_tests"):
        counts = verified.counts[package.key[1], kind]
        counts["generated"] += 1
        counts["run"] += status in ("passed", "failed")
        counts["passed"] += status == "passed"
        if reason:
            counts[f"dropped:{reason}"] += 1
        elif not made:
            counts["dropped:longer than instruct.max_context_chars"] += 1
        else:
            counts["kept"] += 1
    for made_record in made if reason is None else []:
        path = pair.test_path if made_record.task == "tests_from_code" else pair.lib_path
        verified.added[(*package.key, path)].append(made_record)
