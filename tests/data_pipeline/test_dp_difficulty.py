"""Record difficulty: the real Elixir AST's figures, the combined score, the pipeline writing it, rescoring JSONL."""

import json
from pathlib import Path

import pytest
from conftest import FIXTURES

from data_pipeline.difficulty import code_pieces, difficulty, rescore_jsonl
from data_pipeline.run import _tekken, _tokens, run
from devstral_jax.data.pipeline import read_records
from devstral_jax.data.records import Message, Record, RecordError, Source

SOURCE = Source("local", "p", "1.0.0", "lib/p.ex", "MIT", "")
SAMPLE = Path(__file__).parents[2] / "devstral_jax" / "data" / "sample" / "sample.jsonl"

TRIVIAL = "defmodule Add do\n  def add(a, b), do: a + b\nend\n"
GENSERVER = '''defmodule Counter do
  use GenServer

  def start_link(n), do: GenServer.start_link(__MODULE__, n, name: __MODULE__)
  def bump(key), do: GenServer.call(__MODULE__, {:bump, key})

  @impl true
  def init(n), do: {:ok, %{total: n}}

  @impl true
  def handle_call({:bump, key}, _from, state) do
    case Map.fetch(state, key) do
      {:ok, count} ->
        with {:ok, limit} <- Application.fetch_env(:counter, :limit),
             true <- count < limit do
          {:reply, count + 1, Map.put(state, key, count + 1)}
        else
          _ -> {:reply, :full, state}
        end

      :error ->
        {:reply, 1, Map.put(state, key, 1)}
    end
  end

  @impl true
  def handle_info(:tick, state) do
    send(self(), :tock)
    {:noreply, state}
  end
end
'''


def _file(text: str) -> Record:
    return Record(id=str(hash(text)), kind="text", task="file", source=SOURCE, text=text)


def test_a_genserver_with_nested_case_and_with_is_harder_than_a_trivial_function(pool):
    easy = difficulty(pool, _file(TRIVIAL), tokens=20)
    hard = difficulty(pool, _file(GENSERVER), tokens=250)
    assert easy.score < hard.score
    assert (easy.functions, easy.clauses, easy.otp, easy.depth) == (1, 1, 0, 2)  # defmodule > def
    # Nesting: defmodule > def handle_call > case > with. OTP: use GenServer, GenServer.start_link and .call, the
    # init, handle_call and handle_info callbacks, send (Application.fetch_env reads config: not OTP). Clauses:
    # 5 functions' 5 clauses, case's 2 and with-else's 1.
    assert (hard.functions, hard.clauses, hard.otp, hard.depth) == (5, 8, 7, 4)
    assert hard.nodes > 5 * easy.nodes
    # The same code at the same length but without the OTP and the nesting is easier: the AST, not the length.
    flat = difficulty(pool, _file(TRIVIAL * 8), tokens=250)
    assert flat.score < hard.score


def test_docs_and_chats_are_measured_by_their_elixir_code_blocks(pool):
    doc = Record(id="d", kind="text", task="doc_text", source=SOURCE,
                 text="# Enum.map/2\n\nMaps.\n\n    iex> Enum.map([1, 2], fn x -> x * 2 end)\n    [2, 4]\n\n"
                      "```shell\nmix test\n```\n")
    assert code_pieces(doc) == ["iex> Enum.map([1, 2], fn x -> x * 2 end)\n[2, 4]\n"]  # not the shell block
    session = difficulty(pool, doc, tokens=30)
    assert session.nodes > 0 and session.depth == 1  # the fn
    chat = Record(id="c", kind="chat", task="doc_to_impl", source=SOURCE, messages=(
        Message("user", "```elixir\ndefmodule Ignored do\n  use GenServer\nend\n```"),
        Message("assistant", f"```elixir\n{GENSERVER}```")))
    assert code_pieces(chat) == [GENSERVER]  # the answer's code, not the question's
    prose = Record(id="p", kind="text", task="doc_text", source=SOURCE, text="Just words, no code at all.")
    measured = difficulty(pool, prose, tokens=7)
    assert (measured.nodes, measured.depth, measured.otp) == (0, 0, 0) and measured.score > 0


def test_records_without_a_difficulty_still_load_and_a_bad_one_is_rejected():
    line = json.loads(SAMPLE.read_text().splitlines()[0])
    scored = Record.from_dict(line)
    assert scored.difficulty is not None and Record.from_json(scored.to_json()) == scored
    del line["difficulty"]
    assert Record.from_dict(line).difficulty is None
    with pytest.raises(RecordError, match=r"score in \[0, 1\]"):
        Record.from_dict({**line, "difficulty": {**scored.difficulty.to_dict(), "score": 1.5}})


def test_the_pipeline_writes_each_record_s_difficulty_as_rescoring_computes_it(data_config, pool, tmp_path):
    data_config.sources.local.paths = (str(FIXTURES / "elixir_tree"),)
    data_config.split.validation_fraction = 0.0
    run(data_config)
    out = Path(data_config.output_dir)
    records = read_records((str(out),), "train")
    assert records and all(r.difficulty is not None for r in records)
    files = {r.source.path: r.difficulty for r in records if r.task == "file"}
    assert files["lib/my_app/stack.ex"].otp > 0 and files["lib/my_app/math.ex"].otp == 0
    # Rescoring the pipeline's JSONL mirror with the same scorer gives the same figures.
    rescore_jsonl(str(out / "jsonl" / "train.jsonl"), str(tmp_path / "again.jsonl"), pool,
                  lambda r: _tokens(_tekken(), r))
    again = {r.id: r.difficulty for r in read_records((str(tmp_path / "again.jsonl"),), "train")}
    assert again == {r.id: r.difficulty for r in records}


def test_rescoring_the_sample_reproduces_it_byte_for_byte(pool, tmp_path):
    """The shipped sample is make_sample.exs's output with the difficulty added and every other byte kept."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:25]
    unscored = [{k: v for k, v in json.loads(line).items() if k != "difficulty"} for line in lines]
    path = tmp_path / "unscored.jsonl"
    path.write_text("".join(json.dumps(d, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"
                            for d in unscored), encoding="utf-8")
    assert rescore_jsonl(str(path), str(path), pool, lambda r: _tokens(_tekken(), r)) == 25
    assert path.read_text(encoding="utf-8").splitlines() == lines
