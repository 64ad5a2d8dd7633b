"""Two figures of a built dataset that its manifest does not hold, read from its JSONL mirror.

    python benchmarks/record_checks.py --data=out/data [--output=benchmarks/results/record_checks.json]

  unshown calls   the share of doc_to_impl answers that call a function the request+answer never show: every
                  call without a module in the answer (Kernel's aside, as the real Elixir parser reads it) must
                  be defined in the answer, defined or declared in a code block of the request, or named there
                  as `name/arity`. A call that an `import`/`use` shown in the request may cover is counted
                  apart ("maybe imported"), as nothing here can tell what the imported module defines.
  FIM duplicates  Tekken tokens of FIM prefixes and suffixes that repeat text of their file's own text record
                  (the file is in the data once already), against the tokens of those text records.
"""

import collections
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from a checkout

from absl import app, flags  # noqa: E402

from devstral_jax.elixir.parse import SourceSyntaxError, parse_source, parser_pool  # noqa: E402
from devstral_jax.tokenizers.tekken import load_tekken  # noqa: E402

_DATA = flags.DEFINE_string("data", None, "A dataset folder written by launch/prepare_data.py.", required=True)
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/record_checks.json", "Where the JSON results go.")

_BLOCK = re.compile(r"```elixir\n(.*?)\n```", re.S)
_NAMED = re.compile(r"`([a-z_][a-zA-Z0-9_]*[?!]?)/(\d+)`")


def records(data: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((data / "jsonl").glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def definitions(pool, code: str) -> tuple[set[tuple[str, int]], set[tuple[str, int]], bool]:
    """(functions defined or declared, local calls made, whether it imports or uses a module) of `code`, read as
    the body of a module."""
    try:
        parsed = parse_source(pool, "check.ex", f"defmodule RecordChecks do\n{code}\nend\n")
    except SourceSyntaxError:
        return set(), set(), False
    functions = [f for m in parsed.modules for f in m.functions]
    imports = any(d.kind in ("import", "use") for m in parsed.modules for d in m.directives)
    return {(f.name, f.arity) for f in functions}, {c for f in functions for c in f.calls}, imports


def unshown_calls(pool, record: dict) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """(calls shown nowhere, calls an import or use shown in the request may cover) of a doc_to_impl record."""
    request, answer = record["messages"][0]["content"], record["messages"][1]["content"]
    defined, calls, _ = definitions(pool, "\n".join(_BLOCK.findall(answer)))
    shown: set[tuple[str, int]] = {(name, int(arity)) for name, arity in _NAMED.findall(request)}
    imports = False
    for block in _BLOCK.findall(request):
        block_defined, _, block_imports = definitions(pool, block)
        shown |= block_defined
        imports |= block_imports
    known = defined | shown
    missing = {(name, arity) for name, arity in calls
               if not any(n == name and a >= arity for n, a in known)}  # `a >= arity`: arguments with defaults
    return (set(), missing) if imports else (missing, set())


def fim_duplicates(tokenizer, data_records: list[dict]) -> dict:
    texts = {(r["source"]["package"], r["source"]["path"]): r["text"] for r in data_records if r["kind"] == "text"}
    count = lambda text: len(tokenizer.encode(text, bos=False, eos=False)) if text else 0  # noqa: E731
    fims = [r for r in data_records if r["kind"] == "fim"]
    duplicated = context = 0
    for fim in fims:
        text = texts.get((fim["source"]["package"], fim["source"]["path"]), "")
        tokens = count(fim["prefix"]) + count(fim["suffix"])
        context += tokens
        if fim["prefix"] + fim["middle"] + fim["suffix"] in text:
            duplicated += tokens
    files = {(f["source"]["package"], f["source"]["path"]) for f in fims}
    file_tokens = sum(count(texts[key]) for key in files if key in texts)
    return {"fim_records": len(fims), "files_with_fim": len(files), "prefix_suffix_tokens": context,
            "duplicated_tokens": duplicated, "text_tokens_of_those_files": file_tokens,
            "middle_tokens": sum(count(f["middle"]) for f in fims)}


def main(argv):
    del argv
    data_records = records(Path(_DATA.value))
    chats = [r for r in data_records if r["task"] == "doc_to_impl"]
    per_record = []
    names = collections.Counter()
    with parser_pool(2) as pool:
        for record in chats:
            missing, maybe = unshown_calls(pool, record)
            per_record.append((bool(missing), bool(maybe)))
            names.update(f"{n}/{a}" for n, a in missing)
    unshown = sum(m for m, _ in per_record)
    maybe = sum(i for _, i in per_record)
    result = {
        "data": _DATA.value,
        "doc_to_impl": {"records": len(chats), "with_unshown_calls": unshown,
                        "share_with_unshown_calls": round(unshown / len(chats), 4) if chats else None,
                        "with_calls_an_import_may_cover": maybe,
                        "most_common_unshown": dict(names.most_common(10))},
        "fim": fim_duplicates(load_tekken(), data_records),
    }
    print(json.dumps(result, indent=2))
    out = Path(_OUTPUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
