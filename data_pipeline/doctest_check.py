"""Which doctest records to keep: those the package itself runs, and whose generated tests pass here.

A doc's `iex>` examples are only as trustworthy as the package's care for them: many sketch a session
(`conn`, `Repo`, `...`) or call a live service, and their projects never run them. So, package by package:

  declared  the package's test files run the module's doctests (`doctest Mod`, honouring `only:`/`except:`);
            the installed Elixir's own modules (the otp_docs source) are doctested by Elixir's own suite;
  run       where the package compiles on its own (its mix.exs names no runtime dependency, and its lib/**/*.ex
            compiles; the installed Elixir's modules need no compiling), its generated test modules run against
            that code in the sandboxed execution pool (devstral_jax/eval/pool.py), one program per batch
            (doctest_check.exs). A test that needs a module or a file that is not there (code built from
            .xrl/.erl sources, a test fixture) could not be run; any other failure is a failure.

A function's doctest records (its `doctest_tests` module and its `doctest_value` questions) are kept when it
is declared and its tests did not fail, or, for a package that ships no tests at all (most Hex tarballs), when
its tests ran and passed. Results are cached per package under output_dir/work/doctests/, keyed by everything
that shapes them, so a rerun runs only what changed.

A package's check starts as soon as its units are collected (`Check.listed`/`collected`), while the rest of
the corpus is still being parsed. The pool's VMs (one per worker) start when the first doctest test is
collected (in a first run; a rerun, whose checks are mostly cached, starts them when one is needed), so they
boot beside the parsing, and each has a scheduler per core: a package compiles in parallel when it is the
only one left to check. `Check.verdicts` then decides every package from the checkpoints: with
the result of its early run where that ran on exactly the material the checkpoints hold (the same cache key),
else from the cache, else by running it now.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

from data_pipeline.instruct import FileRecords
from data_pipeline.newer_syntax import installed_elixir
from devstral_jax.atomic import atomic_write
from devstral_jax.elixir.parse import DoctestDeclaration
from devstral_jax.elixir.quote import string_literal
from devstral_jax.errors import SandboxUnavailable
from devstral_jax.eval.pool import ExecutionPool
from devstral_jax.eval.sandbox import Limits
from devstral_jax.eval.verdict import Program, Verdict

log = logging.getLogger(__name__)

PROGRAM = Path(__file__).with_name("doctest_check.exs")
_VERSION = 2  # bump when what a check computes changes: cached results are then redone (2: VMs on every core)
# `{:name, "~> 1.0", opts}` in a mix.exs (a requirement may also be a call, or a git/path source)
_DEPENDENCY = re.compile(r"\{\s*:(\w+)\s*,\s*(\"[^\"]*\"|\w+\(\)|(?:git|github|path):)([^{}]*)\}")
_NOT_AT_RUNTIME = re.compile(r"optional:\s*true|runtime:\s*false|only:\s*(:(dev|test|docs)\b|\[[^\]]*\])")
_FENCED = re.compile(r"\A```elixir\n(.*)\n```\Z", re.S)
_VERDICT = re.compile(
    r"^doctest-check (?:not-compiled .*|(?P<id>\S+) (?P<verdict>passed|failed|missing) ?(?P<reason>.*))$", re.M)

NOT_DECLARED = "not run by the package's tests"
NO_TESTS = "the package ships no tests and its doctests could not be run here"
FAILED = "failed against the package's code"
MISSING = "not run: needs a module or a file that is not there"


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    enabled: bool  # False: keep every doctest record, run nothing
    sandbox: str  # the execution pool's sandbox mode: required | best_effort | off
    timeout_s: float  # per program (a package compile and a batch of test modules)
    tests_per_program: int


def facts(made: FileRecords) -> dict[str, Any]:
    """What a file's checkpoint entry keeps for the check: the subject of each doctest record, and a test
    file's `doctest Mod` declarations."""
    out: dict[str, Any] = {}
    if made.doctest_subjects:
        out["doctest_subjects"] = {record_id: list(subject) for record_id, subject in made.doctest_subjects.items()}
    if made.doctested:
        out["doctested"] = [{"module": d.module, "only": d.only and [list(p) for p in d.only],
                             "except": [list(p) for p in d.excluded]} for d in made.doctested]
    return out


@dataclasses.dataclass
class Package:
    """One package's material for the check, gathered from its units' checkpoints."""

    key: tuple[str, str, str]  # (source kind, package, version)
    declarations: list[DoctestDeclaration] = dataclasses.field(default_factory=list)
    has_tests: bool = False
    lib: dict[str, str] = dataclasses.field(default_factory=dict)  # lib/**/*.ex path -> source
    mix_exs: str = ""
    subjects: dict[str, tuple[str, str, int]] = dataclasses.field(default_factory=dict)  # record id -> subject
    tests: dict[str, str] = dataclasses.field(default_factory=dict)  # doctest_tests record id -> test module

    @property
    def installed(self) -> bool:
        """The installed Elixir's own modules: doctested by Elixir's suite, already compiled."""
        return self.key[0] == "otp_docs"

    def declared(self, subject: tuple[str, str, int]) -> bool:
        return self.installed or any(d.covers(*subject) for d in self.declarations)


@dataclasses.dataclass
class Verdicts:
    """The outcome: the doctest records to drop, and the figures for the manifest."""

    dropped: dict[str, str] = dataclasses.field(default_factory=dict)  # record id -> reason
    packages: dict[str, collections.Counter] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(collections.Counter))

    def summary(self) -> dict[str, Any]:
        """Counts of doctest_tests records: kept, run, passed, dropped by reason, not run by reason (kept
        unverified), and the doctest_value records dropped with them; in total and per package."""
        total = sum(self.packages.values(), collections.Counter())
        packages = {name: _figures(counts) for name, counts in sorted(self.packages.items())}
        return {**_figures(total), "packages": packages}


def _figures(counts: collections.Counter) -> dict[str, Any]:
    def by(prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: n for k, n in sorted(counts.items()) if k.startswith(prefix)}
    return {"kept": counts["kept"], "run": counts["run"], "passed": counts["passed"],
            "dropped_by_reason": by("dropped:"), "not_run_by_reason": by("not run:"),
            "values_dropped": counts["values_dropped"]}


class Check:
    """The doctest check of one run (see the module docstring): started early, package by package, in background
    threads that wait on the execution pool; `verdicts` gives the outcome. Use it as a context manager."""

    def __init__(self, config: CheckConfig, workers: int, output: Path):
        self.config = config
        self.cache = output / "work" / "doctests"
        self.cache.mkdir(parents=True, exist_ok=True)
        self._runner = _Runner(config, workers)
        self._background = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="doctest-check")
        self._early: dict[str, concurrent.futures.Future] = {}  # cache key -> the package's early run
        self._gathering: dict[tuple[str, str, str], _Gathering] = {}
        self._last_listed: tuple[str, str, str] | None = None
        # A first run (nothing cached) starts the VMs at its first doctest test; a rerun, when a check needs them.
        self._boot_early = not any(self.cache.glob("*.json"))

    # The collect loop's calls (all on its event-loop thread). A source lists a package's units one after another,
    # so a package is complete once a unit of another package is listed, or the listing ends, and every unit of
    # it was collected in this run (one saved by an earlier run leaves the package to `verdicts`).

    def listed(self, package: tuple[str, str, str], saved: bool) -> None:
        """A unit of `package` is listed; `saved`: its result is a checkpoint from an earlier run."""
        if not self.config.enabled:
            return
        if package != self._last_listed:
            self._listing_passed(self._last_listed)
            self._last_listed = package
        gathering = self._gathering.setdefault(package, _Gathering(Package(package)))
        gathering.waiting += 1
        gathering.saved |= saved

    def collected(self, result: dict[str, Any]) -> None:
        """A unit listed as not saved was processed in this run."""
        gathering = self._gathering.get(_package_key(result))
        if gathering is None:
            return
        for file in result["files"]:
            if file["status"] == "kept":
                _gather(gathering.package, file)
        gathering.waiting -= 1
        if gathering.package.tests and self._boot_early:
            self._boot_early = False
            self._background.submit(self._runner.started)  # they boot while the collection goes on
        self._start_if_complete(gathering)

    def listing_done(self) -> None:
        self._listing_passed(self._last_listed)
        self._last_listed = None

    def _listing_passed(self, package: tuple[str, str, str] | None) -> None:
        if (gathering := self._gathering.get(package)) is not None:
            gathering.listed_all = True
            self._start_if_complete(gathering)

    def _start_if_complete(self, gathering: _Gathering) -> None:
        if not gathering.listed_all or gathering.waiting:
            return
        package = self._gathering.pop(gathering.package.key).package
        if gathering.saved or not package.subjects or _cached(self.cache, package) is not None:
            return
        if (key := _cache_key(package)) not in self._early:
            self._early[key] = self._background.submit(lambda: self._run_and_cache([package])[0])

    def verdicts(self, results: Iterable[dict[str, Any]]) -> Verdicts:
        """Keeps or drops the doctest records of every package in the units' `results` (checkpoints, in unit-id
        order). Packages are read one at a time and run a few at a time, so only those waiting to run are held in
        memory."""
        verdicts = Verdicts()
        pending: list[Package] = []
        for package in _packages(results):
            if not package.subjects:
                continue
            if not self.config.enabled:
                verdicts.packages[package.key[1]]["kept"] += len(package.tests)
            elif (early := self._early.get(_cache_key(package))) is not None:
                _decide(package, early.result(), verdicts)
            elif (result := _cached(self.cache, package)) is not None:
                _decide(package, result, verdicts)
            else:
                pending.append(package)
            if len(pending) >= 4 * self._runner.workers:
                self._run_pending(pending, verdicts)
        self._run_pending(pending, verdicts)
        return verdicts

    def _run_pending(self, pending: list[Package], verdicts: Verdicts) -> None:
        for package, result in zip(pending, self._run_and_cache(pending)):
            _decide(package, result, verdicts)
        pending.clear()

    def _run_and_cache(self, packages: list[Package]) -> list[dict[str, Any]]:
        results = self._runner.run(packages)
        for package, result in zip(packages, results):
            if result["cacheable"]:
                atomic_write(self.cache / f"{_cache_key(package)}.json", json.dumps(result).encode())
        return results

    def __enter__(self) -> Check:
        return self

    def __exit__(self, *exc) -> None:
        """Waits for the early runs (when the run ends on an error, only for those already running)."""
        self._background.shutdown(wait=True, cancel_futures=exc[0] is not None)
        self._runner.close()


@dataclasses.dataclass
class _Gathering:
    """A package whose units are being collected."""

    package: Package
    waiting: int = 0  # units listed and not collected yet
    saved: bool = False  # some unit's result comes from an earlier run
    listed_all: bool = False


def _package_key(result: dict[str, Any]) -> tuple[str, str, str]:
    return result["unit"]["kind"], result["unit"]["package"], result["unit"]["version"]


def _packages(results: Iterable[dict[str, Any]]) -> Iterator[Package]:
    """A package per run of consecutive units with the same (kind, package, version): unit ids sort that way."""
    for key, units in itertools.groupby(results, key=_package_key):
        package = Package(key)
        for result in units:
            for file in result["files"]:
                if file["status"] == "kept":
                    _gather(package, file)
        yield package


def _gather(package: Package, file: dict[str, Any]) -> None:
    package.declarations += [DoctestDeclaration(d["module"], d["only"] and tuple(map(tuple, d["only"])),
                                                tuple(map(tuple, d["except"]))) for d in file.get("doctested", [])]
    subjects = file.get("doctest_subjects", {})
    for entry in file["records"]:
        record = entry["record"]
        if record["task"] == "test_file":
            package.has_tests = True
        elif record["task"] == "file" and file["path"].startswith("lib/") and file["path"].endswith(".ex"):
            package.lib[file["path"]] = record["text"]
        elif record["task"] == "file" and file["path"] == "mix.exs":
            package.mix_exs = record["text"]
        elif record["id"] in subjects:
            package.subjects[record["id"]] = tuple(subjects[record["id"]])
            if record["task"] == "doctest_tests":
                package.tests[record["id"]] = _FENCED.match(record["messages"][1]["content"])[1]


def _wanted(package: Package) -> dict[str, str]:
    """The test modules worth running: those of declared functions, or all of them when the package has no tests."""
    return {record_id: source for record_id, source in package.tests.items()
            if not package.has_tests or package.declared(package.subjects[record_id])}


def _cache_key(package: Package) -> str:
    material = [_VERSION, _elixir_version(), package.installed, package.mix_exs, sorted(package.lib.items()),
                sorted(_wanted(package).items())]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:32]


def _cached(cache: Path, package: Package) -> dict[str, Any] | None:
    if not _wanted(package):
        return {"results": {}}
    path = cache / f"{_cache_key(package)}.json"
    return json.loads(path.read_text()) if path.exists() else None


@functools.cache
def _elixir_version() -> str:
    return installed_elixir()  # `elixir --short-version` reads it from a file: no VM to start


def runtime_dependencies(mix_exs: str) -> list[str]:
    """The packages a mix.exs needs at run time: its `{:name, requirement, opts}` entries that are not optional,
    `runtime: false` or `only:` dev/test/docs."""
    return sorted({match[1] for match in _DEPENDENCY.finditer(mix_exs) if not _NOT_AT_RUNTIME.search(match[3])
                   or ":prod" in match[3]})


class _Runner:
    """Runs packages' test modules in the execution pool, started on first use (most reruns need none)."""

    def __init__(self, config: CheckConfig, workers: int):
        self.config = config
        self.workers = workers
        self._pool: ExecutionPool | None = None
        self._unavailable: str | None = None
        self._lock = threading.Lock()  # `run` is called from several threads

    def run(self, packages: list[Package]) -> list[dict[str, Any]]:
        """Each package's result: {"results": {record id: "passed" | "failed: why" | "not run: why"},
        "cacheable": whether it may be reused (not when the pool could not say)}."""
        results: list[dict[str, Any]] = [{"results": {}, "cacheable": True} for _ in packages]
        batches = []
        for index, package in enumerate(packages):
            tests = sorted(_wanted(package).items())
            if dependencies := runtime_dependencies(package.mix_exs):
                results[index]["results"] = dict.fromkeys(dict(tests), "not run: depends on Hex packages")
                log.info("Not running %s's doctests: it depends on %s.", package.key[1], ", ".join(dependencies))
            else:
                batches += [(index, dict(chunk)) for chunk in _chunks(tests, self.config.tests_per_program)]
        if batches and (pool := self.started()) is None:
            for index, tests in batches:
                results[index]["results"].update(dict.fromkeys(tests, "not run: no sandbox"))
                results[index]["cacheable"] = False
        elif batches:
            programs = [_program(packages[index], tests) for index, tests in batches]
            verdicts = pool.run(programs, progress="doctests: run" if len(programs) > 1 else None)
            for (index, tests), verdict in zip(batches, verdicts):
                outcomes = _outcomes(tests, verdict)
                results[index]["results"].update(outcomes)
                results[index]["cacheable"] &= not any(o.startswith("not run: program") for o in outcomes.values())
        return results

    def started(self) -> ExecutionPool | None:
        """The execution pool, started on the first call; None where its sandbox cannot be had."""
        with self._lock:
            if self._pool is None and self._unavailable is None:
                try:  # a VM per core, each able to use them all (see the module docstring)
                    self._pool = ExecutionPool(self.workers, timeout=self.config.timeout_s,
                                               sandbox=self.config.sandbox, limits=Limits(schedulers=self.workers))
                except SandboxUnavailable as error:
                    self._unavailable = str(error)
                    log.warning("Doctests are not run (keeping those the packages declare): %s", error)
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def _outcomes(tests: dict[str, str], verdict: Verdict) -> dict[str, str]:
    found = {match["id"]: match for match in _VERDICT.finditer(verdict.stdout)}
    outcomes = {}
    for record_id in tests:
        if None in found:
            outcomes[record_id] = "not run: does not compile on its own"
        elif match := found.get(record_id):
            outcomes[record_id] = {"passed": "passed", "failed": f"failed: {match['reason']}",
                                   "missing": MISSING}[match["verdict"]]
        else:  # the program stopped before it could report (a timeout, the VM exited)
            outcomes[record_id] = f"not run: program {verdict.error or verdict.status}"
    return outcomes


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _program(package: Package, tests: dict[str, str]) -> Program:
    files = [] if package.installed else sorted(package.lib.items())
    renamed = [(record_id, re.sub(r"\Adefmodule \S+ do", f"defmodule DoctestCheck.Test{index} do", source))
               for index, (record_id, source) in enumerate(sorted(tests.items()))]
    data = (f"files = [{', '.join(f'{{{string_literal(p)}, {string_literal(s)}}}' for p, s in files)}]\n"
            f"tests = [{', '.join(f'{{{string_literal(i)}, {string_literal(s)}}}' for i, s in renamed)}]\n")
    return Program(source=data + PROGRAM.read_text(), file_name="doctest_check.exs")


def _decide(package: Package, run: dict[str, Any], verdicts: Verdicts) -> None:
    """Keeps or drops every doctest record of the package, a function's records together."""
    counts = verdicts.packages[package.key[1]]
    outcome_of = {package.subjects[record_id]: outcome for record_id, outcome in run["results"].items()}
    for record_id, subject in package.subjects.items():
        outcome = outcome_of.get(subject, "not run: not wanted")
        if outcome.startswith("failed"):
            reason = FAILED
        elif package.declared(subject):
            reason = None
        elif package.has_tests:
            reason = NOT_DECLARED
        else:
            reason = None if outcome == "passed" else NO_TESTS
        if reason:
            verdicts.dropped[record_id] = reason
        if record_id not in package.tests:
            counts["values_dropped"] += reason is not None
            continue
        counts["run"] += not outcome.startswith("not run")
        counts["passed"] += outcome == "passed"
        if reason:
            counts[f"dropped:{reason}"] += 1
        else:
            counts["kept"] += 1
            if outcome.startswith("not run"):
                counts[outcome.replace("not run: ", "not run:", 1)] += 1
