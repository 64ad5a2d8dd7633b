"""Records from parsed fixture files: what each task asks and answers, FIM cuts, determinism."""

import dataclasses
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from data_pipeline.instruct import InstructConfig, file_records, is_test_path
from devstral_jax.data.records import Source
from devstral_jax.elixir.parse import parse_source

TREE = Path(__file__).parent / "fixtures" / "elixir_tree" / "lib" / "my_app"
SHAPES = Path(__file__).parent / "fixtures" / "shapes"  # modelled on real cases, see its README
CONFIG = InstructConfig(seed=0, fim_rate=1.0, max_value_questions=3, min_doc_chars=10, min_moduledoc_chars=20,
                        max_context_chars=8000, max_explanation_chars=1500, fim_spans=1, fim_context_lines=10_000,
                        fim_across_rate=0.0)  # one FIM middle per file, its whole file around it


def records_for(pool, name, config=CONFIG):
    text = (TREE / name).read_text()
    source = Source("local", "my_app", "v1", f"lib/my_app/{name}", "MIT", "file:///my_app")
    return text, file_records(source, text, parse_source(pool, name, text), config).records


def shapes(pool, path, config=CONFIG):
    """The records (and the rest of file_records' answer) of a file of the shapes package."""
    text = (SHAPES / path).read_text()
    source = Source("local", "shapes", "v1", path, "MIT", "file:///shapes")
    return file_records(source, text, parse_source(pool, path, text), config)


def chats(records, task):
    return [(r.messages[0].content, r.messages[1].content) for r in records if r.task == task]


def code_of(answer):
    return re.fullmatch(r"```elixir\n(.*)\n```", answer, re.S)[1]


def test_documented_functions_become_implementation_requests(pool):
    _, records = records_for(pool, "math.ex")
    requests = dict(chats(records, "doc_to_impl"))
    asked = sorted(re.match(r"Write the Elixir function `(\S+)`", q)[1] for q in requests)
    assert asked == ["MyApp.Math.Vector.add/2", "MyApp.Math.double/1", "MyApp.Math.sum/1"]  # not @doc false, defp
    request = next(q for q in requests if "sum/1" in q)
    assert "Returns the sum of a list of numbers." in request and "iex> MyApp.Math.sum([1, 2, 3])" in request
    assert "Its typespec:\n\n```elixir\n@spec sum([number()]) :: number()\n```" in request
    assert "It belongs to the module `MyApp.Math`. The module's purpose: Small arithmetic helpers." in request
    assert code_of(requests[request]) == ("@spec sum([number()]) :: number()\n"
                                          "def sum(numbers), do: Enum.reduce(numbers, 0, &+/2)")


def test_otp_behaviour_modules_become_write_a_module_requests(pool):
    text, records = records_for(pool, "stack.ex")
    ((request, answer),) = chats(records, "otp_behaviour")
    assert request.startswith("Write an Elixir GenServer module named `MyApp.Stack`.\n\nA stack held by a GenServer")
    assert "- `push/2`: Pushes `value` on top of the stack." in request
    assert "It implements the GenServer callbacks `init/1`, `handle_cast/2`, `handle_call/3`." in request
    assert code_of(answer) == text.strip()
    _, records = records_for(pool, "application.ex")
    assert [q.split("\n")[0] for q, _ in chats(records, "otp_behaviour")] == [
        "Write an Elixir Application module named `MyApp.Application`.",
        "Write an Elixir Supervisor module named `MyApp.Supervisor`."]


def test_doctests_become_test_modules_that_pass(pool, tmp_path):
    _, records = records_for(pool, "math.ex")
    tests = dict(chats(records, "doctest_tests"))
    sum_request = next(q for q in tests if "`MyApp.Math.sum/1`" in q)
    assert sum_request.endswith("```elixir\n@spec sum([number()]) :: number()\ndef sum(numbers)\n```")
    assert code_of(tests[sum_request]) == '''defmodule MyApp.MathTest do
  use ExUnit.Case, async: true
  require MyApp.Math

  test "sum/1 (example 1)" do
    assert MyApp.Math.sum([1, 2, 3]) == 6
  end

  test "sum/1 (example 2)" do
    xs = [10, 20]
    assert MyApp.Math.sum(xs) == 30
  end

  test "sum/1 (example 3)" do
    result = (
      MyApp.Math.sum([1,
        2])
    )

    assert result == 3
  end
end'''
    double = code_of(next(a for q, a in tests.items() if "`MyApp.Math.double/1`" in q))
    assert 'assert_raise ArithmeticError, "bad argument in arithmetic expression", fn -> MyApp.Math.double(:a) end' \
        in double
    for i, answer in enumerate(tests.values()):  # every generated module passes against the real code
        script = tmp_path / f"test_{i}.exs"
        script.write_text("ExUnit.start()\n" + code_of(answer))
        result = subprocess.run(["elixir", "-r", str(TREE / "math.ex"), str(script)], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0 and " 0 failures" in result.stdout, result.stdout + result.stderr


def test_doctests_become_what_does_this_return_questions(pool):
    _, records = records_for(pool, "math.ex")
    values = chats(records, "doctest_value")
    fence = "What does this Elixir code return?\n\n```elixir\n{}\n```"
    assert (fence.format("MyApp.Math.sum([1, 2, 3])"), "```elixir\n6\n```") in values
    assert (fence.format("xs = [10, 20]\nMyApp.Math.sum(xs)"), "```elixir\n30\n```") in values
    assert (fence.format("MyApp.Math.double(2)\nMyApp.Math.double(:a)"),
            "It raises `ArithmeticError`: bad argument in arithmetic expression") in values
    assert len([q for q, _ in values if "MyApp.Math.sum" in q]) == 3  # max_value_questions per function


def test_module_docs_become_explanations_without_the_answer_in_the_question(pool):
    _, records = records_for(pool, "stack.ex")
    ((request, answer),) = chats(records, "module_explain")
    assert answer == "A stack held by a GenServer process.\n\nPush and pop values from any process."
    assert request.startswith("Explain what this Elixir module does.") and "Push and pop values" not in request
    assert "def push(pid, value)" in request


def test_fim_cuts_at_syntax_boundaries_and_rebuilds_the_file(pool):
    text, records = records_for(pool, "stack.ex")
    (fim,) = [r for r in records if r.kind == "fim"]
    assert fim.prefix + fim.middle + fim.suffix == text
    assert fim.prefix.endswith("\n") and fim.middle.endswith("\n")
    middles = {r.middle for seed in range(12) for r in records_for(pool, "stack.ex",
                                                                  dataclasses.replace(CONFIG, seed=seed))[1]
               if r.kind == "fim"}
    function_cuts = {"    GenServer.start_link(__MODULE__, initial)\n",
                     "  def push(pid, value), do: GenServer.cast(pid, {:push, value})\n",
                     "  def pop(pid), do: GenServer.call(pid, :pop)\n",
                     "  def init(initial), do: {:ok, initial}\n",
                     "  def handle_cast({:push, value}, state), do: {:noreply, [value | state]}\n",
                     "  def handle_call(:pop, _from, [top | rest]), do: {:reply, top, rest}\n"
                     "  def handle_call(:pop, _from, []), do: {:reply, nil, []}\n"}
    assert len(middles) > 1 and middles <= function_cuts


def test_records_are_deterministic_and_ids_unique(pool):
    _, first = records_for(pool, "math.ex")
    _, second = records_for(pool, "math.ex")
    assert first == second
    assert len({r.id for r in first}) == len(first)
    _, other_seed = records_for(pool, "math.ex", dataclasses.replace(CONFIG, seed=1))
    assert {r.id for r in other_seed if r.kind != "fim"} == {r.id for r in first if r.kind != "fim"}


@pytest.mark.parametrize("fim_rate, expected", [(0.0, 0), (1.0, 1)])
def test_fim_rate(pool, fim_rate, expected):
    _, records = records_for(pool, "job.ex", dataclasses.replace(CONFIG, fim_rate=fim_rate))
    assert sum(r.kind == "fim" for r in records) == expected


def test_doc_to_impl_holds_every_clause_or_nothing(pool):
    """Postgrex.Utils.default_extension?/1 (clauses from a `for`) gives no record rather than its fallback clause;
    Req.Fields.new/1 (defined in both branches of an `if`) is answered with the whole `if`; a delegation, a guard
    and a macro are asked for as what they are."""
    asked = {re.match(r"Write the Elixir ([^`]+) `(\S+)`", q).group(2): (q, code_of(a))
             for q, a in chats(shapes(pool, "lib/shapes/extensions.ex").records, "doc_to_impl")}
    assert list(asked) == ["Shapes.Extensions.default_extensions/1"]
    made = shapes(pool, "lib/shapes/fields.ex")
    asked = {re.match(r"Write the Elixir ([^`]+) `(\S+)`", q).groups(): (q, code_of(a))
             for q, a in chats(made.records, "doc_to_impl")}
    assert sorted(asked) == [("function", "Shapes.Fields.get_values/2"), ("function", "Shapes.Fields.join/2"),
                             ("function", "Shapes.Fields.new/1"), ("guard", "Shapes.Fields.is_name/1"),
                             ("macro", "Shapes.Fields.put_new/3")]  # not set_label/1: its `if` holds another
    lines = (SHAPES / "lib/shapes/fields.ex").read_text().split("\n")
    assert asked["function", "Shapes.Fields.new/1"][1] == textwrap.dedent("\n".join(lines[14:23]))
    assert asked["function", "Shapes.Fields.get_values/2"][1].count("def get_values(") == 3
    request, answer = asked["function", "Shapes.Fields.join/2"]
    assert request.startswith("Write the Elixir function `Shapes.Fields.join/2`. It delegates to "
                              "`Shapes.Text.join_all/2`.\n\nIts documentation:")
    assert answer == 'defdelegate join(values, separator \\\\ ", "), to: Shapes.Text, as: :join_all'
    assert asked["guard", "Shapes.Fields.is_name/1"][1].startswith("defguard is_name(name) when")


def test_nested_behaviour_modules_are_asked_for_by_the_name_they_are_written_with(pool):
    ((request, answer),) = chats(shapes(pool, "lib/shapes/cache.ex").records, "otp_behaviour")
    assert request.startswith("Write an Elixir GenServer module `Janitor`, to be nested inside the module "
                              "`Shapes.Cache`.\n\nPeriodically purges the expired entries of a cache table.")
    assert code_of(answer).startswith("defmodule Janitor do\n  @moduledoc")


def test_test_files_are_test_records_and_declare_their_doctests(pool):
    """A test file's fixtures (here a deliberately broken GenServer) are not "write a GenServer" material."""
    made = shapes(pool, "test/shapes_test.exs")
    assert [r.task for r in made.records] == ["test_file", "fim"] and made.records[0].kind == "text"
    assert [(d.module, d.excluded) for d in made.doctested] == [("Shapes.Fields", ()),
                                                                ("Shapes.Text", (("whisper", 1),))]
    assert all(map(is_test_path, ["test/a_test.exs", "apps/web/test/support/conn_case.ex", "test/test_helper.exs",
                                  "integration_test/cases/repo.exs", "lib/a_test.exs"]))
    assert not any(map(is_test_path, ["lib/test.ex", "lib/my_app/testing.ex", "examples/test_like.exs"]))


def test_module_explanations_are_bounded_prose(pool):
    """Modelled on GenStage's and Broadway's module docs (a title, prose with relative links, an example, then
    many sections) and on docs that are mostly code: the answer is the prose overview, or there is no record."""
    explained = {q: a for q, a in chats(shapes(pool, "lib/shapes/pipeline.ex").records, "module_explain")}
    ((request, answer),) = explained.items()
    assert "defmodule Shapes.Pipeline do" in request and "Shapes.Router" not in request
    assert answer == ("Shapes pipelines move events from producers to\nconsumers with back-pressure. See the\n"
                      "[architecture overview](https://example.com/architecture) for the design,\n"
                      "and a diagram of it.\n\nA pipeline runs under a supervisor. Each stage is a process, "
                      "and demand\nflows upstream while events flow downstream.")
    short = dataclasses.replace(CONFIG, max_explanation_chars=120)
    ((_, answer),) = chats(shapes(pool, "lib/shapes/pipeline.ex", short).records, "module_explain")
    assert answer == "Shapes pipelines move events from producers to\nconsumers with back-pressure."


def test_doctest_records_name_the_function_they_test(pool):
    made = shapes(pool, "lib/shapes/text.ex")
    subjects = {(r.task, made.doctest_subjects[r.id]) for r in made.records if r.task.startswith("doctest_")}
    assert ("doctest_tests", ("Shapes.Text", "shout", 1)) in subjects
    assert ("doctest_value", ("Shapes.Session", "fetch", 1)) in subjects
    assert {r.id for r in made.records if r.task.startswith("doctest_")} == set(made.doctest_subjects)
