"""tests_from_code and code_from_tests: a lib module and the package's own test file for it, each way round.

A test file is paired with the lib file it tests by the convention of Elixir projects (`test/a/b_test.exs`
tests `lib/a/b.ex`, also inside an umbrella's apps), or else by its module (`A.BTest` tests `A.B`). The pair
is kept only where the test file passes against the package's real code (verify.py runs it): then the tests
are a right answer for the module, and the module for the tests.
"""

from __future__ import annotations

import dataclasses
import re

from data_pipeline.kinds.records import elixir, record
from devstral_jax.data.records import Record, Source

_TEST_PATH = re.compile(r"^(?P<root>(?:.*/)?)test/(?P<rel>.+)_test\.exs$")


@dataclasses.dataclass(frozen=True)
class Pair:
    test_path: str
    lib_path: str
    module: str  # the module the tests are for


def conventional_lib_path(test_path: str) -> str | None:
    """`lib/a/b.ex` for `test/a/b_test.exs` (also under an umbrella app's folder); None for another name."""
    match = _TEST_PATH.match(test_path)
    return f"{match['root']}lib/{match['rel']}.ex" if match else None


def pairs(lib: dict[str, list[str]], tests: dict[str, list[str]]) -> list[Pair]:
    """`lib`: lib file -> the modules it defines; `tests`: test file -> the modules it defines."""
    defined_in = {module: path for path, modules in lib.items() for module in modules}
    found = []
    for test_path, test_modules in sorted(tests.items()):
        lib_path = conventional_lib_path(test_path)
        if lib_path is None:
            continue
        subjects = [m.removesuffix("Test") for m in test_modules if m.endswith("Test")]
        if lib_path not in lib:
            lib_path = next((defined_in[s] for s in subjects if s in defined_in), None)
        if lib_path is None:
            continue
        module = next((s for s in subjects if s in lib[lib_path]), lib[lib_path][0] if lib[lib_path] else None)
        if module:
            found.append(Pair(test_path, lib_path, module))
    return found


def pair_records(pair: Pair, lib_source: Source, lib_text: str, test_source: Source, test_text: str,
                 max_chars: int) -> list[Record]:
    """Both records of a pair, or none when the two files together are longer than `max_chars`."""
    if len(lib_text) + len(test_text) > max_chars:
        return []
    tests_request = f"Write ExUnit tests for the Elixir module `{pair.module}` (`{pair.lib_path}`):\n\n" \
                    f"{elixir(lib_text)}"
    code_request = (f"Write the Elixir module `{pair.module}` (`{pair.lib_path}`) so that these ExUnit tests "
                    f"(`{pair.test_path}`) pass:\n\n{elixir(test_text)}")
    return [record("tests_from_code", test_source, messages=(tests_request, elixir(test_text))),
            record("code_from_tests", lib_source, messages=(code_request, elixir(lib_text)))]
