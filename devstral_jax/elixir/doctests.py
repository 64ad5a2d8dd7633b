"""Doctests written out as ExUnit tests: what `doctest Module` checks, as test code a model can learn from.

parser.exs extracts a doc's `iex>` examples (groups of steps, as ExUnit groups them); here each valid group
becomes one test. A step with an expected value becomes `assert expr == expected` (the result is bound to a
variable first when Elixir would not read `expr == expected` as that comparison, or when the expression spans
several lines), `** (Error) message` becomes `assert_raise`, and an opaque `#Name<...>` value is compared
through `inspect`; a step without one runs as a statement, so its bindings reach the next steps. Comment lines
that open an expected value (a log line the example printed) stay comments, above the assertion. Lines inside
a multi-line string keep their indentation (parser.exs marks them), so the test checks the documented value.
The training data (data_pipeline/instruct.py) and the doctest benchmark (eval/doctests.py) both use it.
"""

from __future__ import annotations

import re

from devstral_jax.elixir.parse import Doctest, DoctestStep, Function, Module
from devstral_jax.elixir.quote import string_literal

_EXCEPTION = re.compile(r"^\*\* \(([\w.]+)\)\s?(.*)$", re.S)
_OPAQUE = re.compile(r"^#[A-Z]\w*(\.[A-Z]\w*)*<", re.A)  # ExUnit's rule for a value compared through inspect
_MACRO_KINDS = ("defmacro", "defguard")

Line = tuple[str, bool]  # a line of test code, and whether it must keep its indentation (inside a string)


def raised(expected: str) -> tuple[str, str] | None:
    """(exception, message) of an expected `** (Exception) message`, else None."""
    match = _EXCEPTION.match(expected)
    return (match[1], match[2]) if match else None


def opaque(expected: str) -> bool:
    """Whether `expected` is an opaque inspected value such as `#PID<0.1.0>` (not a `# comment`)."""
    return bool(_OPAQUE.match(expected))


def valid_doctests(doctests: tuple[Doctest, ...]) -> list[Doctest]:
    """The doctests all of whose steps read as Elixir (some docs show shell sessions after `iex>`)."""
    return [doctest for doctest in doctests if all(step.valid for step in doctest)]


def exunit_module(module: Module, function: Function) -> str | None:
    """`<Module>Test`, one test per valid doctest of `function` that checks something; None when none does."""
    tested = [(doctest, body) for doctest in valid_doctests(function.doctests) if (body := _test_body(doctest))]
    if not tested:
        return None
    name = f"{function.name}/{function.arity}"
    blocks = ["\n".join([f"  test {string_literal(name + (f' (example {i})' if len(tested) > 1 else ''))} do",
                         *(line for line, _ in _indented(body, "    ")), "  end"])
              for i, (_, body) in enumerate(tested, 1)]
    header = "  use ExUnit.Case, async: true\n"
    if any(f.kind in _MACRO_KINDS and f.public for f in module.functions):
        header += f"  require {module.name}\n"
    if imports := _imports(module, [doctest for doctest, _ in tested]):
        header += f"  import {module.name}, only: [{', '.join(f'{n}: {a}' for n, a in imports)}]\n"
    return f"defmodule {module.name}Test do\n{header}\n" + "\n\n".join(blocks) + "\nend"


def _imports(module: Module, doctests: list[Doctest]) -> list[tuple[str, int]]:
    """The module's functions the doctests call without the module name (as `doctest Mod, import: true`
    allows), which the generated tests must import. Kernel's are imported already."""
    if module.name in ("Kernel", "Kernel.SpecialForms"):
        return []
    defined = {f.name for f in module.functions if f.public}
    calls = {call for doctest in doctests for step in doctest for call in step.calls}
    return sorted((name, arity) for name, arity in calls if name in defined)


def _test_body(doctest: Doctest) -> list[Line] | None:
    """ExUnit statements for one doctest, or None when nothing in it can be asserted."""
    if all(step.expected is None for step in doctest):
        return None
    statements: list[Line] = []
    for step in doctest:
        statement = _statement(step)
        if statement is None:
            return None
        statements += statement
    return statements


def _statement(step: DoctestStep) -> list[Line] | None:
    expr = _lines(step.expr, step.expr_fixed)
    one_line = len(expr) == 1
    expected = step.expected
    if expected is None:
        return expr
    if exception := raised(expected):
        name, message = exception
        message_arg = f"{string_literal(message)}, " if message and "\n" not in message else ""
        if one_line:
            return [(f"assert_raise {name}, {message_arg}fn -> {step.expr} end", False)]
        return [(f"assert_raise {name}, {message_arg}fn ->", False), *_indented(expr, "  "), ("end", False)]
    if opaque(expected):  # compared through inspect, as doctests do
        if not one_line or "\n" in expected:
            return None
        return [(f"assert inspect({step.expr}) == {string_literal(expected)}", False)]
    value = _lines(expected, step.expected_fixed)
    comments = []
    while len(value) > 1 and value[0][0].lstrip().startswith("#"):  # a log line the example printed, then the value
        comments.append(value.pop(0))
    (first, _), rest = value[0], value[1:]
    if not one_line:  # perhaps several expressions: the last one's value is the result
        return [*comments, ("result = (", False), *_indented(expr, "  "), (")", False), ("", False),
                (f"assert result == {first}", False), *rest]
    if step.bare_assert:
        return [*comments, (f"assert {step.expr} == {first}", False), *rest]
    return [*comments, (f"result = {step.expr}", False), (f"assert result == {first}", False), *rest]


def _lines(code: str, fixed: tuple[int, ...]) -> list[Line]:
    return [(line, index in fixed) for index, line in enumerate(code.split("\n"))]


def _indented(lines: list[Line], prefix: str) -> list[Line]:
    """`lines` indented by `prefix`, except blank ones and those that must keep their indentation."""
    return [(line if fixed or not line.strip() else prefix + line, fixed) for line, fixed in lines]
