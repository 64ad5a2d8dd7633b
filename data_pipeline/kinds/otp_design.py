"""otp_design: an OTP process described by requirements -> the real module of the corpus that meets them.

Every requirement is read off the module, none is invented: the behaviour and the options of its `use` (its
child spec), the purpose (the first paragraph of its @moduledoc), its client API (the public functions that
are not callbacks: head, first paragraph of the doc, spec), the callbacks it implements, the messages each
handle_call/handle_cast/handle_info clause matches (its first argument, as written), the names its processes
are started under and, for a supervisor, its strategy and its children in order (as written). A module with
nothing to say beyond its behaviour and API gives no record (otp_behaviour covers it). Checked by compiling the
module (with its package where the package compiles on its own, else alone).
"""

from __future__ import annotations

from data_pipeline.kinds.records import Check, dedented, elixir, first_paragraph, record
from devstral_jax.data.records import Record, Source
from devstral_jax.elixir.parse import Function, Module

BEHAVIOURS = ("GenServer", "Supervisor", "DynamicSupervisor", "Agent", "GenStage", "Application", "Task",
              ":gen_server", ":gen_statem", "GenStateMachine")
# Callbacks of those behaviours, for modules that do not mark them with @impl.
_CALLBACKS = {("init", 1), ("handle_call", 3), ("handle_cast", 2), ("handle_info", 2), ("handle_continue", 2),
              ("terminate", 2), ("code_change", 3), ("format_status", 1), ("format_status", 2), ("start", 2),
              ("stop", 1), ("prep_stop", 1), ("config_change", 3), ("handle_demand", 2), ("handle_events", 3),
              ("handle_subscribe", 4), ("handle_cancel", 3), ("callback_mode", 0)}
_MESSAGES = {"handle_call": "calls", "handle_cast": "casts", "handle_info": "messages"}


def otp_design_record(source: Source, lines: list[str], module: Module, max_chars: int) -> tuple[Record, Check] | None:
    label = next((name for name in module.uses + module.behaviours if name in BEHAVIOURS), None)
    code = dedented(lines, module.line, module.end_line)
    if label is None or not any(f.has_body for f in module.functions) or len(code) > max_chars:
        return None
    callbacks = [f for f in module.functions if _callback(f)]
    handled = [(f, list(dict.fromkeys(head[0] for head in f.heads if head))) for f in callbacks
               if f.name in _MESSAGES]
    otp = module.otp
    if not (any(patterns for _, patterns in handled) or otp.children or otp.strategy or otp.names):
        return None
    requirements = [_behaviour_line(module, label)]
    if purpose := first_paragraph(module.moduledoc):
        requirements.append(f"Its purpose: {purpose}")
    api = [_api_line(lines, f) for f in module.functions if f.public and not _callback(f)]
    if api:
        requirements.append("Its client API:\n" + "\n".join(api))
    for name in otp.names:
        requirements.append(f"Its process is started under the name `{name}`.")
    if callbacks:
        requirements.append("It implements the callbacks " + ", ".join(f"`{f.name}/{f.arity}`" for f in callbacks)
                            + ".")
    for function, patterns in handled:
        if patterns:
            requirements.append(f"`{function.name}/{function.arity}` handles the {_MESSAGES[function.name]} "
                                + ", ".join(f"`{p}`" for p in patterns) + ", in this order.")
    if otp.strategy:
        requirements.append(f"It supervises with the strategy `{otp.strategy}`.")
    if otp.children:
        requirements.append("Its children, in order: " + ", ".join(f"`{child}`" for child in otp.children) + ".")
    request = f"{_ask(module, label)}\n\n" + "\n".join(f"- {r}" for r in requirements)
    return record("otp_design", source, messages=(request, elixir(code))), Check(compile=code)


def _callback(function: Function) -> bool:
    return function.impl not in (None, False) or (function.impl is None and (function.name, function.arity)
                                                 in _CALLBACKS)


def _ask(module: Module, label: str) -> str:
    if module.parent and module.name.startswith(module.parent + "."):
        return (f"Write an Elixir {label} module `{module.name.removeprefix(module.parent + '.')}`, to be nested "
                f"inside the module `{module.parent}`, that meets these requirements:")
    return f"Write an Elixir {label} module named `{module.name}` that meets these requirements:"


def _behaviour_line(module: Module, label: str) -> str:
    use = next((d for d in module.directives if d.kind == "use" and label in d.modules), None)
    if use and use.options:
        return f"It is a {label}, with the child spec options `{use.options}`."
    return f"It is a {label}."


def _api_line(lines: list[str], function: Function) -> str:
    line = f"  - `{function.kind} {function.signature}`"
    if doc := first_paragraph(function.doc):
        line += f": {' '.join(doc.split())}"
    specs = [dedented(lines, start, end) for start, end in function.spec_spans]
    if specs:
        line += " (" + "; ".join(f"`{' '.join(spec.split())}`" for spec in specs) + ")"
    return line
