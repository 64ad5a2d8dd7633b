"""Ollama's two languages, as far as our Modelfiles use them, checked strictly (anything else is an error):

- the Modelfile grammar of Ollama's docs/modelfile.md: `# comment` lines and `INSTRUCTION arguments`, with
  FROM required once, arguments bare, "quoted" or \"\"\"multi-line\"\"\", and PARAMETER names and value types
  from its table of valid parameters;
- Go's text/template, which Ollama renders TEMPLATE with: text and {{ actions }} with `{{-`/`-}}` trimming,
  `if`/`else if`/`else`/`end`, `range $i, $m := pipeline`, `$v := x` / `$v = x` (scoped as in Go), fields
  (`.Role`, `$.System`, `$m.Content`), string and integer literals, and the functions `eq`, `and`, `not`.
Go's rules followed: a trim marker eats all adjacent whitespace; a variable lives until the `end` of the block
it is declared in; `and` returns its first empty argument or its last; empty values ("", 0, nil, empty list)
are false.
"""

from __future__ import annotations

import re
from typing import Any

INSTRUCTIONS = {"FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE", "REQUIRES"}
PARAMETER_TYPES = {"mirostat": int, "mirostat_eta": float, "mirostat_tau": float, "num_ctx": int,
                   "repeat_last_n": int, "repeat_penalty": float, "temperature": float, "seed": int, "stop": str,
                   "num_predict": int, "top_k": int, "top_p": float, "min_p": float}


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, argument)] in file order; raises ValueError on anything outside the grammar."""
    commands, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(" ")
        name, rest = name.upper(), rest.strip()
        if name not in INSTRUCTIONS or not rest:
            raise ValueError(f"line {i}: {line!r} is not `INSTRUCTION arguments`")
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body:
                if i == len(lines):
                    raise ValueError(f"unterminated \"\"\" in {name}")
                body += "\n" + lines[i]
                i += 1
            body, _, after = body.partition('"""')
            if after.strip():
                raise ValueError(f"text after the closing \"\"\" of {name}: {after!r}")
            rest = body
        commands.append((name, rest))
    if [name for name, _ in commands].count("FROM") != 1:
        raise ValueError("a Modelfile has exactly one FROM")
    for name, argument in commands:
        if name == "PARAMETER":
            parameter_value(argument)
    return commands


def parameter_value(argument: str) -> tuple[str, Any]:
    """`name value` of a PARAMETER, the value converted to the type Ollama's table gives it."""
    key, _, value = argument.partition(" ")
    if key not in PARAMETER_TYPES:
        raise ValueError(f"unknown PARAMETER {key!r}")
    value = value.strip()
    if value.startswith('"'):
        if not (len(value) >= 2 and value.endswith('"')):
            raise ValueError(f"unterminated quote in PARAMETER {argument!r}")
        value = value[1:-1]
    return key, PARAMETER_TYPES[key](value)


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|-?\d+|\(|\)|\$\w*(?:\.\w+)*|\.\w+(?:\.\w+)*|\.|[A-Za-z_]\w*)')


def render_go_template(template: str, data: dict[str, Any]) -> str:
    """Renders `template` with `data` as the dot (and `$`)."""
    pieces: list[Any] = []  # text and (action source, trims the text after it), alternating
    position = 0
    for match in _ACTION.finditer(template):
        text = template[position:match.start()]
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        if pieces and isinstance(pieces[-1], tuple) and pieces[-1][1]:
            text = text.lstrip(" \t\r\n")
        pieces += [text, (match.group(2).strip(), bool(match.group(3)))]
        position = match.end()
    tail = template[position:]
    pieces.append(tail.lstrip(" \t\r\n") if pieces and isinstance(pieces[-1], tuple) and pieces[-1][1] else tail)
    nodes, _ = _parse([p if isinstance(p, str) else p[0] for p in pieces], 0, top=True)
    out: list[str] = []
    _run(nodes, data, [{"$": data}], out)
    return "".join(out)


def _parse(pieces: list[str], i: int, top: bool = False) -> tuple[list[Any], int]:
    """Nodes until `end`/`else` (returned with the index of that action) or the end of the template."""
    nodes, text_next = [], True
    while i < len(pieces):
        piece = pieces[i]
        if text_next:
            if piece:
                nodes.append(("text", piece))
            text_next, i = False, i + 1
            continue
        text_next = True
        words = piece.split(None, 1)
        keyword = words[0] if words else ""
        if keyword in ("end", "else"):
            if top:
                raise ValueError(f"unexpected {{{{ {piece} }}}}")
            return nodes, i
        if keyword == "if":
            branches, condition = [], words[1]
            while True:
                body, i = _parse(pieces, i + 1)
                branches.append((condition, body))
                closing = pieces[i].split(None, 2)
                if closing[0] == "end":
                    break
                condition = closing[2] if len(closing) > 2 and closing[1] == "if" else None
            nodes.append(("if", branches))
            i += 1
        elif keyword == "range":
            match = re.fullmatch(r"(\$\w+)\s*,\s*(\$\w+)\s*:=\s*(.+)", words[1], re.S)
            if not match:
                raise ValueError(f"unsupported range: {piece!r}")
            body, i = _parse(pieces, i + 1)
            if pieces[i].strip() != "end":
                raise ValueError("range ... else is not supported")
            nodes.append(("range", match[1], match[2], match[3], body))
            i += 1
        elif match := re.fullmatch(r"(\$\w+)\s*(:=|=)\s*(.+)", piece, re.S):
            nodes.append(("declare" if match[2] == ":=" else "assign", match[1], match[3]))
            i += 1
        else:
            nodes.append(("print", piece))
            i += 1
    if not top:
        raise ValueError("missing {{ end }}")
    return nodes, i


def _run(nodes: list[Any], dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "print":
            out.append(_string(_evaluate(node[1], dot, scopes)))
        elif kind == "declare":
            scopes[-1][node[1]] = _evaluate(node[2], dot, scopes)
        elif kind == "assign":
            scope = next((s for s in reversed(scopes) if node[1] in s), None)
            if scope is None:
                raise ValueError(f"{node[1]} is assigned before it is declared")
            scope[node[1]] = _evaluate(node[2], dot, scopes)
        elif kind == "if":
            for condition, body in node[1]:
                if condition is None or _truth(_evaluate(condition, dot, scopes)):
                    _run(body, dot, scopes + [{}], out)
                    break
        else:  # range
            _, index_var, item_var, pipeline, body = node
            for index, item in enumerate(_evaluate(pipeline, dot, scopes)):
                _run(body, item, scopes + [{index_var: index, item_var: item}], out)


def _evaluate(source: str, dot: Any, scopes: list[dict[str, Any]]) -> Any:
    tokens = _TOKEN.findall(source)
    if "".join(tokens).replace(" ", "") != re.sub(r"\s+", "", source):
        raise ValueError(f"unsupported expression {source!r}")
    value, position = _command(tokens, 0, dot, scopes)
    if position != len(tokens):
        raise ValueError(f"unsupported expression {source!r}")
    return value


def _command(tokens: list[str], i: int, dot: Any, scopes: list[dict[str, Any]]) -> tuple[Any, int]:
    """A function call (`eq a b`) or a single operand, up to a closing parenthesis or the end."""
    functions = {"eq": lambda a, b: a == b, "not": lambda a: not _truth(a),
                 "and": lambda *args: next((a for a in args if not _truth(a)), args[-1])}
    if tokens[i] in functions:
        name, args, i = tokens[i], [], i + 1
        while i < len(tokens) and tokens[i] != ")":
            value, i = _operand(tokens, i, dot, scopes)
            args.append(value)
        return functions[name](*args), i
    return _operand(tokens, i, dot, scopes)


def _operand(tokens: list[str], i: int, dot: Any, scopes: list[dict[str, Any]]) -> tuple[Any, int]:
    token = tokens[i]
    if token == "(":
        value, i = _command(tokens, i + 1, dot, scopes)
        if tokens[i] != ")":
            raise ValueError("missing )")
        return value, i + 1
    if token.startswith('"'):
        return token[1:-1].encode().decode("unicode_escape"), i + 1
    if re.fullmatch(r"-?\d+", token):
        return int(token), i + 1
    if token.startswith("$"):
        name, *fields = token.split(".")
        scope = next((s for s in reversed(scopes) if name in s), None)
        if scope is None:
            raise ValueError(f"undefined variable {name}")
        value = scope[name]
    elif token.startswith("."):
        value, fields = dot, [f for f in token.split(".") if f]
    else:
        raise ValueError(f"unsupported operand {token!r}")
    for field in fields:
        value = value[field]
    return value, i + 1


def _truth(value: Any) -> bool:
    return value not in (None, "", 0, False) and not (isinstance(value, (list, dict)) and not value)


def _string(value: Any) -> str:
    return "<no value>" if value is None else str(value)
