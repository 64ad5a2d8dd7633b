"""Doctest records are kept only where the package runs its doctests, and checked by running them against the
package's own compiled code in the sandboxed execution pool (the shapes fixture package: see its README)."""

import json
import shutil
from pathlib import Path

import pytest

from data_pipeline.doctest_check import (
    FAILED,
    MISSING,
    NO_TESTS,
    NOT_DECLARED,
    Check,
    CheckConfig,
    runtime_dependencies,
)
from data_pipeline.run import run
from data_pipeline.shards import MIRROR_DIR

SHAPES = Path(__file__).parent / "fixtures" / "shapes"


def doctest_records(out: Path) -> dict[str, set[str]]:
    """Per package, the functions whose doctest_tests records reached the shards (the copies of shapes are
    deduplicated away: only shapes' own records can get there)."""
    tested = {}
    for split in ("train", "validation"):
        for line in (out / MIRROR_DIR / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record["task"] == "doctest_tests":
                function = record["messages"][0]["content"].split("`")[1]
                tested.setdefault(record["source"]["package"], set()).add(function)
    return tested


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """shapes as it is; `untested`, the same without its test files (like a Hex tarball); `with_deps`, the
    same with a runtime dependency in its mix.exs."""
    root = tmp_path_factory.mktemp("packages")
    shutil.copytree(SHAPES, root / "shapes")
    shutil.copytree(SHAPES, root / "untested", ignore=shutil.ignore_patterns("test"))
    shutil.copytree(SHAPES, root / "with_deps")
    mix = root / "with_deps" / "mix.exs"
    mix.write_text(mix.read_text().replace("[\n      {:ex_doc", '[\n      {:mime, "~> 2.0"},\n      {:ex_doc'))
    return root


@pytest.fixture(scope="module")
def checked(packages, tmp_path_factory):
    from data_pipeline.config import base_config

    config = base_config()
    config.output_dir = str(tmp_path_factory.mktemp("out") / "out")
    config.progress = False
    config.decontam.benchmarks = ()
    config.split.validation_fraction = 0.0
    config.sources.local.paths = tuple(str(packages / name) for name in ("shapes", "untested", "with_deps"))
    config.sources.local.licence = "LicenseRef-own-code"  # the hand-made packages have no licence file
    return config, run(config)


def test_only_doctests_the_package_runs_are_kept_and_failing_ones_are_dropped(checked):
    config, manifest = checked
    shapes = manifest["doctests"]["packages"]["shapes"]
    # Run: new/1 and join_all/2 pass, shout/1's example is wrong; read_fixture/1 needs a file the package's
    # tests have (kept: the package runs it); whisper/1 (`except:`) and Shapes.Session (never doctested) are not run.
    assert shapes == {"kept": 3, "run": 3, "passed": 2,
                      "dropped_by_reason": {FAILED: 1, NOT_DECLARED: 2},
                      "not_run_by_reason": {MISSING.removeprefix("not run: "): 1}, "values_dropped": 3}
    assert doctest_records(Path(config.output_dir))["shapes"] == {
        "Shapes.Fields.new/1", "Shapes.Text.join_all/2", "Shapes.Text.read_fixture/1"}


def test_a_package_without_tests_keeps_the_doctests_that_pass_here(checked):
    _, manifest = checked
    untested = manifest["doctests"]["packages"]["untested"]
    # Every doctest is run; `Shapes.Session.fetch(conn)` does not even compile (`conn` is a placeholder).
    # Kept: new/1, join_all/2 and whisper/1.
    assert untested == {"kept": 3, "run": 5, "passed": 3, "dropped_by_reason": {FAILED: 2, NO_TESTS: 1},
                        "not_run_by_reason": {}, "values_dropped": 3}


def test_a_package_with_runtime_dependencies_is_not_run(checked):
    config, manifest = checked
    assert manifest["doctests"]["packages"]["with_deps"] == {
        "kept": 4, "run": 0, "passed": 0, "dropped_by_reason": {NOT_DECLARED: 2},
        "not_run_by_reason": {"depends on Hex packages": 4}, "values_dropped": 2}
    totals = manifest["doctests"]
    assert (totals["kept"], totals["run"], totals["passed"]) == (10, 8, 5)
    assert "- Doctest tests: kept 10, run 8, passed 5; dropped: " in (Path(config.output_dir) / "report.md").read_text()


def test_results_are_cached_per_package(checked):
    """A rerun reads each package's results from output_dir/work/doctests/ instead of running them again."""
    config, _ = checked
    cached = sorted((Path(config.output_dir) / "work" / "doctests").glob("*.json"))
    assert len(cached) == 3
    for path in cached:  # mark every passing test as failing: a rerun that reads the cache drops them
        result = json.loads(path.read_text())
        result["results"] = {k: "failed: edited" if v == "passed" else v for k, v in result["results"].items()}
        path.write_text(json.dumps(result))
    manifest = run(config)
    assert manifest["doctests"]["passed"] == 0 and manifest["doctests"]["kept"] == 5  # 4 of them in with_deps
    assert doctest_records(Path(config.output_dir))["shapes"] == {"Shapes.Text.read_fixture/1"}


@pytest.mark.parametrize("mix_exs, expected", [
    # plug's: a version given by a function, and tools only needed for docs
    ('defp deps do\n  [\n    {:mime, "~> 1.0 or ~> 2.0"},\n    {:plug_crypto, plug_crypto_version()},\n'
     '    {:telemetry, "~> 0.4.3 or ~> 1.0"},\n    {:ex_doc, "~> 0.21", only: :docs}\n  ]\nend',
     ["mime", "plug_crypto", "telemetry"]),
    # jason's: an optional dependency, and dev/test tools
    ('[\n  {:decimal, "~> 1.0 or ~> 2.0", optional: true},\n  {:dialyxir, "~> 1.0", only: [:dev, :test], '
     'runtime: false},\n  {:stream_data, "~> 1.0", only: :test}\n]', []),
    ('[{:local, path: "../local"}, {:ecto, github: "elixir-ecto/ecto"}, {:x, "~> 1.0", only: [:dev, :prod]}]',
     ["ecto", "local", "x"]),
])
def test_runtime_dependencies_of_a_mix_file(mix_exs, expected):
    assert runtime_dependencies(mix_exs) == expected


def test_a_package_is_checked_as_soon_as_it_is_collected_with_the_same_verdicts(checked, tmp_path):
    """A package's check starts when its units are collected and the listing has moved past it (while the rest is
    collected); a package with a unit saved by an earlier run is left to the end. The verdicts are those of a
    check run entirely at the end."""
    config, _ = checked
    results = [json.loads(path.read_text()) for path in sorted((Path(config.output_dir) / "work/units").glob("*"))]
    by_package = {result["unit"]["package"]: result for result in results}
    key = {name: (result["unit"]["kind"], name, result["unit"]["version"]) for name, result in by_package.items()}
    check_config = CheckConfig(**config.doctests)

    with Check(check_config, 2, tmp_path / "early") as check:
        check.listed(key["shapes"], saved=False)
        check.collected(by_package["shapes"])
        check.listed(key["untested"], saved=True)  # listed after shapes: shapes is complete
        check.listed(key["with_deps"], saved=False)
        check.collected(by_package["with_deps"])  # not complete: the listing has not moved past it
    early = {cached.name for cached in (tmp_path / "early" / "work" / "doctests").glob("*.json")}
    assert len(early) == 1  # shapes', written by its run, which the end of the `with` waited for

    with Check(check_config, 2, tmp_path / "early") as check:
        for package in ("shapes", "untested", "with_deps"):
            check.listed(key[package], saved=False)
            check.collected(by_package[package])
        check.listing_done()
        verdicts = check.verdicts(results)
    with Check(check_config, 2, tmp_path / "late") as check:
        at_the_end = check.verdicts(results)
    assert (verdicts.summary(), verdicts.dropped) == (at_the_end.summary(), at_the_end.dropped)
    assert verdicts.summary()["packages"]["shapes"]["passed"] == 2
    cached = {path.name for path in (tmp_path / "early" / "work" / "doctests").glob("*.json")}
    assert cached == {path.name for path in (tmp_path / "late" / "work" / "doctests").glob("*.json")} > early
