"""Doctests written out as ExUnit tests: what `doctest Module` checks, as test code a model can learn from.

parser.exs extracts a doc's `iex>` examples (groups of steps, as ExUnit groups them); here each valid group
becomes one test. A step with an expected value becomes `assert expr == expected` (the result is bound to a
variable first when Elixir would not read `expr == expected` as that comparison, or when the expression spans
several lines), `** (Error) message` becomes `assert_raise`, and an opaque `#Name<...>` value is compared
through `inspect`; a step without one runs as a statement, so its bindings reach the next steps.
The training data (data_pipeline/instruct.py) and the doctest benchmark (eval/doctests.py) both use it.
"""

from __future__ import annotations

import re
import textwrap

from devstral_jax.elixir.parse import Doctest, Function, Module
from devstral_jax.elixir.quote import string_literal

_EXCEPTION = re.compile(r"^\*\* \(([\w.]+)\)\s?(.*)$", re.S)


def raised(expected: str) -> tuple[str, str] | None:
    """(exception, message) of an expected `** (Exception) message`, else None."""
    match = _EXCEPTION.match(expected)
    return (match[1], match[2]) if match else None


def valid_doctests(doctests: tuple[Doctest, ...]) -> list[Doctest]:
    """The doctests all of whose steps read as Elixir (some docs show shell sessions after `iex>`)."""
    return [doctest for doctest in doctests if all(step.valid for step in doctest)]


def exunit_module(module: Module, function: Function) -> str | None:
    """`<Module>Test`, one test per valid doctest of `function` that checks something; None when none does."""
    tested = [(doctest, body) for doctest in valid_doctests(function.doctests) if (body := _test_body(doctest))]
    if not tested:
        return None
    name = f"{function.name}/{function.arity}"
    blocks = [f"  test {string_literal(name + (f' (example {i})' if len(tested) > 1 else ''))} do\n"
              + textwrap.indent(body, "    ") + "\n  end" for i, (_, body) in enumerate(tested, 1)]
    header = "  use ExUnit.Case, async: true\n"
    if any(f.kind == "defmacro" and f.public for f in module.functions):
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


def _test_body(doctest: Doctest) -> str | None:
    """ExUnit statements for one doctest, or None when nothing in it can be asserted."""
    if all(step.expected is None for step in doctest):
        return None
    statements = []
    for step in doctest:
        expected = step.expected
        if expected is None:
            statements.append(step.expr)
        elif exception := raised(expected):
            name, message = exception
            message_arg = f"{string_literal(message)}, " if message and "\n" not in message else ""
            call = step.expr if "\n" not in step.expr else "\n" + textwrap.indent(step.expr, "  ") + "\n"
            statements.append(f"assert_raise {name}, {message_arg}fn -> {call} end")
        elif expected.startswith("#"):  # an opaque value (#PID<...>): compared through inspect, as doctests do
            if "\n" in step.expr or "\n" in expected:
                return None
            statements.append(f"assert inspect({step.expr}) == {string_literal(expected)}")
        elif "\n" in step.expr:  # perhaps several expressions: the last one's value is the result
            statements.append(f"result = (\n{textwrap.indent(step.expr, '  ')}\n)\n\nassert result == {expected}")
        elif step.bare_assert:
            statements.append(f"assert {step.expr} == {expected}")
        else:
            statements.append(f"result = {step.expr}\nassert result == {expected}")
    return "\n".join(statements)
