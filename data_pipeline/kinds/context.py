"""Self-contained context for a doc->implementation record: what the answer needs beyond the function itself.

A function's answer is only complete when every name it uses is either in the answer or shown in the request.
From the parser's facts (each function's local calls, attributes read and aliases named):

  helpers     the private functions it calls, transitively: they go into the answer, after the function;
  named       the module's public functions it calls: the request lists their heads (they exist already);
  definitions the module-level lines it relies on: the aliases it names, `require`s of modules it names, the
              attributes it reads, the defstruct when it builds `%__MODULE__{}`, the module's own types its
              specs use, and the module's `import`s and `use`s when it calls something neither it nor the
              module defines (Kernel's calls aside).

When the helpers would make the answer longer than the limit, they are listed in the request instead. A
function that calls what neither the module defines nor an `import`/`use` of it may bring (a function a
macro generates) cannot be made complete: it gives no record. The check (verify.py) compiles the
definitions, stubs of the named functions and the answer as one module: a call or attribute the request
does not show fails it.
"""

from __future__ import annotations

import collections
import dataclasses
import re

from data_pipeline.kinds.records import SNIPPET_MODULE, dedented
from devstral_jax.elixir.parse import Function, Module, Span

PRIVATE_KINDS = ("defp", "defmacrop", "defguardp", "defnp")
_MACRO_KINDS = ("defmacro", "defmacrop")
_GUARD_KINDS = ("defguard", "defguardp")
_IDENTIFIER = re.compile(r"[a-z_][a-zA-Z0-9_]*[?!]?")
_ATTRIBUTE_READ = re.compile(r"(?<![\w@])@([a-z_][a-zA-Z0-9_]*[?!]?)(?!\w)")
_NAME = re.compile(r"(?<![\w.:@])([a-z_][a-zA-Z0-9_]*)(?![\w?!:])")  # a type's name, with or without ()


@dataclasses.dataclass(frozen=True)
class Context:
    helpers: tuple[Function, ...]  # private functions the answer brings along, in source order
    named: tuple[Function, ...]  # other functions of the module it calls, whose heads the request lists
    stubs: tuple[tuple[str, str, int], ...]  # (kind, name, arity) the check defines for the named functions
    # (not those the answer defines: a function with defaults defines the lower arities too)
    definitions: tuple[Span, ...]  # module-level lines the request shows, in source order
    complete: bool  # every local call it makes is shown, or may come from an `import`/`use` the request shows

    def definitions_code(self, lines: list[str]) -> str:
        return "\n".join(dedented(lines, start, end) for start, end in self.definitions)


def context(module: Module, function: Function, answer_without_helpers: str, lines: list[str],
            max_chars: int) -> Context:
    """What `function` (answered with `answer_without_helpers`, its specs and clauses) needs from `module`."""
    helpers, named = _callees(module, function)
    if helpers and len(answer_without_helpers) + sum(len(helper_code(h, lines)) for h in helpers) > max_chars:
        helpers, named = (), _direct_callees(module, function)
    users = (function, *helpers)
    aliases = {alias for f in users for alias in f.aliases}
    attributes = {a for f in users for a in f.attributes}
    attributes |= set(_ATTRIBUTE_READ.findall(answer_without_helpers))  # e.g. the condition of a wrapping `if`
    unresolved = {call for f in users for call in f.calls if _resolve(module, *call) is None}
    importing = any(d.kind in ("import", "use") for d in module.directives)
    spans = [d.span for d in module.directives if _needed(d.kind, d.modules, d.names, aliases, bool(unresolved))]
    spans += [span for name, span in module.attributes if name in attributes]
    specs = "\n".join(dedented(lines, *span) for f in users for span in f.spec_spans)
    spans += _types_used(module, specs, lines)
    if module.struct and ("__MODULE__" in aliases or any("%__MODULE__" in dedented(lines, *s) for s in spans)):
        spans.append(module.struct)
        spans += [span for name, span in module.attributes if name in ("enforce_keys", "derive")]
    stubs = sorted({(callee.kind, name, arity) for f in users for name, arity in f.calls
                    if (callee := _resolve(module, name, arity)) in named
                    and not any(u.name == name and u.arity >= arity for u in users)})
    return Context(tuple(helpers), tuple(named), tuple(stubs), tuple(sorted(set(spans))),
                   complete=not unresolved or importing)


def answer(ctx: Context, code: str, lines: list[str]) -> str:
    """The function's code with its helpers: private macros and guards first (they must be defined before they
    are used, as the module defines them), the other helpers after the function."""
    before = [helper_code(h, lines) for h in ctx.helpers if h.kind in _MACRO_KINDS + _GUARD_KINDS]
    after = [helper_code(h, lines) for h in ctx.helpers if h.kind not in _MACRO_KINDS + _GUARD_KINDS]
    return "\n\n".join(before + [code] + after)


def helper_code(helper: Function, lines: list[str]) -> str:
    return "\n".join([dedented(lines, start, end) for start, end in helper.spec_spans
                      if not (helper.span[0] <= start <= helper.span[1])] + [dedented(lines, *helper.span)])


def shown(function: Function) -> bool:
    """Whether a helper can be shown as written: its clauses have a span of their own."""
    return function.span is not None


def heads(functions: tuple[Function, ...]) -> str:
    return "\n".join(f"{f.kind} {f.signature}" for f in functions)


def snippet(ctx: Context, lines: list[str], answer: str) -> str:
    """The module the check compiles: the definitions shown, stubs of the named functions, the answer."""
    stubs = [_stub(kind, name, arity) for kind, name, arity in ctx.stubs if _IDENTIFIER.fullmatch(name)]
    parts = [ctx.definitions_code(lines), "\n".join(stubs), answer]
    return f"defmodule {SNIPPET_MODULE} do\n" + "\n\n".join(p for p in parts if p) + "\nend\n"


def _stub(kind: str, name: str, arity: int) -> str:
    args = ", ".join(f"arg{i}" for i in range(arity))
    if kind in _GUARD_KINDS:
        return f"defguard {name}({args}) when " + (" and ".join(f"arg{i} == arg{i}" for i in range(arity)) or "true")
    keyword = "defmacro" if kind in _MACRO_KINDS else "def"
    unused = ", ".join(f"_arg{i}" for i in range(arity))
    return f"{keyword} {name}({unused}), do: nil"


def _types_used(module: Module, specs: str, lines: list[str]) -> list[Span]:
    """The spans of the module's own types that `specs` name, and of the types those name."""
    types = {t.name: t.span for t in module.types}
    wanted = [name for name in dict.fromkeys(_NAME.findall(specs)) if name in types]
    for name in wanted:  # grows as type definitions name other types
        wanted += [n for n in dict.fromkeys(_NAME.findall(dedented(lines, *types[name])))
                   if n in types and n not in wanted]
    return [types[name] for name in wanted]


def _callees(module: Module, function: Function) -> tuple[list[Function], list[Function]]:
    """The private functions `function` reaches through private calls (in source order), and the other
    functions of the module they call."""
    helpers: list[Function] = []
    named: list[Function] = []
    queue = collections.deque([function])
    while queue:
        for call in queue.popleft().calls:
            callee = _resolve(module, *call)
            if callee is None or callee is function or callee in helpers or callee in named:
                continue
            if callee.kind in PRIVATE_KINDS and shown(callee):
                helpers.append(callee)
                queue.append(callee)
            else:
                named.append(callee)
    return sorted(helpers, key=lambda f: f.line), sorted(named, key=lambda f: f.line)


def _direct_callees(module: Module, function: Function) -> list[Function]:
    callees = {_resolve(module, *call) for call in function.calls} - {None, function}
    return sorted(callees, key=lambda f: f.line)


def _resolve(module: Module, name: str, arity: int) -> Function | None:
    """The function of `module` a local call names: the same arity, or more (arguments with defaults)."""
    candidates = [f for f in module.functions if f.name == name and f.arity >= arity]
    return min(candidates, key=lambda f: f.arity) if candidates else None


def _needed(kind: str, modules: tuple[str, ...], names: tuple[str, ...], aliases: set[str], unresolved: bool) -> bool:
    if kind == "alias":
        return bool(set(names) & aliases)
    if kind == "require":
        return any(m.split(".")[0] in aliases or m.rsplit(".", 1)[-1] in aliases for m in modules)
    return unresolved  # import, use: they may define what it calls
