"""Parsing Elixir with the real Elixir: the Python face of `parser.exs`, served by an ElixirPool.

One pool of long-lived workers parses every file of a run, so thousands of files cost one VM start per
worker. The worker answers with modules, functions, docs, specs and doctests (see parser.exs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from devstral_jax.elixir.worker import ElixirPool

PARSER_SCRIPT = Path(__file__).with_name("parser.exs")
_PUBLIC_KINDS = ("def", "defmacro", "defguard", "defdelegate", "defn")


class SourceSyntaxError(Exception):
    """The file is not valid Elixir (or not UTF-8): it is reported and counted, not fatal."""


@dataclasses.dataclass(frozen=True)
class DoctestStep:
    expr: str
    expected: str | None  # None: a setup step whose value is not checked
    valid: bool  # both sides read as Elixir (an exception or #Opaque<...> value is expected as text)
    bare_assert: bool  # `assert EXPR == EXPECTED`, written as is, compares the two (Elixir's parser says so)
    calls: tuple[tuple[str, int], ...]  # calls without a module that Kernel does not provide
    expr_fixed: tuple[int, ...]  # lines (0-based) of expr inside a multi-line string: never re-indented
    expected_fixed: tuple[int, ...]  # the same for expected


Doctest = tuple[DoctestStep, ...]  # steps that run together (an `iex>` block without blank lines)


@dataclasses.dataclass(frozen=True)
class DoctestDeclaration:
    """`doctest Mod, only: [...], except: [...]` in a test module: which of Mod's doctests a package runs."""

    module: str
    only: tuple[tuple[str, int], ...] | None
    excluded: tuple[tuple[str, int], ...]

    def covers(self, module: str, name: str, arity: int) -> bool:
        return (module == self.module and (name, arity) not in self.excluded
                and (self.only is None or (name, arity) in self.only))


Span = tuple[int, int]  # first and last line


@dataclasses.dataclass(frozen=True)
class Function:
    name: str
    arity: int
    kind: str  # def | defp | defmacro | defmacrop | defguard | defguardp | defdelegate | defn | defnp
    line: int  # of its first clause
    end_line: int  # of its last clause
    signature: str
    doc: str | bool | None  # False for `@doc false`
    doc_line: int | None  # where its @doc starts
    spec_spans: tuple[tuple[int, int], ...]
    impl: str | bool | None
    has_body: bool
    clauses: int  # how many of its clauses have a body
    do_line: int | None  # the `do` of the first body written `do ... end` (None for `do:` and bodiless heads)
    delegate: str | None  # "Mod.fun" a defdelegate hands over to
    span: tuple[int, int] | None  # the lines that show every clause and nothing else; None: generated or mixed
    doctests: tuple[Doctest, ...]
    doc_span: Span | None  # the lines of its @doc
    calls: tuple[tuple[str, int], ...]  # calls without a module that Kernel does not provide (`&f/1` too)
    attributes: tuple[str, ...]  # module attributes its clauses read
    aliases: tuple[str, ...]  # the first part of each module alias its clauses name ("__MODULE__" too)
    heads: tuple[tuple[str, ...], ...]  # each clause's arguments, as written

    @property
    def public(self) -> bool:
        return self.kind in _PUBLIC_KINDS and self.doc is not False


@dataclasses.dataclass(frozen=True)
class Directive:
    """A module-level `alias`, `import`, `require` or `use`."""

    kind: str
    modules: tuple[str, ...]  # full names
    names: tuple[str, ...]  # the short names an alias defines
    options: str | None  # the rest of the directive, as written
    span: Span


@dataclasses.dataclass(frozen=True)
class TypeDef:
    name: str
    arity: int
    kind: str  # type | typep | opaque
    span: Span
    doc: str | bool | None  # its @typedoc
    doc_span: Span | None


@dataclasses.dataclass(frozen=True)
class OtpFacts:
    """What a module's functions hand to OTP, as written."""

    strategy: str | None  # of Supervisor.init/start_link or DynamicSupervisor.init
    children: tuple[str, ...] | None  # the child specs of a literal children list
    names: tuple[str, ...]  # the `name:` a process is started under


@dataclasses.dataclass(frozen=True)
class Module:
    name: str
    kind: str  # defmodule | defprotocol | defimpl
    parent: str | None  # the module it is nested in
    line: int
    end_line: int
    moduledoc: str | bool | None
    moduledoc_span: tuple[int, int] | None
    behaviours: tuple[str, ...]
    uses: tuple[str, ...]
    functions: tuple[Function, ...]
    doctests: tuple[Doctest, ...]
    doctested: tuple[DoctestDeclaration, ...]  # a test module's `doctest Mod` declarations
    directives: tuple[Directive, ...]
    attributes: tuple[tuple[str, Span], ...]  # definitions of module attributes (not docs, specs or types)
    struct: Span | None  # its defstruct
    types: tuple[TypeDef, ...]
    otp: OtpFacts


@dataclasses.dataclass(frozen=True)
class ParsedFile:
    modules: tuple[Module, ...]


@dataclasses.dataclass(frozen=True)
class Snippet:
    """A code block of a guide, notebook or book as the real Elixir reads it (see `snippet/1` in parser.exs)."""

    parses: bool
    error: str | None  # the syntax error when it does not parse
    session: bool  # an IEx session (`iex>` prompts), read as its expressions
    defines: tuple[str, ...]  # modules it defines
    modules: tuple[str, ...]  # modules it names (aliases resolved; Erlang modules as ":ets")
    calls: tuple[str, ...]  # "Mod.fun/arity": remote calls and Kernel function calls
    constructs: tuple[str, ...]  # special forms, Kernel macros (`with`, `|>`, `~r`) and attributes like "@spec"


@dataclasses.dataclass(frozen=True)
class CodeMetrics:
    """How much a piece of code asks of its reader (see `difficulty/1` in parser.exs); all 0 when it does not
    parse."""

    parses: bool
    nodes: int  # AST terms
    depth: int  # the deepest nesting of blocks
    functions: int  # named functions defined
    clauses: int  # function clauses and `->` clauses
    otp: int  # OTP constructs


def parser_pool(size: int, timeout_s: float = 60.0) -> ElixirPool:
    # Every identifier becomes an atom in the worker; recycling it bounds the atom table.
    return ElixirPool(PARSER_SCRIPT, size, timeout=timeout_s, retries=1, max_requests=2000)


def parse_source(pool: ElixirPool, path: str, source: bytes | str) -> ParsedFile:
    """Parses one file; raises SourceSyntaxError when it does not parse."""
    reply = pool.call({"op": "parse", "path": path, "source": source})
    if not reply["ok"]:
        raise SourceSyntaxError(reply["error"])
    return ParsedFile(tuple(_module(m) for m in reply["modules"]))


def read_snippet(pool: ElixirPool, code: str) -> Snippet:
    """Reads one code block (not a whole file: a fragment, an expression or an IEx session is fine)."""
    reply = pool.call({"op": "snippet", "code": code})
    return Snippet(reply["ok"], reply["error"], reply["session"], tuple(reply["defines"]), tuple(reply["modules"]),
                   tuple(reply["calls"]), tuple(reply["constructs"]))


def code_metrics(pool: ElixirPool, codes: list[str]) -> list[CodeMetrics]:
    """The AST figures of each piece of code (a file, a fragment or an IEx session), in one request."""
    return [CodeMetrics(**reply) for reply in pool.call({"op": "difficulty", "codes": list(codes)})]


def read_erlang_terms(pool: ElixirPool, text: str) -> list[Any]:
    """Reads a file of literal Erlang terms (`{a, <<"b">>}.` ...) with Erlang's own scanner and parser."""
    reply = pool.call({"op": "consult", "text": text})
    if not reply["ok"]:
        raise ValueError(f"not valid Erlang terms: {reply['error']}")
    return reply["terms"]


def _doctests(groups: list[list[dict[str, Any]]]) -> tuple[Doctest, ...]:
    return tuple(tuple(DoctestStep(step["expr"], step["expected"], step["valid"], step["bare_assert"],
                                   tuple((name, arity) for name, arity in step["calls"]),
                                   tuple(step["expr_fixed"]), tuple(step["expected_fixed"])) for step in group)
                 for group in groups)


def _pairs(pairs: list[list[Any]] | None) -> tuple[tuple[str, int], ...] | None:
    return None if pairs is None else tuple((name, arity) for name, arity in pairs)


def _span(span: list[int] | None) -> Span | None:
    return tuple(span) if span else None


def _module(m: dict[str, Any]) -> Module:
    functions = tuple(
        Function(name=f["name"], arity=f["arity"], kind=f["kind"], line=f["line"], end_line=f["end_line"],
                 signature=f["signature"], doc=f["doc"], doc_line=f["doc_line"],
                 spec_spans=tuple(tuple(s) for s in f["specs"]), impl=f["impl"], has_body=f["has_body"],
                 clauses=f["clauses"], do_line=f["do_line"], delegate=f["delegate"],
                 span=_span(f["span"]), doctests=_doctests(f["doctests"]), doc_span=_span(f["doc_span"]),
                 calls=_pairs(f["calls"]), attributes=tuple(f["attributes"]), aliases=tuple(f["aliases"]),
                 heads=tuple(tuple(head) for head in f["heads"]))
        for f in m["functions"])
    otp = m["otp"]
    return Module(name=m["name"], kind=m["kind"], parent=m["parent"], line=m["line"], end_line=m["end_line"],
                  moduledoc=m["moduledoc"],
                  moduledoc_span=tuple(m["moduledoc_span"]) if m["moduledoc_span"] else None,
                  behaviours=tuple(m["behaviours"]), uses=tuple(m["uses"]), functions=functions,
                  doctests=_doctests(m["doctests"]),
                  doctested=tuple(DoctestDeclaration(d["module"], _pairs(d["only"]), _pairs(d["except"]))
                                  for d in m["doctested"]),
                  directives=tuple(Directive(d["kind"], tuple(d["modules"]), tuple(d["names"]), d["options"],
                                             _span(d["span"])) for d in m["directives"]),
                  attributes=tuple((name, (line, end)) for name, line, end in m["attributes"]),
                  struct=_span(m["struct"]),
                  types=tuple(TypeDef(t["name"], t["arity"], t["kind"], _span(t["span"]), t["doc"],
                                      _span(t["doc_span"])) for t in m["types"]),
                  otp=OtpFacts(otp["strategy"], otp["children"] and tuple(otp["children"]), tuple(otp["names"])))
