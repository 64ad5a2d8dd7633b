"""Reading benchmarks and completions files, and building the doctest benchmark from Elixir sources."""

import json

import pytest

from devstral_jax.elixir.parse import parse_source, parser_pool
from devstral_jax.eval.benchmarks import BenchmarkError, load_completions, load_problems
from devstral_jax.eval.doctests import build_benchmark, held_out_sources
from tests.eval.conftest import SAMPLE_BENCHMARK

LIBRARY = '''defmodule Geo.Util do
  @moduledoc "Helpers."

  @default 2

  @doc """
  Scales a number.

      iex> Geo.Util.scale(3)
      6

      iex> x = 4
      iex> Geo.Util.scale(x,
      ...>   3)
      12
      iex> Geo.Util.scale(:a)
      ** (ArithmeticError) bad argument in arithmetic expression
  """
  @spec scale(number(), number()) :: number()
  def scale(x, by \\\\ @default) do
    helper(x) * by
  end

  @doc """
  A set, with a doctest that is wrong for Elixir 1.14 (which prints MapSet.new([1, 2])).

      iex> Geo.Util.set([1, 2])
      #MapSet<[1, 2]>
  """
  def set(list) do
    MapSet.new(list)
  end

  @doc "No examples."
  def plain(x) do
    x
  end

  @doc "One-liners are skipped.\\n\\n    iex> Geo.Util.one(1)\\n    1\\n"
  def one(x), do: x

  defp helper(x), do: x
end
'''


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_load_problems_reads_multiple_jsonl():
    problems = load_problems(SAMPLE_BENCHMARK)
    assert len(problems) == 23 and problems[0].name == "HumanEval_0_has_close_elements"
    assert "\ndefmodule" in problems[0].stop_tokens
    program = problems[0].program("true\n  end\nend\n")
    assert program.source == problems[0].prompt + "true\n  end\nend\n" + "\n" + problems[0].tests


def test_load_completions_both_shapes_and_clear_errors(tmp_path):
    problems = load_problems(SAMPLE_BENCHMARK)
    path = _write_jsonl(tmp_path / "c.jsonl", [
        {"name": problems[1].name, "completion": "a"}, {"name": problems[1].name, "completion": "b"},
        {"name": "own", "prompt": "p", "tests": "t", "stop_tokens": [], "completions": ["c", "d", "e"]}])
    chosen, completions = load_completions(path, problems)
    assert [p.name for p in chosen] == [problems[1].name, "own"]
    assert completions == {problems[1].name: ["a", "b"], "own": ["c", "d", "e"]}
    with pytest.raises(BenchmarkError, match="missing or non-string field"):
        load_completions(_write_jsonl(tmp_path / "d.jsonl", [{"name": "x", "completion": "y"}]))
    with pytest.raises(BenchmarkError, match="is not in the benchmark"):
        load_completions(_write_jsonl(tmp_path / "e.jsonl", [{"name": "x", "completion": "y"}]), problems)
    (tmp_path / "f.jsonl").write_text(json.dumps({"name": problems[1].name, "completion": "y"}) + "\nnot json\n")
    with pytest.raises(BenchmarkError, match="f.jsonl:2: not JSON"):
        load_completions(tmp_path / "f.jsonl", problems)


def test_doctest_examples_are_grouped_like_exunit():
    with parser_pool(1) as parser:
        scale = parse_source(parser, "util.ex", LIBRARY).modules[0].functions[0]
    assert [[(step.expr, step.expected) for step in group] for group in scale.doctests] == [
        [("Geo.Util.scale(3)", "6")],
        [("x = 4", None), ("Geo.Util.scale(x,\n  3)", "12"),
         ("Geo.Util.scale(:a)", "** (ArithmeticError) bad argument in arithmetic expression")]]


def test_doctest_benchmark_from_held_out_records_keeps_problems_whose_reference_passes(tmp_path, pool):
    source = {"kind": "hex", "package": "geo", "version": "1.0.0", "path": "lib/geo/util.ex", "licence": "MIT",
              "url": "https://hex.pm/packages/geo"}
    _write_jsonl(tmp_path / "shard.jsonl", [
        {"id": "1", "kind": "text", "task": "file", "split": "validation", "source": source, "text": LIBRARY},
        {"id": "2", "kind": "text", "task": "file", "split": "train", "source": source, "text": LIBRARY}])
    sources = held_out_sources([str(tmp_path / "*.jsonl")])
    assert sources == [("geo/lib/geo/util.ex", LIBRARY)]  # the train copy is not held out
    problems, counts = build_benchmark(sources, pool)
    assert counts["candidates"] == 2 and counts["kept"] == 1  # `set`'s doctest fails on Elixir 1.14
    (problem,) = problems
    assert problem.name == "geo/lib/geo/util.ex:Geo.Util.scale/2"
    assert problem.prompt.endswith("  def scale(x, by \\\\ @default) do\n    ")
    assert problem.reference == "helper(x) * by\n  end\nend\n"
    verdicts = pool.run([problem.program(problem.reference), problem.program("x * 3\n  end\nend\n"),
                         problem.program("helper(x) * by\n  end\n")])
    assert [v.status for v in verdicts] == ["OK", "AssertionError", "Exception"]
    with pytest.raises(BenchmarkError, match="No record files match"):
        held_out_sources([str(tmp_path / "missing-*.jsonl")])
