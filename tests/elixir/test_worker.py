"""devstral_jax.elixir.worker against a real `elixir`: the protocol, errors, crashes, timeouts, the pool."""

import threading

import pytest

from devstral_jax.elixir.terms import Atom, decode_term, encode_term
from devstral_jax.elixir.worker import ElixirPool, ElixirWorker, WorkerCrashed, WorkerError, WorkerTimeout

SERVER = r"""
ElixirWorker.serve(fn
  %{"op" => "echo", "value" => value} -> value
  %{"op" => "inspect", "value" => value} -> inspect(value)
  %{"op" => "noisy"} -> IO.puts("to stdout"); :erlang.display(:raw_display); IO.puts(:stderr, "to stderr"); :quiet
  %{"op" => "raise"} -> raise ArgumentError, "bad request"
  %{"op" => "halt"} -> System.halt(7)
  %{"op" => "sleep", "ms" => ms} -> Process.sleep(ms); :slept
  %{"op" => "pid"} -> System.pid()
  %{"op" => "atoms"} -> [:ok, nil, true, false, :"with space"]
end)
"""

VALUES = [0, 255, 256, -1, 2**31 - 1, -2**31, 2**31, -2**64 - 5, 10**40, 1.5, -0.25, "", "héllo ☃", b"\xff\x00",
          [], [1, [2, [3]]], (1, "two", None), {"k": [True, False, None], "nested": {"x": (1,)}}, list(range(300))]


@pytest.fixture
def server(tmp_path):
    path = tmp_path / "server.exs"
    path.write_text(SERVER)
    return path


def test_terms_survive_the_round_trip_through_elixir(server):
    worker = ElixirWorker(server)
    try:
        for value in VALUES:
            assert worker.call({"op": "echo", "value": value}, timeout=30) == value
        # Elixir sees the types we mean: binaries, tuples, maps, nil.
        assert worker.call({"op": "inspect", "value": {"a": (1, "x", None)}}, timeout=30) == '%{"a" => {1, "x", nil}}'
        assert worker.call({"op": "atoms"}, timeout=30) == ["ok", None, True, False, "with space"]
        assert isinstance(worker.call({"op": "atoms"}, timeout=30)[0], Atom)
    finally:
        worker.close()


def test_codec_matches_term_to_binary_byte_for_byte(server):
    worker = ElixirWorker(server)
    try:
        # :erlang.term_to_binary of %{"a" => [1, 2.5]} as Elixir encodes it, decoded by us.
        assert decode_term(encode_term({"a": [1, 2.5]})) == {"a": [1, 2.5]}
        assert worker.call({"op": "echo", "value": encode_term([1, "x"])}, timeout=30) == encode_term([1, "x"])
    finally:
        worker.close()


def test_printing_cannot_corrupt_the_protocol(server):
    worker = ElixirWorker(server)
    try:
        assert worker.call({"op": "noisy"}, timeout=30) == "quiet"
        assert worker.call({"op": "echo", "value": 5}, timeout=30) == 5
    finally:
        worker.close()
    assert "to stdout" in worker.log_tail() and "to stderr" in worker.log_tail()


def test_a_raising_request_leaves_the_worker_serving(server):
    worker = ElixirWorker(server)
    try:
        first_pid = worker.call({"op": "pid"}, timeout=30)
        with pytest.raises(WorkerError, match="ArgumentError.*bad request"):
            worker.call({"op": "raise"}, timeout=30)
        assert worker.call({"op": "pid"}, timeout=30) == first_pid
    finally:
        worker.close()


def test_pool_restarts_a_crashed_worker_and_retries_once(server):
    with ElixirPool(server, size=1, timeout=30) as pool:
        first_pid = pool.call({"op": "pid"})
        with pytest.raises(WorkerCrashed, match="exited \\(status 7\\)"):
            pool.call({"op": "halt"})
        assert pool.restarts == 2  # the crash, then the retry's crash
        assert pool.call({"op": "pid"}) != first_pid


def test_timeout_kills_the_worker_and_the_next_request_gets_a_fresh_one(server):
    with ElixirPool(server, size=1, timeout=30) as pool:
        first_pid = pool.call({"op": "pid"})
        with pytest.raises(WorkerTimeout):
            pool.call({"op": "sleep", "ms": 20_000}, timeout=0.5)
        assert pool.call({"op": "pid"}) != first_pid


def test_pool_serves_threads_in_parallel_and_recycles_workers(server):
    with ElixirPool(server, size=2, timeout=30, max_requests=5) as pool:
        results, pids = {}, set()

        def ask(i):
            results[i] = pool.call({"op": "echo", "value": i})
            pids.add(pool.call({"op": "pid"}))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == {i: i for i in range(12)}
        assert len(pids) > 2  # 24 requests over 2 workers that restart every 5


def test_missing_script_and_missing_elixir_are_clear_errors(tmp_path, server):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ElixirWorker(tmp_path / "nope.exs")
    with pytest.raises(WorkerCrashed, match="not installed"):
        ElixirWorker(server, elixir="no-such-elixir-binary").call({"op": "pid"}, timeout=5)


def test_a_script_that_does_not_compile_reports_its_error(tmp_path):
    broken = tmp_path / "broken.exs"
    broken.write_text("ElixirWorker.serve(fn x -> x end\n")
    worker = ElixirWorker(broken)
    with pytest.raises(WorkerCrashed, match="(?s)broken.exs exited.*TokenMissingError"):
        worker.call({"op": "echo"}, timeout=30)
