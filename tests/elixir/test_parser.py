"""The Elixir parser worker on a fixture tree: exactly the expected modules, functions, docs and doctests."""

from pathlib import Path

import pytest

from devstral_jax.elixir.parse import SourceSyntaxError, parse_source, read_erlang_terms

# The data pipeline tests' fixture tree: the parser reads it here, the pipeline makes records of it there.
TREE = Path(__file__).parents[1] / "data_pipeline" / "fixtures" / "elixir_tree" / "lib" / "my_app"


def parse(parser, name):
    return parse_source(parser, name, (TREE / name).read_bytes())


def summary(function):
    return (function.name, function.arity, function.kind, function.line, function.end_line, function.doc,
            function.spec_spans, function.impl, function.has_body)


def steps(doctests):
    return [[(step.expr, step.expected, step.valid) for step in doctest] for doctest in doctests]


def test_genserver_module(parser):
    (stack,) = parse(parser, "stack.ex").modules
    assert (stack.name, stack.kind, stack.line, stack.end_line) == ("MyApp.Stack", "defmodule", 1, 33)
    assert stack.moduledoc == "A stack held by a GenServer process.\n\nPush and pop values from any process.\n"
    assert stack.moduledoc_span == (2, 6)
    assert stack.uses == ("GenServer",) and stack.behaviours == ()
    assert [summary(f) for f in stack.functions] == [
        ("start_link", 1, "def", 13, 15, "Starts the stack with an initial list of values.\n", ((12, 12),), None, True),
        ("push", 2, "def", 19, 19, "Pushes `value` on top of the stack.", ((18, 18),), None, True),
        ("pop", 1, "def", 22, 22, "Pops the top value, or returns `nil` when the stack is empty.", (), None, True),
        ("init", 1, "def", 25, 25, None, (), True, True),
        ("handle_cast", 2, "def", 28, 28, None, (), True, True),
        ("handle_call", 3, "def", 31, 32, None, (), "GenServer", True),  # two clauses, one function
    ]
    assert stack.functions[0].signature == "start_link(initial)"


def test_application_and_supervisor_in_one_file(parser):
    application, supervisor = parse(parser, "application.ex").modules
    assert (application.name, application.moduledoc, application.uses) == ("MyApp.Application", False, ("Application",))
    assert [summary(f) for f in application.functions] == [("start", 2, "def", 6, 8, None, (), True, True)]
    assert (supervisor.name, supervisor.line, supervisor.end_line) == ("MyApp.Supervisor", 11, 24)
    assert (supervisor.moduledoc, supervisor.uses) == ("Supervises the stack.", ("Supervisor",))
    assert [summary(f) for f in supervisor.functions] == [
        ("start_link", 1, "def", 15, 17, None, (), None, True),
        ("init", 1, "def", 20, 23, None, (), True, True),
    ]


def test_doctests_functions_macros_and_nested_modules(parser):
    math, vector = parse(parser, "math.ex").modules
    assert steps(math.doctests) == [[("MyApp.Math.double(21)", "42", True)]]
    assert [summary(f)[:5] for f in math.functions] == [
        ("sum", 1, "def", 27, 27), ("double", 1, "def", 37, 37), ("internal", 1, "def", 40, 40),
        ("helper", 2, "defp", 42, 44), ("twice", 1, "defmacro", 46, 51)]
    sum_, double, internal, helper, _ = math.functions
    assert steps(sum_.doctests) == [
        [("MyApp.Math.sum([1, 2, 3])", "6", True)],
        [("xs = [10, 20]", None, True), ("MyApp.Math.sum(xs)", "30", True)],
        [("MyApp.Math.sum([1,\n  2])", "3", True)],
    ]
    assert steps(double.doctests) == [[
        ("MyApp.Math.double(2)", "4", True),
        ("MyApp.Math.double(:a)", "** (ArithmeticError) bad argument in arithmetic expression", True)]]
    assert internal.doc is False and not internal.public
    assert helper.signature == "helper(x, y \\\\ 1)" and not helper.public
    assert (vector.name, vector.line, vector.end_line) == ("MyApp.Math.Vector", 53, 59)
    assert vector.moduledoc == "2-D vectors."
    assert [summary(f)[:6] for f in vector.functions] == [("add", 2, "def", 58, 58, "Adds two vectors.")]


def test_where_definitions_start_their_clauses_and_nesting(parser):
    (stack,) = parse(parser, "stack.ex").modules
    assert {f.name: (f.doc_line, f.do_line, f.clauses) for f in stack.functions} == {
        "start_link": (9, 13, 1), "push": (17, None, 1), "pop": (21, None, 1), "init": (None, None, 1),
        "handle_cast": (None, None, 1), "handle_call": (None, None, 2)}  # `do:` bodies have no do_line
    math, vector = parse(parser, "math.ex").modules
    assert (math.parent, vector.parent) == (None, "MyApp.Math")
    assert [(f.name, f.doc_line, f.do_line) for f in math.functions][3:] == [("helper", None, 42), ("twice", None, 46)]
    assert [[step.bare_assert for step in doctest] for doctest in math.functions[0].doctests] == [
        [True], [False, True], [True]]  # a step without an expected value asserts nothing


def test_behaviours_protocols_and_implementations(parser):
    job, echo, protocol, implementation = parse(parser, "job.ex").modules
    assert (job.name, job.functions) == ("MyApp.Job", ())
    assert echo.behaviours == ("MyApp.Job",)
    assert [summary(f) for f in echo.functions] == [("run", 1, "def", 10, 10, None, (), "MyApp.Job", True)]
    assert (protocol.name, protocol.kind) == ("MyApp.Describe", "defprotocol")
    assert [summary(f) for f in protocol.functions] == [
        ("describe", 1, "def", 15, 15, "Describes a value.", (), None, False)]
    assert (implementation.name, implementation.kind) == ("MyApp.Describe.Integer", "defimpl")


def test_syntax_errors_and_non_utf8_are_reported_not_fatal(parser):
    with pytest.raises(SourceSyntaxError, match="syntax error at line 5: .*missing terminator"):
        parse(parser, "broken.ex")
    with pytest.raises(SourceSyntaxError, match="not valid UTF-8"):
        parse(parser, "latin1.ex")
    assert parse(parser, "stack.ex").modules[0].name == "MyApp.Stack"  # the workers are still fine


def test_doctest_steps_that_are_not_elixir_are_marked(parser):
    source = '''defmodule Shell do
  @doc """
      iex> Shell.run("ls")
      * creating file
      iex> Shell.add(1, 2) |> double()
      6
  """
  def run(cmd), do: cmd
end
'''
    (module,) = parse_source(parser, "shell.ex", source).modules
    (doctest,) = module.functions[0].doctests
    assert [(s.valid, s.calls) for s in doctest] == [(False, ()), (True, (("double", 1),))]  # piped: double/1


def test_erlang_terms_are_read_by_erlang(parser):
    text = '{<<"name">>,<<"jason">>}.\n{<<"licenses">>,[<<"Apache 2.0">>]}.\n{<<"n">>, 3}.\n'
    assert read_erlang_terms(parser, text) == [("name", "jason"), ("licenses", ["Apache 2.0"]), ("n", 3)]
    with pytest.raises(ValueError, match="missing its final"):
        read_erlang_terms(parser, '{<<"name">>,<<"jason">>}')
    with pytest.raises(ValueError, match="syntax error"):
        read_erlang_terms(parser, "{a,,}.")


# A package modelled on real cases (see its README); the data pipeline tests make records of it.
SHAPES = Path(__file__).parents[1] / "data_pipeline" / "fixtures" / "shapes"


def shapes(parser, path):
    return {m.name: m for m in parse_source(parser, path, (SHAPES / path).read_bytes()).modules}


def clauses(module):
    return {(f.name, f.arity): (f.kind, f.clauses, f.span) for f in module.functions}


def test_generated_clauses_are_one_function_that_cannot_be_shown(parser):
    """Postgrex.Utils.default_extension?/1: a `for` generates clauses before a fallback clause. All of them are
    one function, with the @doc written before the `for`, and no span shows it faithfully."""
    extensions = shapes(parser, "lib/shapes/extensions.ex")["Shapes.Extensions"]
    assert clauses(extensions) == {
        ("default_extension?", 1): ("def", 2, None),  # the generated clause and the fallback
        ("default_extensions", 1): ("def", 1, (20, 22)),
    }  # `def unquote(name)()` names no function that can be known before the code runs
    assert extensions.functions[0].doc == "Checks if a given extension is a default extension.\n"


def test_definitions_inside_conditionals_delegations_guards_and_macros(parser):
    fields = shapes(parser, "lib/shapes/fields.ex")["Shapes.Fields"]
    assert clauses(fields) == {
        ("new", 1): ("def", 2, (15, 23)),  # both branches of the `if`: the whole conditional shows it
        ("set_label", 1): ("def", 2, None),  # its `if` also defines labels_supported?/0
        ("labels_supported?", 0): ("def", 2, None),
        ("get_values", 2): ("def", 2, (40, 48)),  # a bodiless head, then two clauses
        ("join", 2): ("defdelegate", 0, (51, 51)),
        ("is_name", 1): ("defguard", 1, (54, 54)),
        ("put_new", 3): ("defmacro", 1, (57, 61)),  # the `def`-free quote inside is not the module's
    }
    by_name = {f.name: f for f in fields.functions}
    assert by_name["new"].doc.startswith("Returns fields") and by_name["new"].doctests
    assert by_name["set_label"].doc.startswith("Sets the label") and by_name["labels_supported?"].doc is None
    assert by_name["join"].delegate == "Shapes.Text.join_all" and by_name["join"].public
    assert all(by_name[name].public for name in ("is_name", "put_new"))


def test_nx_numerical_definitions_are_functions(parser):
    source = '''defmodule Softmax do
  import Nx.Defn

  @doc "The softmax of a tensor."
  defn softmax(t) do
    Nx.exp(t) / Nx.sum(Nx.exp(t))
  end

  defnp norm(t), do: t / Nx.sum(t)
end
'''
    (module,) = parse_source(parser, "softmax.ex", source).modules
    assert [(f.name, f.kind, f.public, f.has_body, f.span) for f in module.functions] == [
        ("softmax", "defn", True, True, (5, 7)), ("norm", "defnp", False, True, (9, 9))]


def test_doctest_declarations_of_a_test_module(parser):
    """`alias Jason.{A, B}` then `doctest B, except: [...]`, as jason's and req's test files write them."""
    (test_module, _) = shapes(parser, "test/shapes_test.exs").values()
    assert [(d.module, d.only, d.excluded) for d in test_module.doctested] == [
        ("Shapes.Fields", None, ()), ("Shapes.Text", None, (("whisper", 1),))]
    fields, text = test_module.doctested
    assert text.covers("Shapes.Text", "shout", 1) and not text.covers("Shapes.Text", "whisper", 1)
    assert fields.covers("Shapes.Fields", "new", 1) and not fields.covers("Shapes.Text", "new", 1)
    source = ("defmodule ReqTest do\n  use ExUnit.Case\n  alias Req.Steps, as: S\n"
              "  doctest S, only: [put_params: 1]\nend\n")
    (module,) = parse_source(parser, "req_test.exs", source).modules
    assert [(d.module, d.only) for d in module.doctested] == [("Req.Steps", (("put_params", 1),))]
