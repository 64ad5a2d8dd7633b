"""The training-record schema: the one definition the data pipeline writes and the Grain pipeline reads.

A record is one training example, stored as one JSON object (an ArrayRecord entry, or a JSONL line):

    {"id": "3f9a...", "kind": "chat", "task": "doc_to_impl", "split": "train",
     "source": {"kind": "hex", "package": "jason", "version": "1.4.1", "path": "lib/jason.ex",
                "licence": "Apache-2.0", "url": "https://hex.pm/packages/jason/1.4.1"},
     "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

Kinds and their payload fields:
  text  `text`                        whole files, for continued pretraining (stage 1)
  chat  `messages` (OpenAI style)     instructions; the loss is on assistant turns (stage 2)
  fim   `prefix`, `suffix`, `middle`  fill-in-the-middle; the model writes `middle`

Records made from a document (a guide, a Livebook notebook, a book) also carry `place`: where in the document
they come from (title, heading path, order, position 0..1, chapter, pages), what its code blocks are (language,
whether the real Elixir parses them, the modules, calls and constructs they use) and which concepts the
document's code first uses there. Records from source files have none.

Records whose answer a model wrote (self-synthesized rehearsal, task `rehearsal`) carry `generated`: the record
whose prompt was answered, and the stage, checkpoint step and sampling settings of the model that answered it.

Records may carry `difficulty`: how hard the record is, a score in [0, 1] with the components it combines (the
real Elixir AST's size, nesting, functions, clauses and OTP constructs, and the token length), which the data
pipeline computes (data_pipeline/difficulty.py) and curricula and mixtures read. Records without it still load.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from devstral_jax.errors import RecordError

KINDS = ("text", "chat", "fim")
ROLES = ("system", "user", "assistant")
SPLITS = ("train", "validation")
REHEARSAL_TASK = "rehearsal"  # a model's own answer to an earlier stage's prompt (devstral_jax/train/rehearsal.py)
_PAYLOAD_FIELDS = {"text": ("text",), "chat": ("messages",), "fim": ("prefix", "suffix", "middle")}


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a record's material came from: enough to credit it, honour its licence and find it again."""

    kind: str  # hex | github | local | otp_docs | elixir_guides | book
    package: str
    version: str
    path: str
    licence: str  # an SPDX id (or LicenseRef-...)
    url: str


@dataclasses.dataclass(frozen=True)
class CodeLabel:
    """One code block of a document, as the real Elixir reads it."""

    language: str  # "elixir" (labelled so, or unlabelled and read as Elixir), else the block's label or ""
    parses: bool | None  # Elixir: does it parse; None for a block labelled as another language (not tried)
    modules: tuple[str, ...] = ()  # modules it defines or names ("Plug.Conn", ":ets")
    calls: tuple[str, ...] = ()  # "Mod.fun/arity": remote calls and Kernel function calls
    constructs: tuple[str, ...] = ()  # special forms, Kernel macros and meaningful attributes: "with", "|>", "@spec"


@dataclasses.dataclass(frozen=True)
class Place:
    """Where in a document (a guide, a notebook, a book) a record comes from, and what its code is."""

    document: str  # the document's title
    section: tuple[str, ...]  # heading path, outermost first; () for a whole document
    order: int  # the section's index in reading order (0 for a whole document or chapter's first section)
    position: float  # where the record's text starts, 0..1 through the document: a curriculum's notion of depth
    chapter: int | None = None  # 0-based chapter index (books)
    pages: tuple[int, int] | None = None  # first and last page, 1-based (PDF books)
    code: tuple[CodeLabel, ...] = ()  # its code blocks, in order
    introduces: tuple[str, ...] = ()  # concepts ("GenServer.call", "with", "Stack") first used in code here

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Place:
        if not isinstance(data, dict) or not isinstance(data.get("code", []), list):
            raise RecordError(f"place must be an object with a list of code labels, got {data!r}.")
        try:
            return cls(**{**data, "section": tuple(data.get("section", ())),
                          "pages": tuple(data["pages"]) if data.get("pages") is not None else None,
                          "code": tuple(CodeLabel(**{k: tuple(v) if isinstance(v, list) else v
                                                     for k, v in label.items()}) for label in data.get("code", ())),
                          "introduces": tuple(data.get("introduces", ()))})
        except (TypeError, AttributeError) as error:
            raise RecordError(f"bad place {data!r} ({error}).") from None


@dataclasses.dataclass(frozen=True)
class Generated:
    """Where a model-written answer comes from: what it answered, and which model wrote it how."""

    record: str  # the id of the record whose prompt was answered
    task: str  # that record's task
    stage: str  # the stage whose final model answered
    step: int  # that model's checkpoint step
    sampling: dict[str, Any]  # max_new_tokens, temperature, top_k, top_p, seed

    @classmethod
    def from_dict(cls, data: Any) -> Generated:
        try:
            generated = cls(**data)
        except TypeError as error:
            raise RecordError(f"bad generated {data!r} ({error}).") from None
        if not (all(isinstance(v, str) and v for v in (generated.record, generated.task, generated.stage))
                and isinstance(generated.step, int) and not isinstance(generated.step, bool) and generated.step >= 0
                and isinstance(generated.sampling, dict)):
            raise RecordError(f"generated needs record, task and stage names, a step >= 0 and the sampling "
                              f"settings, got {data!r}.")
        return generated


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """How hard a record is (data_pipeline/difficulty.py says how each figure is measured and combined)."""

    score: float  # 0..1, the weighted combination of the components below
    tokens: int  # Tekken tokens of the record's text
    nodes: int  # AST nodes of its code
    depth: int  # the deepest nesting of blocks (defmodule, def, fn, case, cond, with, if, receive, try, for, ...)
    functions: int  # named functions defined
    clauses: int  # function clauses plus `->` clauses
    otp: int  # OTP constructs: use/@behaviour, receive, spawn, send, behaviour callbacks, GenServer.call, ...

    def within(self, low: float, high: float) -> bool:
        """Whether the score is in [low, high) (a band ending at 1 includes 1): difficulty bands tile [0, 1]."""
        return low <= self.score < high or self.score == high == 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Difficulty:
        if not isinstance(data, dict) or set(data) != {f.name for f in dataclasses.fields(cls)}:
            raise RecordError(f"difficulty must be an object with {[f.name for f in dataclasses.fields(cls)]}, "
                              f"got {data!r}.")
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclasses.dataclass(frozen=True)
class Record:
    id: str
    kind: str
    task: str  # what produced it: file, doc_to_impl, otp_behaviour, doctest_tests, doctest_value, ...
    source: Source
    split: str = "train"
    text: str | None = None
    messages: tuple[Message, ...] | None = None
    prefix: str | None = None
    suffix: str | None = None
    middle: str | None = None
    place: Place | None = None  # records made from a document (guides, notebooks, books)
    generated: Generated | None = None  # records whose answer a model wrote (rehearsal)
    difficulty: Difficulty | None = None  # set by the data pipeline's scorer

    def __post_init__(self):
        validate(self)

    @property
    def package(self) -> str:
        return self.source.package

    @property
    def licence(self) -> str:
        return self.source.licence

    def contents(self) -> list[str]:
        """The record's text fields, in reading order (for dedup, decontamination, token counts)."""
        if self.kind == "text":
            return [self.text]
        if self.kind == "chat":
            return [message.content for message in self.messages]
        return [self.prefix, self.middle, self.suffix]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "task": self.task, "split": self.split,
                               "source": dataclasses.asdict(self.source)}
        for name in _PAYLOAD_FIELDS[self.kind]:
            value = getattr(self, name)
            out[name] = [dataclasses.asdict(m) for m in value] if name == "messages" else value
        if self.place is not None:
            out["place"] = self.place.to_dict()
        if self.generated is not None:
            out["generated"] = dataclasses.asdict(self.generated)
        if self.difficulty is not None:
            out["difficulty"] = self.difficulty.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        if not isinstance(data, dict):
            raise RecordError(f"A record is a JSON object, got {type(data).__name__}.")
        kind = data.get("kind")
        if kind not in KINDS:
            raise RecordError(f"Record {data.get('id')!r}: kind must be one of {KINDS}, got {kind!r}.")
        allowed = {"id", "kind", "task", "split", "source", "place", "generated", "difficulty", *_PAYLOAD_FIELDS[kind]}
        if unknown := set(data) - allowed:
            raise RecordError(f"Record {data.get('id')!r} ({kind}): unexpected fields {sorted(unknown)}.")
        if missing := {"id", "task", "source", *_PAYLOAD_FIELDS[kind]} - set(data):
            raise RecordError(f"Record {data.get('id')!r} ({kind}): missing fields {sorted(missing)}.")
        source = data["source"]
        try:
            source = Source(**source)
        except TypeError as error:
            raise RecordError(f"Record {data['id']!r}: bad source {source!r} ({error}).") from None
        fields = dict(data, source=source)
        if data.get("place") is not None:
            try:
                fields["place"] = Place.from_dict(data["place"])
            except RecordError as error:
                raise RecordError(f"Record {data['id']!r}: {error}") from None
        if data.get("generated") is not None:
            try:
                fields["generated"] = Generated.from_dict(data["generated"])
            except RecordError as error:
                raise RecordError(f"Record {data['id']!r}: {error}") from None
        if data.get("difficulty") is not None:
            try:
                fields["difficulty"] = Difficulty.from_dict(data["difficulty"])
            except RecordError as error:
                raise RecordError(f"Record {data['id']!r}: {error}") from None
        if kind == "chat":
            messages = data["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) and set(m) == {"role", "content"}
                                                         for m in messages):
                raise RecordError(f"Record {data['id']!r}: messages must be a list of {{role, content}} objects.")
            fields["messages"] = tuple(Message(**m) for m in messages)
        return cls(**fields)

    @classmethod
    def from_json(cls, line: str | bytes) -> Record:
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise RecordError(f"Not a JSON record: {error}.") from None
        return cls.from_dict(data)


def validate(record: Record) -> None:
    """Raises RecordError unless `record` is well formed for its kind."""
    where = f"Record {record.id!r} ({record.kind})"
    if not isinstance(record.id, str) or not record.id:
        raise RecordError("A record needs a non-empty string id.")
    if record.kind not in KINDS:
        raise RecordError(f"{where}: kind must be one of {KINDS}.")
    if record.split not in SPLITS:
        raise RecordError(f"{where}: split must be one of {SPLITS}, got {record.split!r}.")
    if not isinstance(record.task, str) or not record.task:
        raise RecordError(f"{where}: task must be a non-empty string.")
    if not isinstance(record.source, Source) or not all(
            isinstance(v, str) for v in dataclasses.astuple(record.source)):
        raise RecordError(f"{where}: source must be a Source of strings.")
    payload = _PAYLOAD_FIELDS[record.kind]
    for name in ("text", "messages", "prefix", "suffix", "middle"):
        if name not in payload and getattr(record, name) is not None:
            raise RecordError(f"{where}: `{name}` does not belong to a {record.kind} record.")
    if record.kind == "text" and not (isinstance(record.text, str) and record.text):
        raise RecordError(f"{where}: text must be a non-empty string.")
    if record.kind == "fim":
        if not all(isinstance(getattr(record, name), str) for name in payload):
            raise RecordError(f"{where}: prefix, suffix and middle must be strings.")
        if not record.middle:
            raise RecordError(f"{where}: middle must not be empty.")
    if record.kind == "chat":
        _validate_messages(where, record.messages)
    if record.place is not None:
        _validate_place(where, record.place)
    if record.generated is not None and not isinstance(record.generated, Generated):
        raise RecordError(f"{where}: generated must be a Generated, got {record.generated!r}.")
    if record.difficulty is not None:
        _validate_difficulty(where, record.difficulty)


def _validate_difficulty(where: str, difficulty: Any) -> None:
    number = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)  # noqa: E731
    if not isinstance(difficulty, Difficulty) or not number(difficulty.score) or not 0.0 <= difficulty.score <= 1.0:
        raise RecordError(f"{where}: difficulty must be a Difficulty with a score in [0, 1], got {difficulty!r}.")
    counts = {name: getattr(difficulty, name) for name in ("tokens", "nodes", "depth", "functions", "clauses", "otp")}
    if bad := {k: v for k, v in counts.items() if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0)}:
        raise RecordError(f"{where}: difficulty counts must be whole numbers >= 0, got {bad}.")


def _validate_messages(where: str, messages: Any) -> None:
    if not isinstance(messages, tuple) or not messages:
        raise RecordError(f"{where}: messages must be a non-empty tuple of Message.")
    for message in messages:
        if not isinstance(message, Message) or message.role not in ROLES or not isinstance(message.content, str):
            raise RecordError(f"{where}: each message needs a role in {ROLES} and string content, got {message!r}.")
        if not message.content:
            raise RecordError(f"{where}: a {message.role} message is empty.")
    turns = messages[1:] if messages[0].role == "system" else messages
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    if not turns or [m.role for m in turns] != expected[:len(turns)] or turns[-1].role != "assistant":
        raise RecordError(f"{where}: turns must alternate user/assistant (after an optional system message) "
                          f"and end with the assistant.")


def _validate_place(where: str, place: Any) -> None:
    strings = lambda values: isinstance(values, tuple) and all(isinstance(v, str) for v in values)  # noqa: E731
    if not isinstance(place, Place) or not isinstance(place.document, str) or not place.document:
        raise RecordError(f"{where}: place must be a Place with a document title.")
    if not strings(place.section) or not strings(place.introduces):
        raise RecordError(f"{where}: place.section and place.introduces must be tuples of strings.")
    if isinstance(place.order, bool) or not isinstance(place.order, int) or place.order < 0:
        raise RecordError(f"{where}: place.order must be an integer >= 0, got {place.order!r}.")
    if isinstance(place.position, bool) or not isinstance(place.position, (int, float)) or not \
            0.0 <= place.position <= 1.0:
        raise RecordError(f"{where}: place.position must be a number in [0, 1], got {place.position!r}.")
    if place.chapter is not None and (isinstance(place.chapter, bool) or not isinstance(place.chapter, int)
                                      or place.chapter < 0):
        raise RecordError(f"{where}: place.chapter must be None or an integer >= 0, got {place.chapter!r}.")
    if place.pages is not None and not (isinstance(place.pages, tuple) and len(place.pages) == 2 and all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in place.pages)
            and place.pages[0] <= place.pages[1]):
        raise RecordError(f"{where}: place.pages must be None or (first, last) pages from 1, got {place.pages!r}.")
    for label in place.code:
        if not (isinstance(label, CodeLabel) and isinstance(label.language, str) and label.parses in (True, False, None)
                and strings(label.modules) and strings(label.calls) and strings(label.constructs)):
            raise RecordError(f"{where}: place.code must hold CodeLabels (language, parses, modules, calls, "
                              f"constructs), got {label!r}.")
