"""Reused test modules (DevstralEval.TestCache in executor.exs) change nothing: every verdict, output included,
is the one compiling the whole file gives, and programs aimed at the reuse either get that verdict through it
or are run whole (`Verdict.cache` says which)."""

import re

import pytest

from devstral_jax.eval.pool import ExecutionPool, _shared_test_modules
from devstral_jax.eval.verdict import Program

END = "\n  end\nend\n"


@pytest.fixture(scope="module")
def whole_pool():
    with ExecutionPool(2, timeout=3.0, reuse_tests=False) as pool:
        yield pool


def comparable(verdict) -> tuple:
    """Every field but the time and the cache flag; ExUnit's output without what varies from run to run (the
    seed, timings, the order tests ran in, compiler scratch-module numbers, pids)."""
    def output(text: str) -> list[str]:
        text = re.sub(r"Randomized with seed \d+|Finished in .*|\d\d:\d\d:\d\d\.\d+ ", "", text)
        text = re.sub(r"elixir_compiler_\d+|#(PID|Reference|Port)<[\d.]+>", "_", text)
        text = re.sub(r"(?m)^  \d+\) ", "  N) ", text)
        # Stack frames of the harness and of Elixir's own compiler: which of them an exception's trace shows
        # depends on the harness path that compiled the file (in the full suite, a reused run's syntax error
        # printed them where the whole file's did not); the exception, its message and hints still compare.
        text = re.sub(r"(?m)^ {4}(?:\(elixir [^)]*\) lib/|\S*executor\.exs:).*(?:\n|$)", "", text)
        return sorted(part.strip(".\n") for part in text.split("\n\n") if part.strip(".\n"))

    return (verdict.status, verdict.exit_code, verdict.error, verdict.compiled, verdict.warnings, verdict.formatted,
            output(verdict.stdout), output(verdict.stderr))


def test_reused_test_modules_give_the_whole_file_verdicts(pool, whole_pool, problems, hand_written):
    programs = [problems[name].program(completion) for name, kind, completion in hand_written
                if kind != "infinite_loop"] * 2  # the loops' timeouts are compared in test_pool.py
    reused, whole = pool.run(programs), whole_pool.run(programs)
    assert [comparable(v) for v in reused] == [comparable(v) for v in whole]
    assert {v.cache for v in whole} == {"off"}
    assert sum(v.cache == "hit" for v in reused) >= len(programs) // 2


def _twin(completion: str, lines: int) -> str:
    """A correct HumanEval_28 completion of `lines` lines: the tests start on the same line as after `completion`."""
    padding = "    # -\n" * (lines - 3)
    return "Enum.join(strings)\n" + padding + "  end\nend\n"


# (completion, what the reuse must do: "hit" = reused with the whole file's verdict, "fallback" = found the
# program differs while running it and ran it whole, "skip" = never tried)
ATTACKS = {
    "fake_test_result": ('IO.puts("\\n1 test, 0 failures")\n    nil' + END, "hit"),
    "macro_in_candidate": ("Enum.join(strings)\n  end\n  defmacro candidate(x, y), do: {x, y}\nend\n", "hit"),
    "import_inside_candidate": ("join(strings)\n  end\n  import Enum, only: [join: 1]\nend\n", "skip"),
    "redefines_test_module": ("Enum.join(strings)" + END + "defmodule HumanEvalTest do\n  def x, do: 1\nend\n",
                              "skip"),
    "creates_test_module_while_compiling": (
        "Enum.join(strings)\n  end\n  Module.create(HumanEvalTest, quote(do: def(x, do: 1)), __ENV__)\nend\n",
        "fallback"),
    "unclosed_block": ("Enum.join(strings)\n  end\n", "skip"),
    "swallows_the_tests": ("Enum.join(strings)" + END + "_ = ", "skip"),
    "top_level_code_after_the_module": ("Enum.join(strings)" + END + 'IO.puts(HumanEval.candidate(["a"]))\n', "skip"),
    "top_level_import_changing_assert": (
        "Enum.join(strings)" + END + "import Kernel, except: [==: 2]\ndef _ == _, do: true\n", "skip"),
    "changes_assert_receive_timeout": (
        "Enum.join(strings)\n  end\n  Application.put_env(:ex_unit, :assert_receive_timeout, 1)\nend\n", "fallback"),
    "changes_a_compiler_option": (
        "Enum.join(strings)\n  end\n  Code.put_compiler_option(:ignore_module_conflict, true)\nend\n", "fallback"),
    "turns_debug_info_off": ("Enum.join(strings)\n  end\n  Code.put_compiler_option(:debug_info, false)\nend\n",
                             "fallback"),
    "changes_directory": ('Enum.join(strings)\n  end\n  File.mkdir_p!("sub")\n  File.cd!("sub")\nend\n', "fallback"),
    "starts_ex_unit_with_options": ("Enum.join(strings)\n  end\n  ExUnit.start(seed: 1)\nend\n", "fallback"),
    "sets_a_compiler_key": ('Enum.join(strings)\n  end\n  Process.put(:elixir_compiler_dest, "/tmp")\nend\n',
                            "fallback"),
    "unused_import_the_tests_use": ("Enum.join(strings)\n  end\n  import ExUnit.Assertions\nend\n", "fallback"),
    "raises_while_defined": ('Enum.join(strings)\n  end\n  raise "boom"\nend\n', "fallback"),
    "breaks_ex_unit_start": ("Enum.join(strings)\n  end\n  Process.register(spawn(fn -> Process.sleep(:infinity) "
                             "end), ExUnit.Server)\nend\n", "fallback"),
    "undefined_function": ("helper(strings)" + END, "skip"),
    "redefines_ex_unit_while_compiling": (
        "Enum.join(strings)\n  end\n  Module.create(ExUnit.Assertions, quote(do: def(x, do: 1)), __ENV__)\nend\n",
        "fallback"),
    # Module attributes evaluated at compile time, and the hooks they register.
    "attribute_reads_the_tests_at_compile_time": (
        "helper(strings)\n  end\n  @tests_loaded Code.ensure_loaded?(HumanEvalTest)\n  defp helper(strings), "
        'do: if(@tests_loaded, do: "", else: Enum.join(strings))\nend\n', "hit"),
    "attribute_sets_a_compiler_option": (
        "Enum.join(strings)\n  end\n  @options Code.put_compiler_option(:no_warn_undefined, :all)\nend\n",
        "fallback"),
    "after_compile_hook_prints_a_result": (
        "Enum.join(strings)\n  end\n  @after_compile __MODULE__\n  def __after_compile__(_env, _bytecode), "
        'do: IO.puts("1 test, 0 failures")\nend\n', "hit"),
    "before_compile_hook_defines_a_function": (
        "helper(strings)\n  end\n  @before_compile __MODULE__\n  defmacro __before_compile__(_env), "
        'do: quote(do: defp(helper(strings), do: Enum.join(strings, "-")))\nend\n', "fallback"),
    "on_load_hook_prints": ('Enum.join(strings)\n  end\n  @on_load :loaded\n  def loaded, do: IO.puts("loaded")\nend\n',
                            "hit"),
    "defines_a_shipped_module": ("Enum.join(strings)" + END + "defmodule ExUnit.Assertions do\n  "
                                 "defmacro assert(_), do: true\nend\n", "skip"),
}


def test_completions_aimed_at_the_reuse_get_the_whole_file_verdict(pool, whole_pool, problems):
    problem = problems["HumanEval_28_concatenate"]
    programs = []
    for completion, _ in ATTACKS.values():
        # A correct completion of the same length before and after: the attack's test module is then reusable.
        twin = problem.program(_twin(completion, completion.count("\n")))
        programs += [twin, problem.program(completion), twin]
    reused, whole = pool.run(programs), whole_pool.run(programs)
    for (name, (_, expected)), twin, attacked, attacked_whole in zip(ATTACKS.items(), reused[::3], reused[1::3],
                                                                      whole[1::3]):
        assert twin.passed and twin.cache == "hit", name
        assert attacked.cache == expected, (name, attacked)
        assert comparable(attacked) == comparable(attacked_whole), name
    verdicts = dict(zip(ATTACKS, reused[1::3]))
    assert not verdicts["fake_test_result"].passed
    assert verdicts["redefines_ex_unit_while_compiling"].error == "redefined ExUnit.Assertions"
    assert verdicts["attribute_reads_the_tests_at_compile_time"].passed  # the tests are not loaded yet then
    # a module cannot run its own macro before it is compiled: a compile-time error, run whole
    assert verdicts["before_compile_hook_defines_a_function"].error == "UndefinedFunctionError"
    assert verdicts["on_load_hook_prints"].passed


def test_only_programs_whose_test_module_another_shares_prepare_it():
    tests = "ExUnit.start()\n"
    programs = [Program("a\n" + tests, tests=tests), Program("b\n" + tests, tests=tests),
                Program("c\nc\n" + tests, tests=tests), Program("d\n")]
    assert _shared_test_modules(programs) == {0}
