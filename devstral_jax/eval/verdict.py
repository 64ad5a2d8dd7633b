"""What running one program produced, and MultiPL-E's rule for naming it.

MultiPL-E (evaluation/src/eval_elixir.py) runs `elixir file.exs` with a timeout and labels the result:
exit 0 -> OK; else "Assertion with == failed" anywhere in the output -> AssertionError; else "SyntaxError"
anywhere in it -> SyntaxError; else Exception; no exit in time -> Timeout. We apply the same rule to the same
output, so our labels are theirs; beyond them we record what actually stopped the program.
"""

from __future__ import annotations

import dataclasses
import re

STATUSES = ("OK", "AssertionError", "SyntaxError", "Exception", "Timeout")
# Exceptions raised while a file is parsed or compiled: the program never ran.
COMPILE_ERRORS = frozenset({"SyntaxError", "TokenMissingError", "CompileError", "MismatchedDelimiterError"})


@dataclasses.dataclass(frozen=True)
class Program:
    """`prompt + completion + "\\n" + tests`, written to `file_name` and run as `elixir file_name`."""

    source: str
    file_name: str = "program.exs"
    solution: str | None = None  # prompt + completion: where compiler warnings count
    completion: str | None = None  # judged for formatting (Code.format_string! on the solution leaves it unchanged)
    tests: str | None = None  # the tests the source ends with: the pool may reuse their compiled module


@dataclasses.dataclass(frozen=True)
class Verdict:
    status: str  # one of STATUSES, by MultiPL-E's rule
    exit_code: int | None  # what `elixir file.exs` would have exited with; None when it timed out
    error: str | None  # what stopped it: an exception name, "timeout", "heap limit", "VM exited", ...
    compiled: bool  # the file parsed and compiled (no SyntaxError/TokenMissingError/CompileError)
    warnings: int  # compiler warnings located in the solution (prompt + completion)
    formatted: bool | None  # formatting the solution leaves the completion unchanged; None: not checked
    seconds: float
    stdout: str = ""
    stderr: str = ""
    # The tests' compiled module: "hit" (reused), "skip" (compiled with the file: the program cannot share it),
    # "fallback" (a reuse found the program differs at run time; the file was run whole), "off" (not tried).
    cache: str = "off"

    @property
    def passed(self) -> bool:
        return self.status == "OK"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def multipl_e_status(exit_code: int, output: str) -> str:
    """MultiPL-E's label for an `elixir file.exs` run that exited (a run cut off by the timeout is "Timeout")
    after printing `output` (stdout and stderr)."""
    if exit_code == 0:
        return "OK"
    if "Assertion with == failed" in output:
        return "AssertionError"
    if "SyntaxError" in output:
        return "SyntaxError"
    return "Exception"


_RAISED = re.compile(r"\*\* \(([A-Z][\w.]*)\)")


def raised_exception(output: str) -> str | None:
    """The first `** (Name)` an Elixir error report printed, e.g. "ArithmeticError"."""
    match = _RAISED.search(output)
    return match.group(1) if match else None


def solution_warnings(stderr: str, file_name: str, solution_lines: int) -> int:
    """Compiler warnings whose location (`file:line`) is within the first `solution_lines` lines."""
    location = re.compile(rf"(?:^|[\s/]){re.escape(file_name)}:(\d+)", re.MULTILINE)
    count = 0
    for block in re.split(r"\n\s*\n", stderr):
        block = block.strip("\n")
        if not block.startswith("warning:"):
            continue
        where = location.search(block)
        if where is None or int(where.group(1)) <= solution_lines:
            count += 1
    return count
