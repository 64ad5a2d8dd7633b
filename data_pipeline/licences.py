"""Licence decisions: which sources may be used, by SPDX expression against a configurable allowlist.

A declared licence is an SPDX expression (`MIT`, `MIT OR Apache-2.0`, `(MIT AND BSD-3-Clause) OR GPL-3.0`,
`Apache-2.0 WITH LLVM-exception`) or a free-form name as Hex metadata has them ("Apache 2.0", "MIT License"),
mapped to SPDX ids first. `OR` is allowed when any side is, `AND` only when every side is; an exception
(`WITH`) only adds permissions, so it is allowed when its licence is. A unit that lists several licences
(Hex's `licenses: [...]`) offers them as alternatives. Unknown names are not on any allowlist.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Union

# Spellings seen in Hex metadata, lower-cased with everything but letters and digits removed -> SPDX id.
_ALIASES = {
    "mit": "MIT", "mitlicense": "MIT", "themitlicense": "MIT", "expat": "MIT",
    "apache2": "Apache-2.0", "apache20": "Apache-2.0", "apachev2": "Apache-2.0", "apachelicense20": "Apache-2.0",
    "apachelicensev2": "Apache-2.0", "apachelicenseversion20": "Apache-2.0", "asl2": "Apache-2.0",
    "asl20": "Apache-2.0",
    "bsd": "BSD-3-Clause", "bsd3": "BSD-3-Clause", "bsd3clause": "BSD-3-Clause", "newbsd": "BSD-3-Clause",
    "bsd2": "BSD-2-Clause", "bsd2clause": "BSD-2-Clause", "simplifiedbsd": "BSD-2-Clause",
    "isc": "ISC", "isclicense": "ISC", "0bsd": "0BSD",
    "mpl2": "MPL-2.0", "mpl20": "MPL-2.0", "mozillapubliclicense20": "MPL-2.0",
    "unlicense": "Unlicense", "theunlicense": "Unlicense", "wtfpl": "WTFPL", "cc0": "CC0-1.0", "cc010": "CC0-1.0",
    "lgpl": "LGPL-3.0", "gpl": "GPL-3.0", "gplv3": "GPL-3.0", "gpl3": "GPL-3.0", "gplv2": "GPL-2.0",
    "agpl": "AGPL-3.0", "agplv3": "AGPL-3.0",
}
_OPERATORS = ("AND", "OR", "WITH")
_TOKEN = re.compile(r"\(|\)|[^\s()]+")

# A parsed expression: an SPDX id (or "<id> WITH <exception>"), or (operator, operands).
Expression = Union[str, tuple[str, tuple["Expression", ...]]]


class LicenceExpressionError(ValueError):
    """An SPDX expression that does not parse (unbalanced parentheses, a dangling operator)."""


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    licence: str  # the SPDX expression considered; "NOASSERTION" when none is known
    reason: str
    source: str = ""  # where the licence was found: "hex metadata", "LICENSE", "mix.exs licenses", ...


def normalize(name: str) -> str:
    """An SPDX id for a free-form licence name; unknown names come back stripped and unchanged."""
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()), name.strip())


def parse(text: str) -> Expression:
    """An SPDX expression (operators in any case); the words between operators are one licence name."""
    tokens = _TOKEN.findall(text)
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        position += 1
        return tokens[position - 1]

    def binary(operator: str, operand) -> Expression:
        operands = [operand()]
        while (token := peek()) is not None and token.upper() == operator:
            take()
            operands.append(operand())
        return operands[0] if len(operands) == 1 else (operator, tuple(operands))

    def atom() -> Expression:
        if peek() == "(":
            take()
            inner = binary("OR", lambda: binary("AND", atom))
            if peek() != ")":
                raise LicenceExpressionError(f"{text!r}: a parenthesis is not closed")
            take()
            return inner
        words = []
        while (token := peek()) is not None and token not in "()" and token.upper() not in _OPERATORS:
            words.append(take())
        if not words:
            raise LicenceExpressionError(f"{text!r}: a licence is missing near {peek() or 'the end'!r}")
        licence = normalize(" ".join(words))
        if (token := peek()) is not None and token.upper() == "WITH":
            take()
            exception = []
            while (token := peek()) is not None and token not in "()" and token.upper() not in _OPERATORS:
                exception.append(take())
            licence = f"{licence} WITH {' '.join(exception)}"
        return licence

    expression = binary("OR", lambda: binary("AND", atom))
    if position != len(tokens):
        raise LicenceExpressionError(f"{text!r}: unexpected {tokens[position]!r}")
    return expression


def render(expression: Expression) -> str:
    if isinstance(expression, str):
        return expression
    operator, operands = expression
    return f" {operator} ".join(render(o) if isinstance(o, str) else f"({render(o)})" for o in operands)


def refused(expression: Expression, allow: set[str]) -> list[str]:
    """The licences that keep `expression` off the allowlist (empty when it is allowed)."""
    if isinstance(expression, str):
        return [] if expression.split(" WITH ")[0] in allow else [expression]
    operator, operands = expression
    parts = [refused(operand, allow) for operand in operands]
    if operator == "OR":
        return [] if any(not part for part in parts) else [licence for part in parts for licence in part]
    return [licence for part in parts for licence in part]


def decide(licences: Iterable[str], allow: Iterable[str], source: str = "") -> Decision:
    """Allowed when any of `licences` (each an SPDX expression or a free-form name) is allowed."""
    allow = set(allow)
    names = sorted({name.strip() for name in licences if name and name.strip() and name.strip() != "NOASSERTION"})
    if not names:
        return Decision(False, "NOASSERTION", "no licence declared", source)
    try:
        alternatives = [parse(name) for name in names]
    except LicenceExpressionError as error:
        return Decision(False, " OR ".join(names), f"not a licence expression: {error}", source)
    expression = alternatives[0] if len(alternatives) == 1 else ("OR", tuple(alternatives))
    licence = render(expression)
    if not (blocking := refused(expression, allow)):
        return Decision(True, licence, f"{licence} is on the allowlist", source)
    return Decision(False, licence, f"{' and '.join(sorted(set(blocking)))} "
                                    f"{'is' if len(set(blocking)) == 1 else 'are'} not on the allowlist", source)
