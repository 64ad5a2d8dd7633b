"""repair: a function with one real mistake, and what the compiler or ExUnit said about it -> the function.

verify.exs makes the mistakes (a misspelt variable, a call with the wrong arity, a missing `end`: compile
errors; a swapped operator, a dropped clause: test failures) as edits of whole lines, and keeps a mutant only
when the original compiles (and passes the tests) and the mutant does not: the output in the request is what
running it printed. Here the edit is applied to the same text to show the broken function.
"""

from __future__ import annotations

import textwrap
from typing import Any

from data_pipeline.kinds.records import elixir, fenced, record
from devstral_jax.data.records import Record, Source


def mutated_lines(lines: list[str], edit: list[Any]) -> list[str]:
    """`lines` with lines first..last (1-based) replaced by the edit's new lines."""
    first, last, replacement = edit
    return lines[:first - 1] + list(replacement) + lines[last:]


def repair_record(source: Source, text: str, mutant: dict[str, Any], mode: str) -> Record:
    lines = text.split("\n")
    first, last = mutant["span"]
    edit_first, edit_last, replacement = mutant["edit"]
    new_last = last + len(replacement) - (edit_last - edit_first + 1)
    original = textwrap.dedent("\n".join(lines[first - 1:last])).strip("\n")
    broken = textwrap.dedent("\n".join(mutated_lines(lines, mutant["edit"])[first - 1:new_last])).strip("\n")
    name = f"`{mutant['module']}.{mutant['function']}/{mutant['arity']}`"
    where = f"from line {first} of `{source.path}`"
    if mode == "compile":
        request = (f"This Elixir function, {name} {where}, does not compile:\n\n{elixir(broken)}\n\n"
                   f"The compiler says:\n\n{fenced(mutant['output'])}\n\nFix the function.")
    else:
        request = (f"This Elixir function, {name} {where}, makes the package's tests fail:\n\n{elixir(broken)}\n\n"
                   f"ExUnit reports:\n\n{fenced(mutant['output'])}\n\nFix the function.")
    return record(f"repair_{mode}", source, messages=(request, elixir(original)))
