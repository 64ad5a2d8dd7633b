"""The kinds made from one parsed file (no package run): the parser's facts they stand on, self-contained
doc->implementation context, docs and specs, OTP designs, FIM windows, test/code pairing and repair records.
The fixture is the ledger package (see its README)."""

import dataclasses
import random
import re
import textwrap
from pathlib import Path

import pytest

from data_pipeline.instruct import InstructConfig, file_records
from data_pipeline.kinds import tests_code
from data_pipeline.kinds.context import context, snippet
from data_pipeline.kinds.fim import FimConfig, fim_records
from data_pipeline.kinds.repair import repair_record
from devstral_jax.data.records import Source
from devstral_jax.elixir.parse import parse_source

LEDGER = Path(__file__).parent / "fixtures" / "ledger"
CONFIG = InstructConfig(seed=0, fim_rate=0.0, max_value_questions=3, min_doc_chars=10, min_moduledoc_chars=20,
                        max_context_chars=8000, max_explanation_chars=1500, fim_spans=3, fim_context_lines=5,
                        fim_across_rate=0.5)


def source(path):
    return Source("local", "ledger", "v1", path, "MIT", "file:///ledger")


def parsed(pool, path):
    text = (LEDGER / path).read_text()
    return text, parse_source(pool, path, text)


def made(pool, path, config=CONFIG):
    text, facts = parsed(pool, path)
    return file_records(source(path), text, facts, config)


def chats(result, task):
    return [(r.messages[0].content, r.messages[1].content) for r in result.records if r.task == task]


def code_of(answer):
    return re.fullmatch(r"```elixir\n(.*)\n```", answer, re.S)[1]


def test_the_parser_reports_what_each_function_uses_and_what_the_module_defines(pool):
    _, facts = parsed(pool, "lib/ledger/entry.ex")
    (entry,) = facts.modules
    assert entry.struct == (7, 7) and [name for name, _ in entry.attributes] == ["enforce_keys", "currencies", "cents"]
    assert [(t.name, t.span, t.doc_span) for t in entry.types] == [("t", (10, 10), (9, 9)),
                                                                   ("currency", (13, 13), (12, 12))]
    new, _, normalize = entry.functions
    assert (new.calls, new.attributes, new.aliases, new.doc_span) == ((("normalize", 1),), ("cents",), ("__MODULE__",),
                                                                     (18, 23))
    assert normalize.attributes == ("currencies",) and normalize.calls == (("normalize", 1),)  # the pipe counts
    _, facts = parsed(pool, "lib/ledger/server.ex")
    (server,) = facts.modules
    assert [(d.kind, d.modules, d.names, d.options) for d in server.directives] == [
        ("use", ("GenServer",), (), "[restart: :transient]"),
        ("alias", ("Ledger.Book", "Ledger.Entry"), ("Book", "Entry"), None)]
    handle_call = next(f for f in server.functions if f.name == "handle_call")
    assert [head[0] for head in handle_call.heads] == ["{:post, entry}", "{:balance, currency}"]
    assert server.otp.names == ("__MODULE__",)
    _, facts = parsed(pool, "lib/ledger/supervisor.ex")
    assert facts.modules[0].otp.strategy == ":rest_for_one"
    assert facts.modules[0].otp.children == ("{Ledger.Server, opts}", "{Task.Supervisor, name: Ledger.Reports}")


def test_doc_to_impl_answers_bring_their_private_helpers_and_the_request_shows_what_they_rely_on(pool):
    answers = {q.split("`")[1]: (q, code_of(a)) for q, a in chats(made(pool, "lib/ledger/entry.ex"), "doc_to_impl")}
    request, answer = answers["Ledger.Entry.new/2"]
    assert request.startswith("Write the Elixir function `Ledger.Entry.new/2`, with the private functions it calls.")
    assert "The module's definitions it relies on:\n\n```elixir\n@enforce_keys [:amount, :currency]\n" \
           "defstruct [:amount, :currency, memo: \"\"]\n@type t :: %__MODULE__{amount: integer(), currency: " \
           "currency(), memo: String.t()}\n@type currency :: :eur | :usd | :gbp\n@currencies [:eur, :usd, :gbp]\n" \
           "@cents 100\n```" in request
    assert answer.startswith("@spec new(integer(), atom() | String.t()) :: t()\ndef new(units, currency) do")
    assert answer.count("defp normalize(") == 2  # both clauses of the helper, after the function
    request, answer = answers["Ledger.Entry.same_currency?/2"]
    assert "with the private functions" not in request and "@currencies" not in request  # only what it uses
    requests = dict(chats(made(pool, "lib/ledger/book.ex"), "doc_to_impl"))
    balance = next(q for q in requests if "`Ledger.Book.balance/2`" in q)
    assert "```elixir\nalias Ledger.Entry\n```" in balance and "defp in_currency" in requests[balance]


def test_helpers_that_would_make_the_answer_too_long_are_named_in_the_request_instead(pool):
    small = dataclasses.replace(CONFIG, max_context_chars=150)
    requests = dict(chats(made(pool, "lib/ledger/entry.ex", small), "doc_to_impl"))
    request = next(q for q in requests if "`Ledger.Entry.new/2`" in q)
    assert "Other functions of the module it calls, defined elsewhere:\n\n```elixir\ndefp normalize(currency)\n```" \
        in request
    assert "defp normalize" not in requests[request]


def test_the_compile_check_of_doc_to_impl_is_the_request_context_stubs_and_the_answer(pool):
    """Ledger.Codes.code/1 calls functions named by `unquote`, which the request cannot show; the module
    imports Bitwise, which might have defined them, so only its check (which verify.py runs) can tell: its
    module shows the import and leaves them undefined. A function named in the request gets a stub."""
    text, facts = parsed(pool, "lib/ledger/codes.ex")
    (codes,) = facts.modules
    code = next(f for f in codes.functions if f.name == "code")
    lines = text.split("\n")
    answer = textwrap.dedent("\n".join(lines[code.span[0] - 1:code.span[1]]))
    needs = context(codes, code, answer, lines, 8000)
    assert (needs.helpers, needs.named, needs.stubs, needs.complete) == ((), (), (), True)
    assert snippet(needs, lines, answer).startswith("defmodule KindsCheck.Snippet do\nimport Bitwise\n\n"
                                                    "def code(:opened), do: opened()")
    text, facts = parsed(pool, "lib/ledger/entry.ex")
    (entry,) = facts.modules
    new = entry.functions[0]
    lines = text.split("\n")
    needs = context(entry, new, "def new(units, currency)", lines, 10)  # too long: normalize/1 is named
    assert needs.stubs == (("defp", "normalize", 1),)
    assert "def normalize(_arg0), do: nil" in snippet(needs, lines, "def new(units, currency), do: nil")


def test_a_function_calling_what_no_request_can_show_gives_no_doc_to_impl_record(pool):
    """Without an import or use, a call to a function a `for` generates can never be shown (Plug.Conn.Status)."""
    text = (LEDGER / "lib/ledger/codes.ex").read_text().replace("  import Bitwise\n", "").replace(
        "bor(code, 1)", "code + 1")
    result = file_records(source("lib/ledger/codes.ex"), text, parse_source(pool, "codes.ex", text), CONFIG)
    assert [q.split("`")[1] for q, _ in chats(result, "doc_to_impl")] == ["Ledger.Codes.corrected/1"]


def test_docs_and_specs_are_asked_for_without_showing_them(pool):
    result = made(pool, "lib/ledger/entry.ex")
    asked = chats(result, "docs_specs")
    request, answer = next((q, a) for q, a in asked if "`Ledger.Entry.new/2`" in q)
    assert request.startswith("Write the documentation (`@doc`) and the typespec (`@spec`) for the function "
                              "`Ledger.Entry.new/2` of the Elixir module `Ledger.Entry`:")
    assert "Builds an entry" not in request and "@spec new" not in request
    lines = (LEDGER / "lib/ledger/entry.ex").read_text().split("\n")
    assert code_of(answer) == textwrap.dedent("\n".join(lines[17:24]))  # the @doc and @spec as written
    typedocs = [code_of(a) for q, a in asked if "`@typedoc`" in q]
    assert typedocs == ['@typedoc "An entry; `amount` is in the currency\'s smallest unit (cents)."',
                        '@typedoc "The currencies a ledger accepts."']
    record_id = next(r.id for r in result.records if r.task == "docs_specs")
    check = result.checks[record_id]
    assert (check.file, check.keep_if) == ("lib/ledger/entry.ex", ("passed", "missing"))


def test_otp_designs_are_requirements_read_off_the_module(pool):
    ((request, answer),) = chats(made(pool, "lib/ledger/server.ex"), "otp_design")
    assert request.split("\n") == [
        "Write an Elixir GenServer module named `Ledger.Server` that meets these requirements:",
        "",
        "- It is a GenServer, with the child spec options `[restart: :transient]`.",
        "- Its purpose: A process that holds a ledger and answers for its balance.",
        "- Its client API:",
        "  - `def start_link(opts)`: Starts the ledger process, registered under its module's name. "
        "(`@spec start_link(keyword()) :: GenServer.on_start()`)",
        "  - `def post(%Entry{} = entry)`: Records an entry. (`@spec post(Entry.t()) :: :ok`)",
        "  - `def balance(currency)`: The balance in `currency`.",
        "  - `def reset()`: Forgets every entry.",
        "- Its process is started under the name `__MODULE__`.",
        "- It implements the callbacks `init/1`, `handle_call/3`, `handle_cast/2`, `handle_info/2`.",
        "- `handle_call/3` handles the calls `{:post, entry}`, `{:balance, currency}`, in this order.",
        "- `handle_cast/2` handles the casts `:reset`, in this order.",
        "- `handle_info/2` handles the messages `:audit`, in this order."]
    assert code_of(answer) == (LEDGER / "lib/ledger/server.ex").read_text().strip()
    ((request, _),) = chats(made(pool, "lib/ledger/supervisor.ex"), "otp_design")
    assert request.endswith("- It supervises with the strategy `:rest_for_one`.\n- Its children, in order: "
                            "`{Ledger.Server, opts}`, `{Task.Supervisor, name: Ledger.Reports}`.")
    assert not chats(made(pool, "lib/ledger/book.ex"), "otp_design")


@pytest.mark.parametrize("path", ["lib/ledger/book.ex", "lib/ledger/server.ex", "lib/ledger/entry.ex"])
def test_fim_cuts_several_windows_none_repeating_the_whole_file(pool, path):
    text, facts = parsed(pool, path)
    lines = text.split("\n")
    functions = sorted((f for m in facts.modules for f in m.functions), key=lambda f: f.line)
    across = 0
    for seed in range(8):
        fims = fim_records(source(path), lines, facts, random.Random(seed), FimConfig(3, 5, 0.5))
        assert 1 <= len(fims) <= 3
        middles = []  # first and last line (1-based) of each middle
        for fim in fims:
            window = fim.prefix + fim.middle + fim.suffix
            assert window in text and window != text  # a window of the file, not the file again
            assert fim.prefix.count("\n") <= 5 and fim.suffix.count("\n") <= 5
            first = text[:text.index(window)].count("\n") + fim.prefix.count("\n") + 1
            middles.append((first, first + fim.middle.rstrip("\n").count("\n")))
        middles.sort()
        assert all(a[1] < b[0] for a, b in zip(middles, middles[1:]))  # the middles do not overlap
        across += sum(a.line < first <= a.end_line and b.line <= last <= b.end_line
                      for first, last in middles for a, b in zip(functions, functions[1:]))
    assert across, "no middle starts inside one function and ends inside the next"


def test_a_context_as_long_as_the_file_gives_the_whole_file_around_one_middle(pool):
    text, facts = parsed(pool, "lib/ledger/book.ex")
    (fim,) = fim_records(source("lib/ledger/book.ex"), text.split("\n"), facts, random.Random(0),
                         FimConfig(1, 10_000, 0.0))
    assert fim.prefix + fim.middle + fim.suffix == text


def test_test_files_are_paired_with_the_lib_file_they_test():
    lib = {"lib/ledger/book.ex": ["Ledger.Book"], "lib/ledger.ex": ["Ledger"], "apps/web/lib/web/page.ex": ["Web.Page"],
           "lib/other/place.ex": ["Ledger.Entry"]}
    tests = {"test/ledger/book_test.exs": ["Ledger.BookTest"], "test/entry_spec_test.exs": ["Ledger.EntryTest"],
             "apps/web/test/web/page_test.exs": ["Web.PageTest"], "test/test_helper.exs": [],
             "test/unrelated_test.exs": ["SomethingTest"]}
    assert tests_code.pairs(lib, tests) == [
        tests_code.Pair("apps/web/test/web/page_test.exs", "apps/web/lib/web/page.ex", "Web.Page"),
        tests_code.Pair("test/entry_spec_test.exs", "lib/other/place.ex", "Ledger.Entry"),  # by module
        tests_code.Pair("test/ledger/book_test.exs", "lib/ledger/book.ex", "Ledger.Book")]  # by path


def test_a_repair_record_shows_the_mutant_and_answers_with_the_original():
    text = (LEDGER / "lib/ledger/book.ex").read_text()
    lines = text.split("\n")
    mutant = {"module": "Ledger.Book", "function": "describe", "arity": 1, "span": [30, 32],
              "edit": [31, 31, [lines[30].replace(">", ">=")]], "output": "  1) test describe/1 ..."}
    record = repair_record(source("lib/ledger/book.ex"), text, mutant, "test")
    request, answer = record.messages[0].content, record.messages[1].content
    assert record.task == "repair_test"
    assert 'def describe(balance) when balance >= 0, do: "in credit"' in request
    assert code_of(answer) == textwrap.dedent("\n".join(lines[29:32]))
    mutant = dict(mutant, edit=[31, 31, []], output="** (CompileError) ...")  # a line less
    request = repair_record(source("lib/ledger/book.ex"), text, mutant, "compile").messages[0].content
    assert "does not compile" in request and 'def describe(balance) when balance < 0, do: "overdrawn"\n```' in request
