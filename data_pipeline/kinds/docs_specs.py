"""docs_specs: "write the @doc and @spec for this function" (or the @typedoc for this type) -> the package's own.

The function is shown as written, without its documentation and specs; the answer is the attributes exactly as
the package wrote them. Checked by reading the answer as Elixir and compiling the file that holds it (with its
package where the package compiles on its own, else the file alone); where the file cannot be compiled here
for want of a dependency, the answer having read as Elixir is enough.
"""

from __future__ import annotations

from data_pipeline.kinds.records import Check, dedented, elixir, record
from devstral_jax.data.records import Record, Source
from devstral_jax.elixir.parse import Function, Module, Span


def docs_specs_records(source: Source, lines: list[str], module: Module, min_doc_chars: int,
                       max_chars: int) -> list[tuple[Record, Check]]:
    made = [_function_record(source, lines, module, f, min_doc_chars, max_chars) for f in module.functions]
    made += [_type_record(source, lines, module, t.span, t.doc_span, max_chars) for t in module.types
             if isinstance(t.doc, str) and len(t.doc.strip()) >= min_doc_chars and t.doc_span]
    return [m for m in made if m]


def _function_record(source: Source, lines: list[str], module: Module, function: Function, min_doc_chars: int,
                     max_chars: int) -> tuple[Record, Check] | None:
    if not (function.public and function.span and (function.has_body or function.kind == "defdelegate")):
        return None
    documented = isinstance(function.doc, str) and len(function.doc.strip()) >= min_doc_chars and function.doc_span
    spans = ([function.doc_span] if documented else []) + list(function.spec_spans)
    if not spans or any(_inside(span, function.span) for span in spans):
        return None
    wanted = " and ".join((["the documentation (`@doc`)"] if documented else []) +
                          (["the typespec (`@spec`)"] if function.spec_spans else []))
    code = dedented(lines, *function.span)
    answer = "\n".join(dedented(lines, *span) for span in sorted(spans))
    if len(code) + len(answer) > max_chars:
        return None
    request = (f"Write {wanted} for the function `{module.name}.{function.name}/{function.arity}` of the Elixir "
               f"module `{module.name}`:\n\n{elixir(code)}")
    return record("docs_specs", source, messages=(request, elixir(answer))), _check(source.path, answer)


def _type_record(source: Source, lines: list[str], module: Module, span: Span, doc_span: Span,
                 max_chars: int) -> tuple[Record, Check] | None:
    if _inside(doc_span, span):
        return None
    code, answer = dedented(lines, *span), dedented(lines, *doc_span)
    if len(code) + len(answer) > max_chars:
        return None
    request = f"Write the documentation (`@typedoc`) for this type of the Elixir module `{module.name}`:\n\n" \
              f"{elixir(code)}"
    return record("docs_specs", source, messages=(request, elixir(answer))), _check(source.path, answer)


def _check(path: str, answer: str) -> Check:
    return Check(file=path, parse=answer, keep_if=("passed", "missing"))


def _inside(span: Span, outer: Span) -> bool:
    return outer[0] <= span[0] <= outer[1]
