"""Long-lived `elixir` processes that serve requests: the one mechanism for parsing and for running Elixir.

Starting a BEAM costs ~0.3 s, so a worker starts once and answers many requests. The Python side sends
a request, the `.exs` server script answers it:

    # server.exs -- runs inside the worker; `ElixirWorker.serve/1` is defined by this module.
    ElixirWorker.serve(fn %{"op" => "echo", "value" => v} -> v end)

    with ElixirPool("server.exs", size=2) as pool:
        pool.call({"op": "echo", "value": [1, "two"]})   # -> [1, 'two']

Protocol: each message is a 4-byte big-endian length followed by an Erlang external term
(`:erlang.term_to_binary/1`; terms.py says which Python values map to which terms). The frames travel on
two dedicated pipes, not on stdin/stdout, so that nothing the served code prints (IO.puts, Logger,
`:erlang.display/1`) can corrupt a frame; stdout and stderr are kept as a log tail for error messages.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import select
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from devstral_jax.elixir.terms import decode_term, encode_term

# Defines `ElixirWorker.serve/1` inside the worker; passed with `elixir -e` before the server script.
_SERVE_LOOP = r"""
defmodule ElixirWorker do
  @moduledoc "Answers framed requests from the Python side, one at a time, until the request pipe closes."

  def serve(handler) when is_function(handler, 1) do
    in_fd = String.to_integer(System.fetch_env!("ELIXIR_WORKER_IN_FD"))
    out_fd = String.to_integer(System.fetch_env!("ELIXIR_WORKER_OUT_FD"))
    port = Port.open({:fd, in_fd, out_fd}, [:binary, :eof, {:packet, 4}])
    loop(port, handler)
  end

  defp loop(port, handler) do
    receive do
      {^port, {:data, request}} ->
        reply =
          try do
            {:ok, handler.(:erlang.binary_to_term(request, [:safe]))}
          catch
            kind, reason -> {:error, Exception.format(kind, reason, __STACKTRACE__)}
          end

        Port.command(port, :erlang.term_to_binary(reply))
        loop(port, handler)

      {^port, :eof} ->
        System.halt(0)
    end
  end
end
"""

_LOG_LINES = 200


class WorkerError(RuntimeError):
    """The server script raised while handling a request; the worker itself is fine."""


class WorkerCrashed(RuntimeError):
    """The worker process died (or could not start) while handling a request."""


class WorkerTimeout(RuntimeError):
    """A request ran past its timeout; the worker was killed."""


class ElixirWorker:
    """One `elixir` process running `script`; not thread-safe (the pool gives each thread its own)."""

    def __init__(self, script: str | os.PathLike, args: Sequence[str] = (), *, elixir: str = "elixir",
                 launcher: Sequence[str] = (), env: Mapping[str, str] | None = None):
        """`launcher` is prepended to the `elixir` command line (e.g. a sandbox: `unshare ... setpriv ...`);
        `env` adds to (or overrides) the inherited environment."""
        self.script = Path(script)
        if not self.script.is_file():
            raise FileNotFoundError(f"Elixir server script {self.script} does not exist.")
        self.args = tuple(args)
        self.elixir = elixir
        self.launcher = tuple(launcher)
        self.env = dict(env or {})
        self._process: subprocess.Popen | None = None
        self._requests = None  # write end of the request pipe
        self._replies = -1  # read end of the reply pipe (raw fd)
        self._log: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        self._drain: threading.Thread | None = None
        self.requests_served = 0

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Starts the process; returns at once (the VM boots while the first request is on its way)."""
        self.close()
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        env = {**os.environ, **self.env, "ELIXIR_WORKER_IN_FD": str(request_r), "ELIXIR_WORKER_OUT_FD": str(reply_w)}
        command = [*self.launcher, self.elixir, "-e", _SERVE_LOOP, "-r", str(self.script), "--", *self.args]
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                pass_fds=(request_r, reply_w), env=env,
            )
        except FileNotFoundError:
            raise WorkerCrashed(f"`{self.elixir}` is not installed: install Elixir (apt-get install elixir).") from None
        finally:
            os.close(request_r)
            os.close(reply_w)
        self._requests = os.fdopen(request_w, "wb")
        self._replies = reply_r
        self._log.clear()
        self.requests_served = 0
        self._drain = threading.Thread(target=self._drain_output, args=(self._process, self._log), daemon=True)
        self._drain.start()

    @staticmethod
    def _drain_output(process: subprocess.Popen, log: collections.deque[str]) -> None:
        for line in process.stdout:
            log.append(line.decode("utf-8", "replace").rstrip("\n"))

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._log)[-lines:])

    def call(self, request: Any, timeout: float | None = None) -> Any:
        """Sends one request and returns the script's answer.

        Raises WorkerError when the script raised, WorkerTimeout (the worker is killed) when no answer
        came within `timeout` seconds, WorkerCrashed when the process died.
        """
        if not self.alive:
            self.start()
        payload = encode_term(request)
        try:
            self._requests.write(struct.pack(">I", len(payload)) + payload)
            self._requests.flush()
        except (BrokenPipeError, ValueError):
            raise self._crashed() from None
        deadline = None if timeout is None else time.monotonic() + timeout
        size = struct.unpack(">I", self._read_exactly(4, deadline))[0]
        status, value = decode_term(self._read_exactly(size, deadline))
        self.requests_served += 1
        if status == "error":
            raise WorkerError(value if isinstance(value, str) else repr(value))
        return value

    def _read_exactly(self, n: int, deadline: float | None) -> bytes:
        chunks, remaining = [], n
        while remaining:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._replies], [], [], wait)
            if not ready:
                self.close(kill=True)
                raise WorkerTimeout(f"{self.script.name}: no answer within the timeout; the worker was restarted.")
            chunk = os.read(self._replies, min(remaining, 1 << 20))
            if not chunk:
                raise self._crashed()
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _crashed(self) -> WorkerCrashed:
        process = self._process
        self.close()
        code = process.returncode if process else None
        tail = self.log_tail() or "(none)"
        return WorkerCrashed(f"{self.script.name} exited (status {code}). Its last output:\n{tail}")

    def close(self, kill: bool = False) -> None:
        """Ends the process: closing the request pipe makes the server halt; it is killed if it lingers."""
        if self._requests is not None:
            try:
                self._requests.close()
            except OSError:
                pass
            self._requests = None
        if self._replies >= 0:
            os.close(self._replies)
            self._replies = -1
        if self._process is not None:
            if kill:
                self._process.kill()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._drain is not None:
            self._drain.join(timeout=1)  # the last lines of output, for error messages
            self._drain = None


class ElixirPool:
    """`size` workers running the same server script; `call` is thread-safe and blocks for a free worker.

    A crashed worker is restarted and the request retried `retries` times; a timed-out request is not
    retried (it would most likely time out again). With `max_requests`, a worker is restarted after that
    many requests, which bounds what a long-lived VM accumulates (atoms, memory).
    """

    def __init__(self, script: str | os.PathLike, size: int, *, args: Sequence[str] = (), timeout: float | None = 60.0,
                 retries: int = 1, max_requests: int | None = None, elixir: str = "elixir",
                 launcher: Sequence[str] = (), env: Mapping[str, str] | None = None):
        if size < 1:
            raise ValueError(f"An Elixir pool needs at least one worker, got size={size}.")
        self.timeout = timeout
        self.retries = retries
        self.max_requests = max_requests
        self.restarts = 0
        self._idle: queue.Queue[ElixirWorker] = queue.Queue()
        self._workers = [ElixirWorker(script, args, elixir=elixir, launcher=launcher, env=env) for _ in range(size)]
        for worker in self._workers:
            worker.start()
            self._idle.put(worker)

    @property
    def size(self) -> int:
        return len(self._workers)

    def call(self, request: Any, timeout: float | None = None) -> Any:
        """Runs `request` on a free worker (see ElixirWorker.call for the errors raised)."""
        with self.borrow() as worker:
            for attempt in range(self.retries + 1):
                try:
                    return worker.call(request, self.timeout if timeout is None else timeout)
                except WorkerCrashed:
                    self.restarts += 1
                    if attempt == self.retries:
                        raise
                except WorkerTimeout:
                    self.restarts += 1
                    raise

    @contextlib.contextmanager
    def borrow(self) -> Iterator[ElixirWorker]:
        """One worker, exclusively, for callers that need more than `call`: e.g. to restart a worker
        (`worker.close(kill=True)`; the next call starts it again) whose answer shows it is unfit for reuse.
        `max_requests` applies as in `call`."""
        worker = self._idle.get()
        try:
            yield worker
        finally:
            if self.max_requests and worker.requests_served >= self.max_requests:
                worker.close()
            self._idle.put(worker)

    def close(self) -> None:
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> ElixirPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
