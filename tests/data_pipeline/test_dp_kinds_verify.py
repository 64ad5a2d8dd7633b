"""The kinds kept only after running them in the sandboxed execution pool (data_pipeline/verify.py), on the
ledger fixture package (see its README): the figures by kind and reason, and every kept repair, test and code
record run again here with plain `elixir`, outside the pipeline, to see it does what its record says."""

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from data_pipeline.config import base_config
from data_pipeline.run import run
from data_pipeline.verify import MISSING

LEDGER = Path(__file__).parent / "fixtures" / "ledger"
# Compiles lib/**/*.ex (exit 3 when it does not), then runs the test files given, as `mix test` would.
RUNNER = """
Code.compiler_options(ignore_module_conflict: true)
case Kernel.ParallelCompiler.compile(Path.wildcard("lib/**/*.ex")) do
  {:ok, _, _} -> :ok
  {:error, _, _} -> System.halt(3)
end
Code.require_file("test/test_helper.exs")
Enum.each(System.argv(), &Code.require_file/1)
"""


def records(config) -> list[dict]:
    out = Path(config.output_dir) / "jsonl"
    return [json.loads(line) for split in ("train", "validation") for line in (out / f"{split}.jsonl").read_text()
            .splitlines()]


def fenced(text: str) -> list[str]:
    return re.findall(r"```elixir\n(.*?)\n```", text, re.S)


def run_package(root: Path, files: dict[str, str], tests: list[str]) -> subprocess.CompletedProcess:
    """The ledger package with `files` replaced, compiled and its `tests` run, in a fresh copy under `root`."""
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(LEDGER, root)
    for path, text in files.items():
        (root / path).write_text(text)
    (root / "runner.exs").write_text(RUNNER)
    return subprocess.run(["elixir", "runner.exs", *tests], cwd=root, capture_output=True, text=True, timeout=300)


def with_function(path: str, line: int, original: str, replacement: str) -> str:
    """The file at `path` with the function `original` (dedented, starting at `line`) replaced."""
    lines = (LEDGER / path).read_text().split("\n")
    count = original.count("\n") + 1
    indent = re.match(r"\s*", lines[line - 1])[0]
    assert textwrap.dedent("\n".join(lines[line - 1:line - 1 + count])) == original
    new = [indent + text if text else text for text in replacement.split("\n")]
    return "\n".join(lines[:line - 1] + new + lines[line - 1 + count:])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """ledger as it is, and `ledger_web`: the same with a file that needs Plug (a Hex package that is not here),
    so the package does not compile as a whole (its copies of ledger's files are deduplicated away)."""
    root = tmp_path_factory.mktemp("packages")
    shutil.copytree(LEDGER, root / "ledger")
    shutil.copytree(LEDGER, root / "ledger_web")
    (root / "ledger_web" / "lib" / "ledger" / "web.ex").write_text(textwrap.dedent("""\
        defmodule Ledger.Web do
          @moduledoc "The ledger over HTTP."
          use Plug.Router

          @doc "Answers with the balance."
          def balance(conn, currency) do
            send_resp(conn, 200, Integer.to_string(Ledger.Server.balance(currency)))
          end
        end
        """))
    config = base_config()
    config.output_dir = str(tmp_path_factory.mktemp("out") / "out")
    config.progress = False
    config.decontam.benchmarks = ()
    config.split.validation_fraction = 0.0
    config.sources.local.licence = "LicenseRef-own-code"
    config.sources.local.paths = (str(root / "ledger"), str(root / "ledger_web"))
    return config, run(config)


def kinds(manifest, package):
    return {kind: (figures["generated"], figures["passed"], figures["kept"], figures["dropped_by_reason"])
            for kind, figures in manifest["verified"]["packages"][package]["kinds"].items()}


def test_each_kind_is_counted_generated_passed_kept_and_dropped_by_reason(built):
    _, manifest = built
    ledger = manifest["verified"]["packages"]["ledger"]
    assert ledger["package"] == "compiled"
    assert kinds(manifest, "ledger") == {
        # Ledger.Codes.code/1 calls functions named by `unquote`, which its request cannot show
        "doc_to_impl": (12, 11, 11, {"uses a function or attribute the request does not show": 1}),
        "docs_specs": (15, 15, 15, {}),
        "otp_design": (2, 2, 2, {}),
        "repair_compile": (10, 10, 10, {}),
        "repair_test": (5, 4, 4, {"tests still pass": 1}),
        # test/ledger/report_test.exs needs test/fixtures/monthly.txt, which the package does not ship
        "tests_from_code": (4, 3, 3, {MISSING: 1}),
        "code_from_tests": (4, 3, 3, {MISSING: 1}),
    }
    assert ledger["kinds"]["repair_test"]["not_mutated_by_reason"] == {"no test that passes exercises the file": 1}
    assert ledger["passed_share"] == round(48 / 52, 4)
    totals = manifest["verified"]
    assert totals["generated"] == sum(p["generated"] for p in totals["packages"].values())
    by_task = manifest["splits"]["train"]["records_by_task"]
    assert {task: by_task[task] for task in ("repair_compile", "repair_test", "tests_from_code", "code_from_tests",
                                             "otp_design")} == {"repair_compile": 10, "repair_test": 4,
                                                                "tests_from_code": 3, "code_from_tests": 3,
                                                                "otp_design": 2}


def test_a_package_that_does_not_compile_as_a_whole_is_checked_file_by_file(built):
    _, manifest = built
    web = manifest["verified"]["packages"]["ledger_web"]
    assert web["package"].startswith("not compiled: lib/ledger/web.ex:")
    assert web["kinds"]["repair_compile"]["generated"] == 10  # every other file compiles on its own
    assert web["kinds"]["repair_compile"]["not_mutated_by_reason"] == {"original does not compile here": 1}
    assert web["kinds"]["repair_test"]["not_mutated_by_reason"] == {"package does not compile on its own": 4}
    assert web["kinds"]["tests_from_code"]["dropped_by_reason"] == {
        "not run: the package does not compile on its own": 4}
    # Its doc_to_impl and its docs need Plug.Router: kept unverified (the docs did read as Elixir).
    assert web["kinds"]["doc_to_impl"]["unverified_by_reason"] == {MISSING: 1}
    assert web["kinds"]["docs_specs"]["unverified_by_reason"] == {MISSING: 1}
    assert web["kinds"]["docs_specs"]["dropped_by_reason"] == {}


def test_every_kept_repair_record_fails_as_it_says_and_its_answer_is_the_working_function(built, tmp_path):
    config, _ = built
    repairs = [r for r in records(config) if r["task"].startswith("repair_")]
    assert {r["task"] for r in repairs} == {"repair_compile", "repair_test"}
    for record in repairs:
        request, answer = record["messages"][0]["content"], record["messages"][1]["content"]
        path, line = record["source"]["path"], int(re.search(r"from line (\d+) of", request)[1])
        broken = fenced(request)[0]
        output = re.search(r"(?:says|reports):\n\n```\n(.*?)\n```", request, re.S)[1]
        original = fenced(answer)[0]
        assert broken != original
        tests = [str(p.relative_to(LEDGER)) for p in sorted((LEDGER / "test" / "ledger").glob("*_test.exs"))
                 if "report" not in p.name]
        fixed = run_package(tmp_path / "fixed", {}, tests)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        mutant = run_package(tmp_path / "mutant", {path: with_function(path, line, original, broken)}, tests)
        if record["task"] == "repair_compile":
            error = next(text for text in output.split("\n") if text.startswith("** ("))
            assert mutant.returncode == 3 and error in mutant.stdout + mutant.stderr
        else:
            failing_test = re.search(r"1\) (test .*?) \(", output)[1]
            assert mutant.returncode not in (0, 3) and failing_test in mutant.stdout, mutant.stdout


def test_every_kept_test_and_code_record_passes_against_the_real_package(built, tmp_path):
    config, _ = built
    made = [r for r in records(config) if r["task"] in ("tests_from_code", "code_from_tests")]
    assert sorted((r["task"], r["source"]["path"]) for r in made) == sorted(
        [("tests_from_code", f"test/ledger/{name}_test.exs") for name in ("book", "entry", "server")]
        + [("code_from_tests", f"lib/ledger/{name}.ex") for name in ("book", "entry", "server")])
    for record in made:
        request, answer = record["messages"][0]["content"], fenced(record["messages"][1]["content"])[0]
        if record["task"] == "tests_from_code":  # the answer is the test file, run against the real module
            test_path = record["source"]["path"]
            files = {test_path: answer + "\n"}
        else:  # the answer is the module, which the tests in the request must pass
            test_path = re.search(r"ExUnit tests \(`(\S+)`\)", request)[1]
            files = {record["source"]["path"]: answer + "\n", test_path: fenced(request)[0] + "\n"}
        result = run_package(tmp_path / "package", files, [test_path])
        assert result.returncode == 0 and " 0 failures" in result.stdout, result.stdout + result.stderr


def test_results_are_cached_per_package(built):
    """A rerun reads each package's results from output_dir/work/verify/ instead of running them again."""
    config, first = built
    cached = sorted((Path(config.output_dir) / "work" / "verify").glob("*.json"))
    assert len(cached) == 2
    for path in cached:  # mark every verified mutant as surviving: a rerun that reads the cache keeps none
        result = json.loads(path.read_text())
        for value in result["results"].values():
            if value.get("status") == "verified":
                value["status"] = "tests still pass"
        path.write_text(json.dumps(result))
    manifest = run(config)
    assert not any(r["task"].startswith("repair_") for r in records(config))
    assert kinds(manifest, "ledger")["repair_test"] == (5, 0, 0, {"tests still pass": 5})
    assert kinds(manifest, "ledger")["docs_specs"] == kinds(first, "ledger")["docs_specs"]


def test_without_verification_only_what_was_kept_before_checks_existed_is_kept(data_config):
    data_config.sources.local.paths = (str(LEDGER),)
    data_config.verify.enabled = False
    manifest = run(data_config)
    figures = manifest["verified"]["kinds"]
    assert figures["doc_to_impl"]["kept"] == 12
    assert figures["doc_to_impl"]["unverified_by_reason"] == {"not run: verification is off": 12}
    assert figures["docs_specs"]["kept"] == 0 and figures["otp_design"]["kept"] == 0
    assert figures["repair_compile"]["generated"] == 0
    assert not {"docs_specs", "otp_design", "repair_compile"} & set(manifest["splits"]["train"]["records_by_task"])
