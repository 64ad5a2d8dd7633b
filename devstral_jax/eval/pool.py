"""The Elixir execution pool: long-lived, sandboxed BEAM workers that run programs and return verdicts.

Starting a VM per program (`elixir file.exs`, MultiPL-E's way) costs ~0.3 s; a worker starts once and runs
hundreds of programs, each in fresh processes, cleaning up after each (executor.exs). What the program may
not do is enforced twice: inside the VM (time limit, per-process heap limit, cleanup) and by the OS around
it (sandbox.py). A worker whose VM exits (System.halt, :init.stop, out of memory), times out, or cannot be
cleaned is replaced, and the program that did it gets a failing verdict.

The samples of one problem share their tests: `run` gives all programs with the same tests to one worker,
which compiles the test module once and reuses it wherever that provably runs the same program
(DevstralEval.TestCache in executor.exs); `Verdict.cache` says what happened to each program.

    with ExecutionPool() as pool:
        verdicts = pool.run([Program(prompt + completion + "\\n" + tests)])
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from devstral_jax.elixir.worker import ElixirPool, ElixirWorker, WorkerCrashed, WorkerError, WorkerTimeout
from devstral_jax.errors import ConfigError
from devstral_jax.eval.sandbox import Limits, Sandbox, SandboxUnavailable, make_sandbox
from devstral_jax.eval.verdict import (
    COMPILE_ERRORS,
    Program,
    Verdict,
    multipl_e_status,
    raised_exception,
    solution_warnings,
)

SERVER = Path(__file__).with_name("executor.exs")
# The sandbox mounts fresh, empty filesystems over these: a checkout living under one is invisible inside.
_MASKED_BY_SANDBOX = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/lock/")
_WORDS = 1024 * 1024 // 8  # Erlang heap words per MB

log = logging.getLogger(__name__)


class ExecutionPool:
    """`size` sandboxed workers (default: one per core). Thread-safe; `run` keeps them all busy."""

    def __init__(self, size: int | None = None, *, timeout: float = 5.0, limits: Limits = Limits(),
                 sandbox: str = "required", programs_per_worker: int = 500, boot_grace: float = 30.0,
                 reuse_tests: bool = True):
        """`timeout`: seconds a program may run (MultiPL-E: 5 s for `elixir file.exs`, VM start included).
        `sandbox`: "required" (raise SandboxUnavailable where the OS sandbox can't be had), "best_effort"
        (then run with rlimits only, with a warning) or "off" (see sandbox.py).
        `programs_per_worker`: a worker is restarted after this many, bounding what a VM accumulates (atoms).
        `boot_grace`: extra seconds the host waits for a worker before declaring it hung (a VM start included).
        `reuse_tests`: reuse a problem's compiled test module where that provably changes nothing (False:
        compile every program whole)."""
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {timeout}.")
        self.timeout = timeout
        self.limits = limits
        self.boot_grace = boot_grace
        self.reuse_tests = reuse_tests
        self.cache_counts: collections.Counter[str] = collections.Counter()  # Verdict.cache values, and "prepared"
        self._counts_lock = threading.Lock()
        self._staging = _staging_dir() if sandbox != "off" else None
        server = SERVER
        if self._staging is not None:
            server = self._staging / SERVER.name
            shutil.copyfile(SERVER, server)
            server.chmod(0o644)
        try:
            self.sandbox: Sandbox = make_sandbox(limits, mode=sandbox, readable=(str(server),))
        except (SandboxUnavailable, ValueError):
            self._remove_staging()
            raise
        for warning in self.sandbox.warnings:
            log.warning(warning)
        self.restarts = 0
        self._pool = ElixirPool(server, size or os.cpu_count() or 1, args=(self.sandbox.scratch,), timeout=None,
                                retries=0, max_requests=programs_per_worker, launcher=self.sandbox.launcher,
                                env=self.sandbox.env)

    @property
    def size(self) -> int:
        return self._pool.size

    def run(self, programs: Sequence[Program], progress: str | None = None) -> list[Verdict]:
        """Verdicts for `programs`, in order; `progress` labels a tqdm bar. Programs with the same tests run on
        one worker, one after another, so it compiles their test module once."""
        groups: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        for group in _same_tests(programs):
            groups.put(group)
        shared = _shared_test_modules(programs)
        verdicts: list[Verdict | None] = [None] * len(programs)
        with tqdm(total=len(programs), desc=progress, disable=progress is None, unit="program") as bar:
            def work() -> None:
                while True:
                    try:
                        group = groups.get_nowait()
                    except queue.Empty:
                        return
                    with self._pool.borrow() as worker:
                        for index in group:
                            verdicts[index] = self._run_on(worker, programs[index], reuse_expected=index in shared)
                            bar.update()

            with concurrent.futures.ThreadPoolExecutor(self.size) as threads:
                for future in [threads.submit(work) for _ in range(self.size)]:
                    future.result()
        return verdicts

    def run_one(self, program: Program) -> Verdict:
        with self._pool.borrow() as worker:
            return self._run_on(worker, program)

    def _run_on(self, worker: ElixirWorker, program: Program, reuse_tests: bool | None = None,
                reuse_expected: bool = False) -> Verdict:
        """`reuse_expected`: a later program on this worker has the same tests at the same line (the worker then
        prepares their module for reuse)."""
        reuse_tests = self.reuse_tests if reuse_tests is None else reuse_tests
        nonce = secrets.token_hex(16)
        request = {"op": "run", "source": program.source, "file": program.file_name, "solution": program.solution,
                   "completion": program.completion, "tests": program.tests, "reuse_tests": reuse_tests,
                   "reuse_expected": reuse_expected, "timeout_ms": int(self.timeout * 1000),
                   "heap_words": self.limits.heap_mb * _WORDS, "nonce": nonce}
        started = time.perf_counter()
        try:
            reply = worker.call(request, timeout=self.timeout + self.boot_grace)
        except WorkerTimeout:
            self._replace(worker, "it stopped answering")
            return _failure("Timeout", "timeout (worker unresponsive)", time.perf_counter() - started)
        except WorkerCrashed as crash:
            self._replace(worker, "its VM exited")
            return _failure("Exception", "VM exited", time.perf_counter() - started, stderr=str(crash))
        except WorkerError as error:  # the server itself failed on this program: report it, keep going
            log.warning("The execution server failed on %s: %s", program.file_name, error)
            self._replace(worker, "the server failed")
            return _failure("Exception", "executor error", time.perf_counter() - started, stderr=str(error))
        if not isinstance(reply, dict) or reply.get("nonce") != nonce:
            self._replace(worker, "its reply was forged")
            return _failure("Exception", "forged reply", time.perf_counter() - started)
        if reply["retire"]:
            self._replace(worker, reply["retire"])
        self._count(reply)
        if reply.get("retry"):  # a reused test module may not apply: the program runs again, whole
            return dataclasses.replace(self._run_on(worker, program, reuse_tests=False), cache="fallback")
        return _verdict(reply, program, time.perf_counter() - started)

    def _count(self, reply: dict) -> None:
        with self._counts_lock:
            self.cache_counts[reply.get("cache", "off")] += 1
            self.cache_counts["prepared"] += bool(reply.get("prepared"))

    def _replace(self, worker: ElixirWorker, reason: str) -> None:
        """Kills `worker` and starts a fresh VM in its place (it boots while other workers run)."""
        log.info("Restarting an execution worker: %s.", reason)
        self.restarts += 1
        worker.close(kill=True)
        worker.start()

    def close(self) -> None:
        self._pool.close()
        self.sandbox.cleanup()
        self._remove_staging()

    def _remove_staging(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> ExecutionPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _same_tests(programs: Sequence[Program]) -> list[list[int]]:
    """Indices of `programs` grouped by their tests (first-seen order); programs without tests run alone."""
    groups: dict[object, list[int]] = {}
    for index, program in enumerate(programs):
        groups.setdefault(program.tests if program.tests is not None else ("alone", index), []).append(index)
    return list(groups.values())


def _shared_test_modules(programs: Sequence[Program]) -> set[int]:
    """Indices of programs whose tests (at the same line) a later program has too: their test module would be
    compiled the same, so preparing it for reuse pays."""
    seen: set[tuple[str, int]] = set()
    shared = set()
    for index in reversed(range(len(programs))):
        program = programs[index]
        if program.tests is None:
            continue
        key = (program.tests, program.source.count("\n") - program.tests.count("\n"))
        if key in seen:
            shared.add(index)
        seen.add(key)
    return shared


def _staging_dir() -> Path | None:
    """A root-owned, world-readable directory outside /tmp for the server script, when the checkout lives
    somewhere the sandbox hides (e.g. a clone under /tmp); None when the script is visible where it is."""
    if not str(SERVER.resolve()).startswith(_MASKED_BY_SANDBOX) or os.geteuid() != 0 or not os.path.isdir("/var/lib"):
        return None
    staging = Path(tempfile.mkdtemp(prefix="devstral-eval-", dir="/var/lib"))
    staging.chmod(0o755)
    return staging


def _verdict(reply: dict, program: Program, seconds: float) -> Verdict:
    stdout, stderr = reply["stdout"], reply["stderr"]
    output = stdout + stderr
    compiled = reply["load_error"] not in COMPILE_ERRORS
    solution_lines = program.solution.count("\n") + 1 if program.solution else 0
    warnings = solution_warnings(stderr, program.file_name, solution_lines) if compiled and program.solution else 0
    if reply["redefined"]:  # it may have rewritten the test runner: its result can't be trusted
        status, error, exit_code = "Exception", f"redefined {', '.join(reply['redefined'])}", 1
    elif reply["timed_out"]:
        status, error, exit_code = "Timeout", "timeout", None
    else:
        exit_code = reply["exit_code"]
        status = multipl_e_status(exit_code, output)
        error = None if status == "OK" else ("heap limit" if reply["killed"] == ":killed" else
                                            reply["load_error"] or raised_exception(output) or status)
    return Verdict(status=status, exit_code=exit_code, error=error, compiled=compiled, warnings=warnings,
                   formatted=reply.get("formatted"), seconds=seconds, stdout=stdout, stderr=stderr,
                   cache=reply["cache"])


def _failure(status: str, error: str, seconds: float, stderr: str = "") -> Verdict:
    return Verdict(status=status, exit_code=None if status == "Timeout" else 1, error=error, compiled=True,
                   warnings=0, formatted=None, seconds=seconds, stderr=stderr)
