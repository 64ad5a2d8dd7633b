"""Training records from one parsed Elixir file: the whole file, instructions drawn from it, and FIM.

    text   file            the file itself (stage 1)
    chat   doc_to_impl     a documented function's doc, spec and module context -> its implementation
           otp_behaviour   "write a GenServer/Supervisor/... module that ..." -> the module
           doctest_tests   "write ExUnit tests for ..." -> a test module built from the doctests
           doctest_value   "what does this return?" -> a doctest's expected result
           module_explain  a module (or its API) -> its @moduledoc
    fim    fim             prefix/suffix around a function body (or a function) cut at line boundaries

Pure and deterministic: the same file, provenance and seed give the same records and ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import textwrap

from devstral_jax.data.records import Message, Record, Source
from devstral_jax.elixir.doctests import exunit_module, raised, valid_doctests
from devstral_jax.elixir.parse import Doctest, Function, Module, ParsedFile

OTP_BEHAVIOURS = ("GenServer", "Supervisor", "DynamicSupervisor", "Agent", "Task", "GenStage", "GenEvent",
                  "Application", "Registry", ":gen_statem", ":gen_server", "GenStateMachine")
FRAMEWORK_PREFIXES = ("Phoenix.", "Ecto.")


@dataclasses.dataclass(frozen=True)
class InstructConfig:
    seed: int
    fim_rate: float  # share of files that also give a FIM record
    max_value_questions: int  # "what does this return" records per function
    min_doc_chars: int
    min_moduledoc_chars: int
    max_context_chars: int  # longer modules are not shown whole (in a request or as an answer)


def file_records(source: Source, text: str, parsed: ParsedFile, config: InstructConfig) -> list[Record]:
    lines = text.split("\n")
    records = [_record("file", source, text=text)]
    for module in parsed.modules:
        if module.kind != "defmodule":
            continue
        records += _module_records(source, lines, module, config)
        for function in module.functions:
            records += _function_records(source, lines, module, function, config)
    rng = random.Random(f"{config.seed}:{source.kind}:{source.package}:{source.version}:{source.path}")
    if rng.random() < config.fim_rate and (fim := _fim(source, lines, parsed, rng)):
        records.append(fim)
    return records


def _record(task: str, source: Source, **payload) -> Record:
    if "messages" in payload:
        user, assistant = payload["messages"]
        payload["messages"] = (Message("user", user.strip()), Message("assistant", assistant.strip()))
    kind = "text" if task == "file" else "fim" if task == "fim" else "chat"
    content = {k: [dataclasses.asdict(m) for m in v] if k == "messages" else v for k, v in payload.items()}
    key = json.dumps([task, dataclasses.asdict(source), content], sort_keys=True, ensure_ascii=False)
    return Record(id=hashlib.sha256(key.encode()).hexdigest()[:24], kind=kind, task=task, source=source, **payload)


# --- modules -----------------------------------------------------------------------------------------------

def _module_records(source: Source, lines: list[str], module: Module, config: InstructConfig) -> list[Record]:
    records = []
    code = _dedented(lines, module.line, module.end_line)
    implemented = any(f.has_body for f in module.functions)
    label = _behaviour_label(module)
    if label and implemented and len(code) <= config.max_context_chars:
        records.append(_record("otp_behaviour", source, messages=(_behaviour_request(module, label), _elixir(code))))
    moduledoc = module.moduledoc
    if isinstance(moduledoc, str) and len(moduledoc.strip()) >= config.min_moduledoc_chars:
        shown = _without_lines(lines, module, module.moduledoc_span) if module.moduledoc_span else code
        if implemented and len(shown) <= config.max_context_chars:
            request = f"Explain what this Elixir module does.\n\n{_elixir(shown)}"
        else:
            api = ", ".join(f"`{f.name}/{f.arity}`" for f in module.functions if f.public)
            request = f"What is the Elixir module `{module.name}` for?"
            if api:
                request += f" Its functions include {api}."
        records.append(_record("module_explain", source, messages=(request, moduledoc)))
    return records


def _behaviour_label(module: Module) -> str | None:
    for name in module.uses + module.behaviours:
        if name in OTP_BEHAVIOURS or name.startswith(FRAMEWORK_PREFIXES):
            return name
    return None


def _behaviour_request(module: Module, label: str) -> str:
    parts = [f"Write an Elixir {label} module named `{module.name}`."]
    if isinstance(module.moduledoc, str) and module.moduledoc.strip():
        parts.append(module.moduledoc.strip())
    api = [f"- `{f.name}/{f.arity}`" + (f": {_first_paragraph(f.doc)}" if isinstance(f.doc, str) else "")
           for f in module.functions if f.public and f.impl is None]
    if api:
        parts.append("Its public functions:\n" + "\n".join(api))
    callbacks = [f"`{f.name}/{f.arity}`" for f in module.functions if f.impl not in (None, False)]
    if callbacks:
        parts.append(f"It implements the {label} callbacks {', '.join(callbacks)}.")
    return "\n\n".join(parts)


# --- functions ---------------------------------------------------------------------------------------------

def _function_records(source: Source, lines: list[str], module: Module, function: Function,
                      config: InstructConfig) -> list[Record]:
    if not function.public:
        return []
    records = []
    qualified = f"`{module.name}.{function.name}/{function.arity}`"
    specs = [_dedented(lines, start, end) for start, end in function.spec_spans]
    doc = function.doc.strip() if isinstance(function.doc, str) else ""
    if function.has_body and len(doc) >= config.min_doc_chars:
        request = f"Write the Elixir function {qualified}.\n\nIts documentation:\n\n{doc}"
        if specs:
            spec_code = "\n".join(specs)
            request += f"\n\nIts typespec:\n\n{_elixir(spec_code)}"
        request += f"\n\n{_module_context(module)}"
        code = "\n".join(specs + [_dedented(lines, function.line, function.end_line)])
        records.append(_record("doc_to_impl", source, messages=(request, _elixir(code))))
    if tests := exunit_module(module, function):
        head = "\n".join(specs + [f"{function.kind} {function.signature}"])
        request = f"Write ExUnit tests for the Elixir function {qualified}"
        request += f", documented as: {_first_paragraph(doc)}" if doc else "."
        records.append(_record("doctest_tests", source, messages=(f"{request}\n\n{_elixir(head)}", _elixir(tests))))
    questions = [q for doctest in valid_doctests(function.doctests) for q in _value_questions(doctest)]
    for question, answer in questions[:config.max_value_questions]:
        records.append(_record("doctest_value", source, messages=(question, answer)))
    return records


def _module_context(module: Module) -> str:
    context = f"It belongs to the module `{module.name}`"
    if module.uses:
        context += ", which uses " + ", ".join(f"`{name}`" for name in module.uses)
    context += "."
    if isinstance(module.moduledoc, str) and module.moduledoc.strip():
        context += f" The module's purpose: {_first_paragraph(module.moduledoc)}"
    return context


def _value_questions(doctest: Doctest) -> list[tuple[str, str]]:
    questions = []
    for index, step in enumerate(doctest):
        if step.expected is None or step.expected.startswith("#"):
            continue
        code = "\n".join(s.expr for s in doctest[:index + 1])
        question = f"What does this Elixir code return?\n\n{_elixir(code)}"
        if exception := raised(step.expected):
            name, message = exception
            answer = f"It raises `{name}`" + (f": {message}" if message else ".")
        else:
            answer = _elixir(step.expected)
        questions.append((question, answer))
    return questions


# --- fill in the middle --------------------------------------------------------------------------------------

def _fim(source: Source, lines: list[str], parsed: ParsedFile, rng: random.Random) -> Record | None:
    """Cuts out one function's body (or the whole function, for one-liners) as the middle."""
    functions = [f for m in parsed.modules for f in m.functions if f.end_line <= len(lines)]
    if not functions:
        return None
    function = rng.choice(functions)
    start, end = (function.line, function.end_line - 1) if function.end_line - function.line >= 2 else \
        (function.line - 1, function.end_line)  # 0-based [start, end): the body, or the function
    prefix = "\n".join(lines[:start]) + ("\n" if start else "")
    middle = "\n".join(lines[start:end]) + ("\n" if end < len(lines) else "")
    suffix = "\n".join(lines[end:])
    if not middle.strip():
        return None
    return _record("fim", source, prefix=prefix, suffix=suffix, middle=middle)


# --- text helpers --------------------------------------------------------------------------------------------

def _dedented(lines: list[str], start: int, end: int) -> str:
    return textwrap.dedent("\n".join(lines[start - 1:end])).strip("\n")


def _without_lines(lines: list[str], module: Module, span: tuple[int, int]) -> str:
    kept = lines[module.line - 1:span[0] - 1] + lines[span[1]:module.end_line]
    return textwrap.dedent("\n".join(kept)).strip("\n")


def _first_paragraph(text: str | bool | None) -> str:
    if not isinstance(text, str):
        return ""
    return re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0].strip()


def _elixir(code: str) -> str:
    return f"```elixir\n{code.strip(chr(10))}\n```"
