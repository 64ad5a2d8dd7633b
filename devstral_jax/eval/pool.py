"""The Elixir execution pool: long-lived, sandboxed BEAM workers that run programs and return verdicts.

Starting a VM per program (`elixir file.exs`, MultiPL-E's way) costs ~0.3 s; a worker starts once and runs
hundreds of programs, each in fresh processes, cleaning up after each (executor.exs). What the program may
not do is enforced twice: inside the VM (time limit, per-process heap limit, cleanup) and by the OS around
it (sandbox.py). A worker whose VM exits (System.halt, :init.stop, out of memory), times out, or cannot be
cleaned is replaced, and the program that did it gets a failing verdict.

    with ExecutionPool() as pool:
        verdicts = pool.run([Program(prompt + completion + "\\n" + tests)])
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import secrets
import shutil
import tempfile
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
                 sandbox: str = "required", programs_per_worker: int = 500, boot_grace: float = 30.0):
        """`timeout`: seconds a program may run (MultiPL-E: 5 s for `elixir file.exs`, VM start included).
        `sandbox`: "required" (raise SandboxUnavailable where the OS sandbox can't be had), "best_effort"
        (then run with rlimits only, with a warning) or "off" (see sandbox.py).
        `programs_per_worker`: a worker is restarted after this many, bounding what a VM accumulates (atoms).
        `boot_grace`: extra seconds the host waits for a worker before declaring it hung (a VM start included)."""
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {timeout}.")
        self.timeout = timeout
        self.limits = limits
        self.boot_grace = boot_grace
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
        """Verdicts for `programs`, in order; `progress` labels a tqdm bar."""
        with concurrent.futures.ThreadPoolExecutor(self.size) as threads:
            futures = [threads.submit(self.run_one, program) for program in programs]
            for _ in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc=progress,
                          disable=progress is None, unit="program"):
                pass
            return [future.result() for future in futures]

    def run_one(self, program: Program) -> Verdict:
        nonce = secrets.token_hex(16)
        request = {"op": "run", "source": program.source, "file": program.file_name, "solution": program.solution,
                   "completion": program.completion, "timeout_ms": int(self.timeout * 1000),
                   "heap_words": self.limits.heap_mb * _WORDS, "nonce": nonce}
        started = time.perf_counter()
        with self._pool.borrow() as worker:
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
        return _verdict(reply, program, time.perf_counter() - started)

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
                   formatted=reply["formatted"], seconds=seconds, stdout=stdout, stderr=stderr)


def _failure(status: str, error: str, seconds: float, stderr: str = "") -> Verdict:
    return Verdict(status=status, exit_code=None if status == "Timeout" else 1, error=error, compiled=True,
                   warnings=0, formatted=None, seconds=seconds, stderr=stderr)
