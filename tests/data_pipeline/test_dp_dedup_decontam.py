"""Filters, exact and near dedup, and decontamination, alone and through the pipeline."""

import json

from conftest import BENCHMARK

from data_pipeline.decontam import Decontaminator, load_benchmarks, normalize
from data_pipeline.dedup import NearDuplicates, exact_key
from data_pipeline.filters import FilterConfig, rejection
from data_pipeline.run import run

FUNCTIONS = [
    ("total", "items", "Enum.reduce(items, 0, fn item, acc -> item.price * item.quantity + acc end)"),
    ("names", "users", "users |> Enum.map(& &1.name) |> Enum.sort()"),
    ("adults", "people", "Enum.filter(people, fn person -> person.age >= 18 end)"),
    ("index", "records", "Map.new(records, fn record -> {record.id, record} end)"),
    ("longest", "words", "Enum.max_by(words, &String.length/1, fn -> nil end)"),
    ("histogram", "letters", "Enum.frequencies(letters) |> Enum.sort_by(fn {_k, v} -> -v end)"),
    ("chunks", "entries", "entries |> Enum.chunk_every(10) |> Enum.map(&Enum.sum/1)"),
    ("flatten_tags", "posts", "posts |> Enum.flat_map(& &1.tags) |> Enum.uniq()"),
    ("by_owner", "accounts", "Enum.group_by(accounts, & &1.owner_id, & &1.balance)"),
    ("first_error", "results", "Enum.find(results, &match?({:error, _}, &1))"),
    ("trimmed", "lines", "lines |> Enum.map(&String.trim/1) |> Enum.reject(&(&1 == \"\"))"),
    ("pairs", "values", "Enum.zip(values, tl(values) ++ [nil])"),
]


def module(name: str, functions=FUNCTIONS) -> str:
    body = "\n\n".join(f"  @doc \"Computes {fun} from the given {arg}.\"\n  def {fun}({arg}) do\n    {code}\n  end"
                       for fun, arg, code in functions)
    return f"defmodule {name} do\n  @moduledoc \"Reports over shop data.\"\n\n{body}\nend\n"


def renamed(source: str) -> str:
    """The same module with one function's variable renamed."""
    return source.replace("adults(people)", "adults(folks)").replace("Enum.filter(people,", "Enum.filter(folks,")


CONTAMINATED = '''defmodule Contaminated do
  @doc """
  Check if in given list of numbers, are any two numbers closer to each other than
  given threshold.
  """
  def close?(numbers, threshold), do: Enum.any?(numbers, &(&1 < threshold))
end
'''

TESTS_COPIED = '''defmodule Copied do
  def filter_by_substring(strings, substring) do
    Enum.filter(strings, &String.contains?(&1, substring))
  end

  def check do
    assert [] == HumanEval.candidate([], "john")
    assert ["xxx", "xxxAAA", "xxx"] == HumanEval.candidate(["xxx", "asd", "xxy", "john doe", "xxxAAA", "xxx"], "xxx")
  end
end
'''


def test_near_duplicates_with_renamed_variables():
    near = NearDuplicates(threshold=0.7, num_perm=256, ngram=5)
    original = module("Shop.Reports")
    assert near.duplicate_of("a", original) is None
    assert near.duplicate_of("b", renamed(original)) == "a"
    assert near.duplicate_of("c", module("Shop.Other", FUNCTIONS[:5])) is None  # shares 5 of 12 functions
    assert exact_key(original) == exact_key(original.replace("\n", "  \r\n").replace("end\n\n", "end\n\n\n"))
    assert exact_key(original) != exact_key(renamed(original))


def test_decontamination_rules():
    problems = load_benchmarks([str(BENCHMARK)])
    assert [p.name for p in problems] == ["HumanEval_0_has_close_elements", "HumanEval_7_filter_by_substring",
                                          "HumanEval_14_all_prefixes"]
    first = problems[0]
    assert first.docstring.startswith("check if in given list of numbers, are any two numbers closer")
    assert first.signature == "def has_close_elements(numbers, threshold) do"
    decontaminator = Decontaminator(problems, ngram=13, min_chars=40, min_informative=3)
    hit = decontaminator.find([CONTAMINATED])
    assert (hit.problem, hit.rule) == ("HumanEval_0_has_close_elements", "docstring")
    hit = decontaminator.find([TESTS_COPIED])
    assert (hit.problem, hit.rule) == ("HumanEval_7_filter_by_substring", "ngram")
    prompt_and_tests = json.loads(BENCHMARK.read_text().splitlines()[2])
    solution = prompt_and_tests["prompt"].replace("#", "") + "Enum.scan(...)\n" + prompt_and_tests["tests"]
    assert decontaminator.find(["unrelated", solution]).problem == "HumanEval_14_all_prefixes"
    assert decontaminator.find([module("Shop.Reports"), TESTS_COPIED.split("  def check")[0]]) is None
    assert normalize("  # Check IF\n#   in  given\n") == "check if in given"


def test_filters():
    config = FilterConfig(min_chars=20, max_chars=10_000, max_line_length=200, max_mean_line_length=80,
                          min_alnum_ratio=0.25, excluded_dirs=("deps", "priv/static"),
                          generated_markers=("do not edit",), generated_marker_lines=3)
    good = module("Shop.Reports")
    assert rejection("lib/shop.ex", good, config) is None
    assert rejection("deps/jason/lib/jason.ex", good, config).startswith("excluded path")
    assert rejection("apps/web/priv/static/x.ex", good, config).startswith("excluded path")
    assert rejection("lib/x.ex", "# DO NOT EDIT: generated\n" + good, config).startswith("generated")
    assert rejection("lib/x.ex", "x = 1", config).startswith("too small")
    assert rejection("lib/x.ex", good + "# " + "a" * 300 + "\n", config).startswith("long line")
    assert rejection("lib/x.ex", "@data <<" + ", ".join(["0"] * 3000) + ">>\n", config).startswith("long line")
    assert rejection("lib/x.ex", "# " + "=" * 60 + "\n" + "-" * 60 + "\n" + "\n" * 3 + "x\n", config) \
        .startswith("low alphanumeric ratio")


def test_pipeline_drops_duplicates_and_contaminated_records(tmp_path, data_config):
    tree = tmp_path / "shop"
    (tree / "lib").mkdir(parents=True)
    original = module("Shop.Reports")
    (tree / "lib" / "a_reports.ex").write_text(original)
    (tree / "lib" / "b_reports_copy.ex").write_text(original.replace("\n", "   \n"))  # exact after normalizing
    (tree / "lib" / "c_reports_renamed.ex").write_text(renamed(original))  # near duplicate
    (tree / "lib" / "d_contaminated.ex").write_text(CONTAMINATED)
    (tree / "lib" / "e_copied_tests.ex").write_text(TESTS_COPIED)
    (tree / "lib" / "f_other.ex").write_text(module("Shop.Other", FUNCTIONS[:4]))
    data_config.sources.local.paths = (str(tree),)
    data_config.instruct.fim_rate = 0.0
    manifest = run(data_config)

    dedup = manifest["dedup"]
    assert (dedup["exact_files"], dedup["near_files"]) == (1, 1)
    removed = {d["file"].split(":")[1]: (d["rule"], d["duplicate_of"].split(":")[1]) for d in dedup["removed_files"]}
    assert removed == {"lib/b_reports_copy.ex": ("exact", "lib/a_reports.ex"),
                       "lib/c_reports_renamed.ex": ("near", "lib/a_reports.ex")}
    dropped = {(d["file"].split(":")[1], d["task"], d["rule"]) for d in manifest["decontamination"]["records"]}
    assert ("lib/d_contaminated.ex", "file", "docstring") in dropped
    assert ("lib/d_contaminated.ex", "doc_to_impl", "docstring") in dropped
    assert ("lib/e_copied_tests.ex", "file", "ngram") in dropped
    assert manifest["decontamination"]["benchmarks"] == {"humaneval_ex_3.jsonl": 3}

    records = [json.loads(line) for split in ("train", "validation")
               for line in (tmp_path / "out" / "jsonl" / f"{split}.jsonl").read_text().splitlines()]
    files = sorted(r["source"]["path"] for r in records if r["task"] == "file")
    assert files == ["lib/a_reports.ex", "lib/f_other.ex"]
    assert not any("closer to each other" in json.dumps(r) for r in records)
    assert len({r["id"] for r in records}) == len(records)
