"""devstral_jax.data.records: the schema the pipeline writes and the trainer reads."""

import json

import pytest

from devstral_jax.data.records import Message, Record, RecordError, Source

SOURCE = Source("hex", "jason", "1.4.1", "lib/jason.ex", "Apache-2.0", "https://hex.pm/packages/jason/1.4.1")


def chat(*turns):
    return Record(id="c1", kind="chat", task="doc_to_impl", source=SOURCE,
                  messages=tuple(Message(role, content) for role, content in turns))


def test_each_kind_round_trips_through_json():
    records = [
        Record(id="t1", kind="text", task="file", source=SOURCE, text="defmodule Jason do\nend\n"),
        chat(("system", "You write Elixir."), ("user", "Write it."), ("assistant", "```elixir\n:ok\n```")),
        Record(id="f1", kind="fim", task="fim", source=SOURCE, split="validation",
               prefix="a\n", suffix="", middle="b\n"),
    ]
    for record in records:
        line = record.to_json()
        assert Record.from_json(line) == record
        assert json.loads(line)["source"]["licence"] == "Apache-2.0"
    assert json.loads(records[1].to_json())["messages"][1] == {"role": "user", "content": "Write it."}
    assert (records[0].package, records[0].licence) == ("jason", "Apache-2.0")
    assert records[2].contents() == ["a\n", "b\n", ""]


@pytest.mark.parametrize("make, message", [
    (lambda: Record(id="", kind="text", task="file", source=SOURCE, text="x"), "non-empty string id"),
    (lambda: Record(id="x", kind="code", task="file", source=SOURCE, text="x"), "kind must be one of"),
    (lambda: Record(id="x", kind="text", task="file", source=SOURCE, text=""), "text must be a non-empty"),
    (lambda: Record(id="x", kind="text", task="file", source=SOURCE, text="x", split="test"), "split must be"),
    (lambda: Record(id="x", kind="text", task="file", source=SOURCE, text="x", middle="y"), "does not belong"),
    (lambda: Record(id="x", kind="fim", task="fim", source=SOURCE, prefix="a", suffix="b", middle=""), "middle"),
    (lambda: chat(("user", "a")), "end with the assistant"),
    (lambda: chat(("assistant", "a"), ("user", "b")), "alternate"),
    (lambda: chat(("user", "a"), ("user", "b"), ("assistant", "c")), "alternate"),
    (lambda: chat(("user", ""), ("assistant", "c")), "empty"),
    (lambda: chat(("robot", "a"), ("assistant", "c")), "role in"),
])
def test_malformed_records_are_rejected(make, message):
    with pytest.raises(RecordError, match=message):
        make()


@pytest.mark.parametrize("line, message", [
    ("not json", "Not a JSON record"),
    ("[]", "JSON object"),
    ('{"id": "x", "kind": "text", "task": "file", "text": "x"}', "missing fields \\['source'\\]"),
    ('{"id": "x", "kind": "text", "task": "file", "text": "x", "source": {}, "extra": 1}', "unexpected fields"),
    ('{"id": "x", "kind": "text", "task": "file", "text": "x", "source": {"kind": "hex"}}', "bad source"),
    ('{"id": "x", "kind": "chat", "task": "t", "source": {"kind": "hex", "package": "p", "version": "v", '
     '"path": "p", "licence": "MIT", "url": "u"}, "messages": [{"role": "user"}]}', "role, content"),
])
def test_bad_json_is_a_clear_error(line, message):
    with pytest.raises(RecordError, match=message):
        Record.from_json(line)


def test_token_counts_are_the_lengths_of_tekken_encodings():
    """The pipeline counts a record's tokens with Tekken's tiktoken model directly: the same as Tekken's own
    encode, for code, prose, non-ASCII text and text that looks like special tokens."""
    from data_pipeline.run import _tekken, _tokens

    tokenizer = _tekken()
    record = chat(("system", "<s>[INST] You write Elixir. [/INST]</s>"), ("user", "Größe? 日本語 😀 <unk>"),
                  ("assistant", "```elixir\ndefmodule Jason do\n  def encode!(x), do: x\nend\n```"))
    assert _tokens(tokenizer, record) == sum(len(tokenizer.encode(text, bos=False, eos=False))
                                             for text in record.contents()) > 40
