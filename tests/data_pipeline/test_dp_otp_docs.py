"""The OTP docs source: records from the installed Elixir's own modules, and their tests really pass."""

import json
import re
import subprocess

import pytest

from data_pipeline.run import run

CHECKED_MODULES = ("Enum", "String", "Map", "Keyword", "List", "Integer")


@pytest.fixture(scope="module")
def otp_records(tmp_path_factory):
    from data_pipeline.config import base_config

    config = base_config()
    config.output_dir = str(tmp_path_factory.mktemp("otp") / "out")
    config.progress = False
    config.decontam.benchmarks = ()
    config.sources.otp_docs.update(enabled=True, apps=("elixir",))
    manifest = run(config)
    records = [json.loads(line) for split in ("train", "validation")
               for line in open(f"{config.output_dir}/jsonl/{split}.jsonl")]
    return manifest, records


def test_builds_records_from_the_installed_modules(otp_records):
    manifest, records = otp_records
    (unit,) = manifest["units"]
    assert unit["id"].startswith("otp_docs/elixir/1.") and unit["licence"]["licence"] == "Apache-2.0"
    paths = {r["source"]["path"] for r in records}
    assert {"lib/elixir/lib/enum.ex", "lib/elixir/lib/string.ex", "lib/elixir/lib/map.ex"} <= paths

    by_task = {}
    for record in records:
        by_task.setdefault(record["task"], []).append(record)
    assert {"file", "doctest_tests", "doctest_value", "module_explain"} <= set(by_task)
    values = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in by_task["doctest_value"]}
    question = "What does this Elixir code return?\n\n```elixir\nEnum.all?([1, 2, 3])\n```"
    assert values[question] == "```elixir\ntrue\n```"
    explained = {r["messages"][0]["content"].split("`")[1]: r for r in by_task["module_explain"]}
    assert "Functions for working with collections" in explained["Enum"]["messages"][1]["content"]
    enum_file = next(r["text"] for r in by_task["file"] if r["source"]["path"] == "lib/elixir/lib/enum.ex")
    assert "  @spec all?(t()) :: boolean()\n  def all?(enumerable)\n" in enum_file
    assert manifest["splits"]["train"]["tekken_tokens"] > 100_000


def test_generated_tests_pass_under_exunit(otp_records, tmp_path):
    _, records = otp_records
    modules = []
    for record in records:
        if record["task"] != "doctest_tests":
            continue
        code = re.search(r"```elixir\n(.*)\n```", record["messages"][1]["content"], re.S)[1]
        tested = re.match(r"defmodule (\S+)Test do", code)[1]
        if tested in CHECKED_MODULES:
            modules.append(code.replace(f"defmodule {tested}Test do", f"defmodule Generated{len(modules)}Test do"))
    assert len(modules) > 150
    script = tmp_path / "generated_test.exs"
    script.write_text("ExUnit.start()\n" + "\n".join(modules))
    result = subprocess.run(["elixir", str(script)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tests = int(re.search(r"(\d+) tests, 0 failures", result.stdout)[1])
    assert tests > 150
