"""Prose that packages ship (guides, cheatsheets, Livebook notebooks) and Elixir's own guides: which files, the
document structure, code blocks read by the real Elixir, the records, and the pipeline end to end."""

import json
from pathlib import Path

import pytest

from conftest import FIXTURES
from data_pipeline import PipelineError
from data_pipeline.config import base_config, validate
from data_pipeline.markdown import read_markdown
from data_pipeline.prose import ProseConfig, guide_records
from data_pipeline.run import run
from data_pipeline.sources.prose import installed_guides, prose_kind
from devstral_jax.data.records import CodeLabel, Place, Record, RecordError, Source
from devstral_jax.elixir.parse import read_snippet
from dp_fakes import elixir_files, hex_tarball, tar_bytes

PACKAGE = FIXTURES / "prose_pkg"
DECOMPRESSION = FIXTURES / "real" / "mint_Decompression.md"  # mint's guide, Apache-2.0
PROSE = ProseConfig(**base_config().prose)


def source(path: str, package: str = "stack") -> Source:
    return Source("local", package, "tree-1", path, "MIT", "file:///stack")


def records_of(output: Path) -> list[Record]:
    return [Record.from_json(line) for split in ("train", "validation")
            for line in (output / "jsonl" / f"{split}.jsonl").read_text().splitlines()]


def test_code_blocks_are_read_by_the_real_elixir(pool):
    snippet = read_snippet(pool, """alias Plug.Conn

defmodule Greeter do
  use GenServer
  @impl true
  def handle_call(:hi, _from, conn), do: {:reply, conn |> Conn.send_resp(200, "hi"), conn}
end

with {:ok, rows} <- :ets.lookup(:t, 1), do: Enum.map(rows, &String.upcase/1)
spawn(fn -> send(self(), ~r/x/) end)""")
    assert snippet.parses and not snippet.session and snippet.error is None
    assert snippet.defines == ("Greeter",)
    assert snippet.modules == (":ets", "Enum", "GenServer", "Greeter", "Plug.Conn", "String")
    # the alias is resolved, the pipe counts its argument, `&String.upcase/1` is a capture, not a call of /0
    assert snippet.calls == (":ets.lookup/2", "Enum.map/2", "Kernel.self/0", "Kernel.send/2", "Kernel.spawn/1",
                             "Plug.Conn.send_resp/3", "String.upcase/1")
    assert snippet.constructs == ("@impl", "alias", "def", "defmodule", "fn", "use", "with", "|>", "~r")

    session = read_snippet(pool, "iex> Enum.sum([1, 2])\n3\niex> String.upcase(\"a\")\n\"A\"")
    assert session.parses and session.session and session.calls == ("Enum.sum/1", "String.upcase/1")
    broken = read_snippet(pool, "def push(stack, item) do\n  Agent.update(stack, & &1)\n")
    assert not broken.parses and "missing terminator: end" in broken.error and broken.calls == ()


def test_which_files_are_prose():
    folders, excluded = PROSE.folders, PROSE.excluded_names
    kinds = {path: prose_kind(path, folders, excluded) for path in (
        "guides/introduction.md", "guides/howtos/deploy.md", "pages/Architecture.md", "docs/design.md",
        "lib/elixir/pages/getting-started/basic-types.md", "guides/cheatsheet.cheatmd", "cheatsheets/enum.cheatmd",
        "examples/tour.livemd", "tour.livemd", "README.md", "guides/README.md", "CHANGELOG.md", "guides/Changelog.md",
        "LICENSE.md", "notes/todo.md", "test/fixtures/sample.md", "test/guides/x.md", "lib/stack.ex",
        "guides/diagram.png")}
    assert kinds == {
        "guides/introduction.md": "guide", "guides/howtos/deploy.md": "guide", "pages/Architecture.md": "guide",
        "docs/design.md": "guide", "lib/elixir/pages/getting-started/basic-types.md": "guide",
        "guides/cheatsheet.cheatmd": "cheatsheet", "cheatsheets/enum.cheatmd": "cheatsheet",
        "examples/tour.livemd": "notebook", "tour.livemd": "notebook",
        "README.md": None, "guides/README.md": None, "CHANGELOG.md": None, "guides/Changelog.md": None,
        "LICENSE.md": None, "notes/todo.md": None, "test/fixtures/sample.md": None, "test/guides/x.md": None,
        "lib/stack.ex": None, "guides/diagram.png": None}


def test_markdown_keeps_sections_in_order_and_leaves_tool_markup_out():
    notebook = read_markdown("notebooks/tour.livemd", (PACKAGE / "notebooks" / "tour.livemd").read_text())
    assert (notebook.title, notebook.kind) == ("A tour of Stack", "notebook")
    assert [(s.path, [(b.kind, b.language) for b in s.blocks]) for s in notebook.sections] == [
        (("A tour of Stack",), [("code", "elixir")]),
        (("A tour of Stack", "Pushing and popping"),
         [("prose", ""), ("code", "elixir"), ("code", "output"), ("prose", ""), ("code", "elixir")])]
    prose = [b.text for b in notebook.sections[1].blocks if b.kind == "prose"]
    assert prose[0].startswith("Each cell below runs") and "livebook" not in "".join(prose)

    cheatsheet = read_markdown("guides/cheatsheet.cheatmd", (PACKAGE / "guides" / "cheatsheet.cheatmd").read_text())
    assert [(s.path, [b.kind for b in s.blocks]) for s in cheatsheet.sections] == [
        (("Stack cheatsheet",), []), (("Stack cheatsheet", "Basics"), []),
        (("Stack cheatsheet", "Basics", "Start a stack"), ["code"]),
        (("Stack cheatsheet", "Basics", "Push an item"), ["code"])]  # `{: .col-2}` is not prose

    guide = read_markdown("notes.md", "Some words before any heading.\n\n## A section\n\nMore words.\n")
    assert guide.title == "notes" and [s.path for s in guide.sections] == [(), ("A section",)]


def test_a_real_guide_gives_records_from_its_own_text(pool):
    made = guide_records(source("pages/Decompression.md", "mint"), DECOMPRESSION.read_text(), pool, PROSE)
    assert [r.task for r in made.records] == ["guide_text", "guide_explain", "guide_explain", "guide_code",
                                              "guide_code", "guide_code", "guide_code"]
    text, explain_intro, explain_body, *codes = made.records
    assert text.text == DECOMPRESSION.read_text() and text.place.section == ()
    assert [label.language for label in text.place.code] == ["elixir"] * 4
    assert all(label.parses for label in text.place.code)
    assert explain_intro.place.section == ("Decompression",)
    assert explain_intro.messages[0].content == 'Explain "Decompression" in Elixir, following the mint guide ' \
                                                '"Decompression".'
    assert explain_intro.messages[1].content.startswith("Many web servers use compression")
    assert explain_body.place.section == ("Decompression", "Decompressing the response body")
    assert explain_body.place.order == 1 and 0.0 < explain_body.place.position < 1.0
    # Each listing is asked for with the paragraph that introduces it, and answered with the listing itself.
    assert codes[0].messages[0].content.endswith("introduces.\n\nThis is where we start:")
    assert codes[0].messages[1].content.startswith("```elixir\ndefp process_response({:done, request_ref}, state)")
    assert codes[2].messages[0].content.endswith("Thankfully, Erlang ships with built-in support for gzip algorithm.")
    # Where the guide's code first uses a concept: GenServer.reply in the first listing, update_in only in the last.
    assert "GenServer.reply" in codes[0].place.introduces and "GenServer.reply" not in codes[3].place.introduces
    assert "update_in" in codes[3].place.introduces and ":zlib.gunzip/1" in codes[2].place.code[0].calls
    assert made.facts == {"documents": {"guide": 1}, "sections": 2, "code_blocks": {"elixir": 4}, "dropped": {}}


def test_code_that_does_not_parse_is_labelled_and_never_an_answer(pool):
    made = guide_records(source("notebooks/tour.livemd"), (PACKAGE / "notebooks" / "tour.livemd").read_text(), pool,
                         PROSE)
    notebook = made.records[0]
    assert notebook.task == "notebook" and "<!-- livebook" not in notebook.text and "Mix.install" in notebook.text
    assert [(c.language, c.parses) for c in notebook.place.code] == [
        ("elixir", True), ("elixir", True), ("output", None), ("elixir", False)]
    explain = next(r for r in made.records if r.task == "guide_explain")
    assert explain.messages[1].content.endswith("```\nEnum.map([1, 2, 3], fn x ->\n```")  # no `elixir` fence
    (code,) = [r for r in made.records if r.task == "guide_code"]
    assert code.messages[1].content == "```elixir\n{:ok, pid} = Stack.start_link([])\nStack.push(pid, 42)\n```"
    assert made.facts["code_blocks"] == {"elixir": 2, "other": 1, "elixir, does not parse": 1}
    assert made.facts["dropped"] == {"section: too little prose": 1, "listing: no introducing paragraph": 1,
                                     "listing: does not parse": 1}


def test_place_is_validated_and_round_trips():
    place = Place("Elixir in Practice", ("Processes", "Links"), 3, 0.25, chapter=0, pages=(12, 13),
                  code=(CodeLabel("elixir", True, ("GenServer",), ("GenServer.call/2",), ("def",)),),
                  introduces=("GenServer.call",))
    record = Record(id="b1", kind="text", task="book_text", source=source("book.pdf"), text="# Processes",
                    place=place)
    assert Record.from_json(record.to_json()) == record
    assert json.loads(record.to_json())["place"]["pages"] == [12, 13]
    assert "place" not in json.loads(Record(id="t", kind="text", task="file", source=source("a.ex"),
                                            text="x").to_json())
    for bad, message in ((dict(position=1.5), "position"), (dict(pages=(3, 2)), "pages"), (dict(order=-1), "order"),
                         (dict(section=("a", 1)), "section"), (dict(code=("elixir",)), "CodeLabel")):
        with pytest.raises(RecordError, match=message):
            Record(id="b2", kind="text", task="book_text", source=source("book.pdf"), text="x",
                   place=Place(**{**place.__dict__, **bad}))
    line = json.loads(record.to_json())
    line["place"]["colour"] = "red"
    with pytest.raises(RecordError, match="bad place"):
        Record.from_dict(line)


def test_a_package_tree_gives_guides_and_code_under_its_licence(tmp_path, data_config):
    data_config.sources.local.paths = (str(PACKAGE),)
    data_config.sources.local.licence = ""  # detected: mix.exs licenses: ["MIT"]
    manifest = run(data_config)
    (unit,) = manifest["units"]
    assert unit["licence"]["licence"] == "MIT" and unit["files_kept"] == 6 and unit["files_skipped"] == 0
    records = records_of(Path(data_config.output_dir))
    paths = {r.source.path for r in records}
    assert paths == {"mix.exs", "lib/stack.ex", "guides/introduction.md", "guides/cheatsheet.cheatmd",
                     "notebooks/tour.livemd", "docs/design.md"}  # no README, CHANGELOG, test fixture or loose notes
    assert all(r.licence == "MIT" for r in records)
    tasks = sorted(r.task for r in records if r.place is not None)
    assert tasks == ["guide_code"] * 4 + ["guide_explain"] * 4 + ["guide_qa"] * 2 + ["guide_text"] * 3 + \
        ["notebook"]
    assert all(r.place is None for r in records if r.source.path.endswith((".ex", ".exs")))
    qa = {r.messages[0].content: r.messages[1].content for r in records if r.task == "guide_qa"}
    assert qa == {
        "What is `Stack` in Elixir?": "`Stack` is a small library that keeps a stack in a process. Every process in "
        "the system can push to it and pop from it, and the stack itself lives as long as its process does, "
        "supervised like any other part of your application.",
        "What does `Stack.push/2` return in Elixir?": "`Stack.push/2` returns `:ok` once the item is on the stack. "
        "Pushing never blocks for long: the process only prepends the item to its list."}
    cheat = next(r for r in records if r.task == "guide_code" and r.source.path.endswith(".cheatmd"))
    assert cheat.messages[0].content == 'Show "Start a stack" in Elixir, as the prose_pkg cheatsheet ' \
                                        '"Stack cheatsheet" does.'
    assert manifest["prose"] == {
        "documents": {"cheatsheet": 1, "guide": 2, "notebook": 1}, "sections": 11,
        "code_blocks": {"elixir": 6, "elixir, does not parse": 2, "other": 2},
        "dropped_by_reason": {"section: too little prose": 7, "listing: does not parse": 2, "listing: too short": 1,
                              "listing: no introducing paragraph": 1},
        "books": []}
    assert "Documents: cheatsheet 1, guide 2, notebook 1" in (Path(data_config.output_dir) / "report.md").read_text()

    data_config.prose.enabled = False  # prose off: the same tree gives code only
    manifest = run(data_config)
    assert {r.source.path for r in records_of(Path(data_config.output_dir))} == {"mix.exs", "lib/stack.ex"}
    assert manifest["prose"]["documents"] == {}


def test_hex_packages_ship_guides_too(tmp_path, data_config):
    guide = (PACKAGE / "guides" / "introduction.md").read_bytes()
    contents = tar_bytes(elixir_files("alpha") + [("guides/intro.md", guide), ("README.md", b"# Alpha\n\nHi.\n")],
                         compressed=True)
    cache = tmp_path / "hexpm"
    cache.mkdir()
    (cache / "alpha-1.0.0.tar").write_bytes(hex_tarball("alpha", "1.0.0", contents, licenses=["Apache-2.0"]))
    data_config.sources.hex_cache.dirs = (str(cache),)
    run(data_config)
    guides = [r for r in records_of(Path(data_config.output_dir)) if r.place is not None]
    assert {r.source.path for r in guides} == {"guides/intro.md"}
    assert {r.licence for r in guides} == {"Apache-2.0"} and {r.source.kind for r in guides} == {"hex"}


def test_elixir_guides_from_a_path_or_the_installed_elixir(tmp_path, data_config):
    pages = tmp_path / "elixir" / "lib" / "elixir" / "pages"
    (pages / "getting-started").mkdir(parents=True)
    (pages / "cheatsheets").mkdir()
    (pages / "getting-started" / "pattern-matching.md").write_text(
        "# Pattern matching\n\nThe `=` operator is the match operator: it matches the pattern on its left against "
        "the value on its right, and binds the variables in the pattern to the parts of the value they match. When "
        "the value does not match, it raises a MatchError.\n")
    (pages / "cheatsheets" / "enum.cheatmd").write_text(
        "# Enum cheatsheet\n\n## Mapping\n\n### map(enum, fun)\n\n```elixir\nEnum.map([1, 2, 3], fn x -> x * 2 end)\n"
        "```\n")
    data_config.sources.elixir_guides.enabled = True
    data_config.sources.elixir_guides.path = str(pages)
    manifest = run(data_config)
    (unit,) = manifest["units"]
    assert unit["id"].startswith("elixir_guides/tree-") and unit["licence"]["licence"] == "Apache-2.0"
    records = records_of(Path(data_config.output_dir))
    assert {(r.source.path, r.task) for r in records} == {
        ("pages/getting-started/pattern-matching.md", "guide_text"),
        ("pages/getting-started/pattern-matching.md", "guide_explain"),
        ("pages/getting-started/pattern-matching.md", "guide_qa"),
        ("pages/cheatsheets/enum.cheatmd", "guide_text"), ("pages/cheatsheets/enum.cheatmd", "guide_code")}
    assert {r.package for r in records} == {"elixir"}

    data_config.sources.elixir_guides.path = ""
    if installed_guides() is None:  # Debian's elixir package ships no guides
        with pytest.raises(PipelineError, match="installed Elixir ships no guides"):
            run(data_config)
    else:
        assert run(data_config)["units"][0]["url"] == installed_guides().as_uri()


def test_settings_are_checked():
    config = base_config()
    with pytest.raises(PipelineError, match="sources.books.paths"):
        validate(config)  # no source at all: the message names the new ones too
    config.sources.books.paths = ("/nonexistent/book.pdf",)
    config.prose.max_answer_chars = 10
    with pytest.raises(PipelineError) as error:
        validate(config)
    assert "sources.books.paths: /nonexistent/book.pdf does not exist" in str(error.value)
    assert "prose.max_answer_chars must be at least prose.min_explain_chars" in str(error.value)
