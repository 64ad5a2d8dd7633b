"""Doctests -> ExUnit modules, run under real ExUnit: they pass against the code and fail when a doctest is wrong."""

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from devstral_jax.elixir.doctests import exunit_module
from devstral_jax.elixir.parse import parse_source
from devstral_jax.elixir.quote import string_literal
from devstral_jax.elixir.worker import ElixirPool

# (a doctest, a wrong last line for it): each is one test. In the first three, `assert EXPR == EXPECTED` written
# as is would not compare the two: a call without parentheses or a comment takes ` == EXPECTED` in, and `not`
# binds more loosely than `==`.
EXAMPLES = [
    ("iex> if Pick.yes?(), do: :a, else: :b\n:a", ":b"),
    ("iex> Pick.double(2) # a comment\n4", "5"),
    ("iex> not Pick.yes?()\nfalse", "true"),
    ("iex> Pick.double 2\n4", "5"),
    ("iex> Pick.yes?() and Pick.yes?()\ntrue", "false"),
    ("iex> Enum.map [1, 2], &Pick.double/1\n[2, 4]", "[2, 5]"),
    ("iex> x = Pick.double(2)\n4\niex> x\n4", "5"),  # the binding reaches the next step
    ('iex> "a\\nb #{1}"\n"a\\nb 1"', '"a\\nb 2"'),
    ("iex> Pick.double(:x)\n** (ArithmeticError) bad argument in arithmetic expression", "** (ArithmeticError) other"),
    ("iex> Pick.box(3)\n#Box<3>", "#Box<4>"),
    ("iex> Pick.double(1 +\n...>   1)\n4", "5"),
    # Shaped on Nx's docs: a comment after the expression must not swallow the assertion.
    ("iex> t = Pick.list(3)\niex> Pick.to_list(t) # recall the tensor is a list here\n[1, 2, 3]", "[1, 2, 4]"),
    # An expected value that opens with a log line: the line is a comment, the value is `:ok`.
    ("iex> Pick.log(\"hi\")\n# [info] hi\n:ok", ":error"),
    # Shaped on Jason.Formatter.pretty_print/2: multi-line string values keep their indentation.
    ("iex> Pick.lines([\"{\", \"}\"])\n~s|{\n  }|", "  ]|"),
    ('iex> Pick.lines(["a", "b"])\n"a\n  b"', '  c"'),
    ('iex> String.length("a\n...>   b")\n5', "6"),
]


def pick_source(wrong: bool) -> str:
    """A module whose doc holds EXAMPLES: as they are, or each with its wrong last line."""
    doctests = [doctest.rsplit("\n", 1)[0] + "\n" + last if wrong else doctest for doctest, last in EXAMPLES]
    examples = textwrap.indent("\n\n".join(doctests), "      ")
    return ('defmodule Pick do\n  @doc ~S"""\n  Doubles a number.\n\n' + examples + '\n  """\n'
            "  def double(n), do: n * 2\n\n  def yes?, do: true\n\n  def box(v), do: struct(Pick.Box, v: v)\n\n"
            "  def list(n), do: Enum.to_list(1..n)\n\n  def to_list(list), do: list\n\n"
            '  def log(message), do: IO.puts("[info] " <> message)\n\n'
            '  def lines(parts), do: Enum.join(parts, "\\n  ")\nend\n\n'
            "defmodule Pick.Box do\n  defstruct [:v]\n\n  defimpl Inspect do\n"
            '    def inspect(box, _opts), do: "#Box<" <> to_string(box.v) <> ">"\n  end\nend\n')


def run_tests(parser, tmp_path, wrong: bool) -> tuple[str, str]:
    """The generated ExUnit module for Pick.double/1 and what running it against Pick printed."""
    source = pick_source(wrong)
    module = parse_source(parser, "pick.ex", source).modules[0]
    tests = exunit_module(module, module.functions[0])
    (tmp_path / "pick.ex").write_text(source)
    (tmp_path / "pick_test.exs").write_text("ExUnit.start()\n" + tests)
    result = subprocess.run(["elixir", "-r", "pick.ex", "pick_test.exs"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    return tests, result.stdout + result.stderr


def test_generated_tests_pass_on_right_doctests_and_fail_on_every_wrong_one(parser, tmp_path):
    tests, output = run_tests(parser, tmp_path, wrong=False)
    assert f"{len(EXAMPLES)} tests, 0 failures" in output, output
    assert '    result = if Pick.yes?(), do: :a, else: :b\n    assert result == :a\n' in tests
    assert '    result = Pick.double(2) # a comment\n    assert result == 4\n' in tests
    assert '    result = x = Pick.double(2)\n    assert result == 4\n    assert x == 4\n' in tests
    assert '    assert "a\\nb #{1}" == "a\\nb 1"\n' in tests
    assert '    assert inspect(Pick.box(3)) == "#Box<3>"\n' in tests
    assert '    # [info] hi\n    assert Pick.log("hi") == :ok\n' in tests
    assert '    assert Pick.lines(["{", "}"]) == ~s|{\n  }|\n' in tests  # the string's second line kept as written
    _, output = run_tests(parser, tmp_path, wrong=True)
    assert f"{len(EXAMPLES)} tests, {len(EXAMPLES)} failures" in output, output


def test_string_literals_read_back_as_the_same_text(tmp_path):
    (tmp_path / "eval.exs").write_text("ElixirWorker.serve(fn literal -> elem(Code.eval_string(literal), 0) end)\n")
    texts = ["plain", 'a "quote" and a \\ backslash', "line\nbreak\r\n\ttab", "not #{interpolated}", "#{",
             "\\#{x}", "ends in \\", "ünïcödé ☃", ""]
    with ElixirPool(tmp_path / "eval.exs", size=1) as elixir:
        for text in texts:
            literal = string_literal(text)
            assert "\n" not in literal and re.fullmatch(r'".*"', literal)
            assert elixir.call(literal) == text


VENDORED = Path(__file__).with_name("vendored")  # real files; see vendored/README.md


@pytest.mark.parametrize("name, at_least", [("jason_formatter.ex", 2), ("plug_conn_utils.ex", 5)])
def test_real_doctests_pass_under_exunit(parser, tmp_path, name, at_least):
    """Jason.Formatter documents a multi-line ~s|...| value, Plug.Conn.Utils.token/1 ~S[...] arguments in a ~S
    heredoc: every generated module passes against the file it came from."""
    source = (VENDORED / name).read_text()
    modules = [(module, function) for module in parse_source(parser, name, source).modules
               for function in module.functions]
    tests = [exunit_module(module, function) for module, function in modules]
    renamed = [re.sub(r"\Adefmodule \S+ do", f"defmodule Generated{i}Test do", t) for i, t in enumerate(tests) if t]
    assert len(renamed) >= at_least
    (tmp_path / "generated_test.exs").write_text("ExUnit.start()\n" + "\n\n".join(renamed))
    result = subprocess.run(["elixir", "-r", str(VENDORED / name), "generated_test.exs"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    count = sum(len(re.findall(r"^  test ", t, re.M)) for t in renamed)
    assert f"{count} tests, 0 failures" in result.stdout, result.stdout + result.stderr
