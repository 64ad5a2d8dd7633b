"""Filters, exact and near dedup, and decontamination, alone and through the pipeline."""

import json
import random
import re
from pathlib import Path

import numpy as np
from conftest import BENCHMARK, FIXTURES
from datasketch import MinHash

from data_pipeline.decontam import MAX_SPAN_CHARS, Decontaminator, informative, load_benchmarks, normalize
from data_pipeline.dedup import exact_key
from data_pipeline.filters import FilterConfig, rejection
from data_pipeline.run import run
from devstral_jax.data.near_duplicates import CODE_TOKEN, NearDuplicates, code_tokens
from devstral_jax.eval.benchmarks import HUMANEVAL_EX, load_problems, read_jsonl

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


REAL = FIXTURES / "real"
COMPLETIONS = Path(__file__).parents[1] / "eval" / "data" / "humaneval_ex_completions.jsonl"


def correct_solutions() -> list[tuple[str, str]]:
    """(problem name, prompt + a correct hand-written completion): a real benchmark solution, as a file."""
    problems = {p.name: p for p in load_problems(HUMANEVAL_EX)}
    return [(line["name"], problems[line["name"]].prompt + line["completion"])
            for _, line in read_jsonl(COMPLETIONS) if line.get("kind") == "correct"]


def test_number_runs_are_not_benchmark_problems_but_solutions_are():
    """Nx's doc example `[0, 1, 2, ..., 15]` shares 13 tokens with HumanEval 129's tests: numbers, not a copy."""
    problems = load_benchmarks([str(HUMANEVAL_EX)])
    assert len(problems) == 161
    nx = (REAL / "nx_flatten.ex").read_text()
    old_rule = Decontaminator(problems, ngram=13, min_chars=40, min_informative=0)
    assert old_rule.find([nx]).problem == "HumanEval_129_minPath"  # what dropped nx.ex
    decontaminator = Decontaminator(problems, ngram=13, min_chars=40, min_informative=3)
    assert decontaminator.find([nx]) is None
    assert decontaminator.find([(REAL / "plug_session_cookie.ex").read_text()]) is None

    solutions = correct_solutions()
    assert len(solutions) == 16
    for name, solution in solutions:
        hit = decontaminator.find(["```elixir\n" + solution + "\n```"])
        assert hit.problem == name and hit.span, name
    for problem in load_problems(HUMANEVAL_EX):  # every prompt is caught, short docstrings too (by n-grams)
        assert decontaminator.find(["Solve this.", problem.prompt + ":ok\n  end\nend\n"]).problem == problem.name


def test_each_dropped_record_is_reported_with_its_matched_span(tmp_path, data_config):
    tree = tmp_path / "repo"
    (tree / "lib").mkdir(parents=True)
    (tree / "lib" / "nx.ex").write_text((REAL / "nx_flatten.ex").read_text())
    name, solution = correct_solutions()[1]
    (tree / "lib" / "exercise.ex").write_text(solution)
    data_config.sources.local.paths = (str(tree),)
    data_config.decontam.benchmarks = (str(HUMANEVAL_EX),)
    data_config.instruct.fim_rate = 0.0
    manifest = run(data_config)
    dropped = manifest["decontamination"]["records"]
    assert [(d["file"], d["task"], d["problem"]) for d in dropped] == [("repo:lib/exercise.ex", "file", name)]
    assert dropped[0]["rule"] == "docstring" and dropped[0]["span"] in normalize(solution)
    kept = [json.loads(line) for line in (tmp_path / "out" / "jsonl" / "train.jsonl").read_text().splitlines()]
    assert {r["source"]["path"] for r in kept} == {"lib/nx.ex"}


def normalized_line_by_line(text: str) -> str:
    lines = (re.sub(r"^\s*(#+|iex>|\.\.\.>)\s?", "", line) for line in text.lower().split("\n"))
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


def scanner(problems, ngram: int, min_chars: int, min_informative: int):
    """What decontamination finds, by its rule alone: each problem's docstring, then its signature and tests, in
    the text normalized line by line; then every window of `ngram` lower-cased tokens against the problems'."""
    grams = {}
    for p in problems:
        for window in (p.tokens[i:i + ngram] for i in range(len(p.tokens) - ngram + 1)):
            if sum(map(informative, window)) >= min_informative:
                grams.setdefault(window, p)

    def scan(texts: list[str]) -> tuple | None:
        joined = "\n".join(texts)
        haystack = normalized_line_by_line(joined)
        for p in problems:
            if len(p.docstring) >= min_chars and p.docstring in haystack:
                return p.name, "docstring", p.docstring[:MAX_SPAN_CHARS]
            if p.signature and p.assertions and p.signature in haystack and p.assertions in haystack:
                return p.name, "signature+tests", p.signature[:MAX_SPAN_CHARS]
        matches = list(CODE_TOKEN.finditer(joined))
        tokens = [m[0].lower() for m in matches]
        for i in range(len(tokens) - ngram + 1):
            if p := grams.get(tuple(tokens[i:i + ngram])):
                return p.name, "ngram", joined[matches[i].start():matches[i + ngram - 1].end()][:MAX_SPAN_CHARS]
        return None
    return scan


def test_decontamination_finds_what_a_scan_of_every_problem_and_window_finds():
    """find's shortcuts (an anchor word per searched text, n-grams looked up only in runs of their tokens, tokens
    of the UTF-8 bytes) change nothing: benchmark pieces spliced into real code, reformatted, commented out."""
    problems = load_benchmarks([str(HUMANEVAL_EX)])
    paths = [*REAL.glob("*.ex*"), *(FIXTURES / "elixir_tree").rglob("*.ex")]  # one of them Latin-1
    code = [path.read_bytes().decode("utf-8", "surrogateescape") for path in paths]
    code.append("defmodule Ünïcode do\n  # K\u212aelvin İstanbul straße\n  def größe(x), do: x\nend\n")
    rng = random.Random(0)
    texts = [[text] for text in code]
    benchmark = load_problems(HUMANEVAL_EX)
    texts += [[code[0], benchmark[0].prompt], [benchmark[-1].prompt + benchmark[-1].tests]]  # the first, the last
    for problem in benchmark:
        lines = (problem.prompt + problem.tests).split("\n")
        start = rng.randrange(len(lines))
        piece = "\n".join(lines[start:start + rng.randrange(1, 30)])
        piece = piece.replace("\n", rng.choice(["\n", "\n  # ", "\n\t", "\n iex> ", "\n...> ", "\r\n", "\n\u00a0"]))
        host = rng.choice(code)
        cut = rng.randrange(len(host) + 1)
        texts.append([host[:cut] + piece + host[cut:]])
        texts.append(["Write it.", piece.upper() if rng.random() < 0.2 else piece])
    for ngram, min_informative in [(13, 3), (6, 0)]:
        decontaminator = Decontaminator(problems, ngram=ngram, min_chars=40, min_informative=min_informative)
        found = [decontaminator.find(text) for text in texts]
        scan = scanner(problems, ngram, 40, min_informative)
        assert [hit and (hit.problem, hit.rule, hit.span) for hit in found] == [scan(text) for text in texts]
        assert {hit.rule for hit in found if hit} == {"docstring", "signature+tests", "ngram"}
    for text in texts:
        assert normalize(text[-1]) == normalized_line_by_line(text[-1])


def test_near_dedup_signatures_are_minhashes_of_the_token_shingles():
    """The shingles are hashed as bytes straight from the UTF-8 text, in no order: the same MinHash as the
    5-grams of `CODE_TOKEN` tokens joined by spaces, encoded, added in sorted order."""
    near = NearDuplicates(threshold=0.7, num_perm=256, ngram=5)
    for text in [module("Shop.Reports"), (REAL / "nx_flatten.ex").read_text(), "größe K\u212aelvin x_1 y z w v u"]:
        tokens = CODE_TOKEN.findall(text)
        plain = MinHash(num_perm=256, seed=1)
        plain.update_batch(sorted({" ".join(tokens[i:i + 5]).encode() for i in range(len(tokens) - 4)}))
        assert np.array_equal(near.signature(text).hashvalues, plain.hashvalues)
        assert code_tokens(text) == [token.encode() for token in tokens]
        assert code_tokens(text, lower=True) == [token.lower().encode() for token in tokens]
