"""The execution pool against `elixir file.exs` (MultiPL-E's way), and against programs that attack it."""

import concurrent.futures
import os
import secrets
import socket
import subprocess
import threading

import pytest

from devstral_jax.eval.pool import ExecutionPool
from devstral_jax.eval.reference_run import run_elixir_file
from devstral_jax.eval.sandbox import Limits, SandboxUnavailable, make_sandbox
from devstral_jax.eval.verdict import Program

TIMEOUT = 3.0  # the pool fixture's


def test_verdicts_equal_multiple_running_elixir_file_exs(pool, problems, hand_written):
    programs = [problems[name].program(completion) for name, _, completion in hand_written]
    verdicts = pool.run(programs)
    # The VM start is in `elixir file.exs`'s time: give it room on a busy machine, except for the loops.
    timeouts = [TIMEOUT if kind == "infinite_loop" else 30.0 for _, kind, _ in hand_written]
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        reference = list(threads.map(lambda pt: run_elixir_file(*pt), zip(programs, timeouts)))
    for (name, kind, _), verdict, (status, exit_code, output) in zip(hand_written, verdicts, reference):
        assert (verdict.status, verdict.exit_code) == (status, exit_code), (name, kind, verdict, output[-1500:])
    kinds = {kind: verdict.status for (_, kind, _), verdict in zip(hand_written, verdicts)}
    # Every MultiPL-E label occurs, so the comparison above covered them all.
    assert kinds == {"correct": "OK", "wrong": "AssertionError", "syntax_error": "SyntaxError",
                     "missing_end": "Exception", "compile_error": "Exception", "raises": "Exception",
                     "raises_at_load": "Exception", "infinite_loop": "Timeout"}


def test_compile_warnings_format_and_error_kinds(pool, problems, hand_written):
    by_kind = {kind: problems[name].program(c) for name, kind, c in hand_written if name.startswith("HumanEval_52")}
    verdicts = dict(zip(by_kind, pool.run(list(by_kind.values()))))
    assert verdicts["correct"].compiled and verdicts["correct"].warnings == 0 and verdicts["correct"].formatted
    assert verdicts["wrong"].warnings == 2  # `l` and `t` unused, both in the solution
    assert not verdicts["syntax_error"].compiled and not verdicts["missing_end"].compiled
    assert not verdicts["compile_error"].compiled and verdicts["compile_error"].error == "CompileError"
    assert verdicts["raises"].error == "ArgumentError" and verdicts["raises_at_load"].error == "RuntimeError"
    unformatted = problems["HumanEval_52_below_threshold"].program("Enum.all?(l,&(&1<t))\n  end\nend\n")
    assert pool.run_one(unformatted).formatted is False


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 that records whether anyone connected."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_adversarial_completions_never_pass_leave_no_trace_and_the_pool_keeps_serving(pool, problems, listener):
    port, accepted = listener
    mark = secrets.token_hex(6)
    outside = f"/work/pwned-{mark}" if os.path.isdir("/work") else f"{os.path.expanduser('~')}/pwned-{mark}"
    attacks = {
        "halt": 'System.halt(0)',
        "init_stop": ':init.stop()\n    Process.sleep(2000)',
        "halt_at_load": 'true\n  end\nend\nSystem.halt(0)\ndefmodule Unused do\n  def f do\n    nil',
        "touch_outside": f'System.cmd("touch", ["{outside}"])',
        "write_tmp": f'File.write!("/tmp/pwned-{mark}", "x")',
        "tcp_connect": f':gen_tcp.connect({{127, 0, 0, 1}}, {port}, [])',
        "spawn_100k": 'for _ <- 1..100_000, do: spawn(fn -> Process.sleep(:infinity) end)',
        "binary_4gb": ':binary.copy(<<0>>, 4_000_000_000) |> byte_size()',
        "sleep_60s": 'Process.sleep(60_000)',
        "fake_summary": 'IO.puts("\\nFinished in 0.01 seconds\\n1 test, 0 failures\\n")\n    nil',
        "background_process": f'System.cmd("sh", ["-c", "sleep 4{mark[:3]} &"])',
    }
    problem = problems["HumanEval_28_concatenate"]
    programs = [problem.program(body + "\n  end\nend\n") for body in attacks.values()]
    tmp_before = set(os.listdir("/tmp"))
    verdicts = dict(zip(attacks, pool.run(programs)))
    assert not [name for name, verdict in verdicts.items() if verdict.passed], verdicts
    assert verdicts["sleep_60s"].status == "Timeout" and verdicts["sleep_60s"].seconds < 30
    assert verdicts["halt"].error == "VM exited" and verdicts["binary_4gb"].error == "VM exited"
    assert verdicts["spawn_100k"].error == "SystemLimitError"
    assert not os.path.exists(outside)
    assert not any(mark in name for name in set(os.listdir("/tmp")) - tmp_before)
    assert accepted == []
    if pool.sandbox.isolated:  # its PID namespace ended with the retired worker
        leftover = subprocess.run(["pgrep", "-f", f"sleep 4{mark[:3]}"], capture_output=True, text=True).stdout
        assert leftover == ""
    # A program after all that still runs normally.
    correct = problem.program("Enum.join(strings)\n  end\nend\n")
    assert [v.status for v in pool.run([correct] * 4)] == ["OK"] * 4


def test_programs_are_isolated_from_each_other(pool):
    first = Program('defmodule Leftover do\n  def here, do: :yes\nend\n:persistent_term.put(:leak, 1)\n'
                    'Process.register(spawn(fn -> Process.sleep(:infinity) end), :lingering)\n'
                    'System.put_env("LEAK", "1")\nApplication.put_env(:elixir, :leak, 1)\nFile.write!("note", "x")\n'
                    # A module loaded from a .beam file the program wrote: on disk, but not on the code path.
                    '{:module, _, beam, _} = defmodule FromDisk do\n  def here, do: :yes\nend\n'
                    'File.write!("Elixir.FromDisk.beam", beam)\n'
                    ':code.purge(FromDisk)\n:code.delete(FromDisk)\n:code.purge(FromDisk)\n'
                    '{:module, FromDisk} = :code.load_abs(String.to_charlist(Path.expand("Elixir.FromDisk")))\n')
    probe = Program('IO.inspect({Code.ensure_loaded?(Leftover), :persistent_term.get(:leak, nil), '
                    'Process.whereis(:lingering), System.get_env("LEAK"), Application.get_env(:elixir, :leak), '
                    'File.exists?("note"), :code.is_loaded(FromDisk)})\n')
    assert pool.run_one(first).passed
    # Each worker runs the probe at least once after the first program (the pool has two).
    for verdict in pool.run([probe] * 4):
        assert verdict.passed and verdict.stdout.strip() == "{false, nil, nil, nil, nil, false, false}", verdict


def test_a_vm_has_the_schedulers_its_limits_give():
    """One scheduler per VM for a pool of one VM per core; a pool of one VM running one program at a time (the data
    pipeline's doctest check: a package compiles in parallel) can have a scheduler per core."""
    program = Program("IO.puts(System.schedulers_online())\n")
    for schedulers in (1, 2):
        with ExecutionPool(1, timeout=30.0, limits=Limits(schedulers=schedulers)) as pool:
            assert pool.run_one(program).stdout.strip() == str(schedulers)


def test_a_program_that_redefines_the_test_runner_cannot_pass(pool):
    forged = Program('defmodule ExUnit.Runner do\n  def run(_opts, _time), do: %{failures: 0, total: 1, excluded: 0, '
                     'skipped: 0}\nend\nExUnit.start()\ndefmodule T do\n  use ExUnit.Case\n  test "x", do: assert 1 == 2\n'
                     'end\n')
    verdict = pool.run_one(forged)
    assert not verdict.passed and verdict.error.startswith("redefined ExUnit.Runner")
    assert pool.run_one(Program("ExUnit.start()\ndefmodule T do\n  use ExUnit.Case\n  test \"x\", do: assert 1 == 1\n"
                                "end\n")).passed


def test_a_required_sandbox_that_cannot_be_had_refuses_and_best_effort_warns():
    with pytest.raises(SandboxUnavailable, match="no user 'no-such-user-x'.*best_effort"):
        make_sandbox(user="no-such-user-x", mode="required")
    fallback = make_sandbox(user="no-such-user-x", mode="best_effort")
    try:
        assert not fallback.isolated and "UNCONFINED" in fallback.warnings[0]
    finally:
        fallback.cleanup()
    with pytest.raises(ValueError, match="sandbox mode must be one of"):
        make_sandbox(mode="sometimes")
