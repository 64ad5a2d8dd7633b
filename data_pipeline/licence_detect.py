"""The licence a source tree declares, for trees that come without metadata (local folders and repositories).

In order, the first that names a licence wins:
  1. licence files at the root (LICENSE, LICENCE, COPYING, UNLICENSE, with any suffix: LICENSE.md,
     LICENSE-MIT): each is recognised from the standard texts, or from the standard notice ("Licensed under
     the Apache License, Version 2.0 ..."); several files with different licences mean all of them (AND);
  2. `mix.exs` `licenses: [...]` (what Hex shows; gen_stage, mox and nimble_parsec declare theirs only there
     and in their README), alternatives as on Hex;
  3. the README's licence section ("## License", "## Copyright and License"), or an
     `SPDX-License-Identifier:` line in it.
A licence file that is there but not recognised makes the tree's licence unknown, so it is excluded and
reported rather than guessed from weaker evidence.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from data_pipeline.licences import LicenceExpressionError, parse, render

_LICENCE_FILE = re.compile(r"(?i)^(un)?licen[cs]e|^copying")
_README = re.compile(r"(?i)^readme(\.(md|markdown|txt|rst))?$")
_MIX_LICENSES = re.compile(r"\blicenses:\s*\[([^\]]*)\]")
_SPDX_LINE = re.compile(r"SPDX-License-Identifier:\s*([^\n*>]+?)\s*(?:-->|\*/|$)", re.MULTILINE)
_HEADING = re.compile(r"^(#{1,6})\s*(.*?)\s*#*\s*$|^(.+)\n(=+|-+)\s*$", re.MULTILINE)
UNRECOGNISED = "LicenseRef-unrecognised"
MAX_LICENCE_BYTES = 256 * 1024  # a licence file is a few KB; larger "licence" files are not read whole

# (SPDX id, phrases of its standard text, notice or name), on text lower-cased with everything but letters
# and digits turned into single spaces. Checked in order, the first that matches wins. Licence texts name other
# licences (MPL-2.0 lists the GPLs, the GPL mentions the LGPL and the AGPL), so the GNU licences are known by
# their title or notice: the name followed by "version" or "as published".
_GNU = r"(version|as published by the free software foundation( either)?( version)?)"
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("MPL-2.0", (r"mozilla public license (version |v )?2 0", r"\bmpl 2 0\b")),
    ("AGPL-3.0", (rf"gnu affero general public license {_GNU}",)),
    ("LGPL-2.1", (rf"gnu lesser general public license {_GNU} 2 1", r"gnu library general public license")),
    ("LGPL-3.0", (rf"gnu lesser general public license {_GNU}",)),
    ("GPL-2.0", (rf"gnu general public license {_GNU} 2\b", r"\bgpl ?(v|version )?2\b")),
    ("GPL-3.0", (rf"gnu general public license {_GNU}", r"\bgpl ?(v|version )?3\b")),
    ("Apache-2.0", (r"\bapache( software)?( license| licence)?( version| v)? ?2\b",)),
    ("BSD-3-Clause", (r"redistribution and use in source and binary forms.*neither the name",
                      r"redistribution and use in source and binary forms.*names of (its|the) contributors may not",
                      r"\bbsd 3 clause\b", r"\b3 clause bsd\b", r"\bnew bsd\b", r"\bmodified bsd\b")),
    ("BSD-2-Clause", (r"redistribution and use in source and binary forms", r"\bbsd 2 clause\b",
                      r"\b2 clause bsd\b", r"\bsimplified bsd\b")),
    ("ISC", (r"permission to use copy modify and( or)? distribute this software for any purpose with or without "
             r"fee is hereby granted.*copyright notice and this permission notice appear in all copies",
             r"\bisc licen[cs]e\b")),
    ("0BSD", (r"permission to use copy modify and( or)? distribute this software for any purpose with or without "
              r"fee is hereby granted", r"\bzero clause bsd\b", r"\b0bsd\b")),
    ("MIT", (r"permission is hereby granted free of charge to any person obtaining a copy",
             r"\b(the )?mit licen[cs]e\b", r"\blicensed under (the )?mit\b", r"\breleased under (the )?mit\b",
             r"^mit$")),
    ("Unlicense", (r"this is free and unencumbered software released into the public domain", r"\bunlicense\b")),
    ("CC0-1.0", (r"\bcc0\b",)),
    ("BSL-1.0", (r"boost software license",)),
    ("Zlib", (r"altered source versions must be plainly marked as such", r"\bzlib licen[cs]e\b")),
    ("WTFPL", (r"do what the fuck you want to",)),
)
_COMPILED = tuple((spdx, tuple(re.compile(p) for p in phrases)) for spdx, phrases in _RULES)


@dataclasses.dataclass(frozen=True)
class Declared:
    licence: str | None  # an SPDX expression; None when the tree names no licence
    source: str  # where it was found: "LICENSE", "mix.exs licenses", "README.md licence section", or ""


def recognise(text: str) -> str | None:
    """The SPDX id of a licence text, notice or one-line mention, or None."""
    flat = re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()
    return next((spdx for spdx, phrases in _COMPILED if any(p.search(flat) for p in phrases)), None)


def declared_licence(root: Path) -> Declared:
    files = sorted(p for p in root.iterdir() if p.is_file() and _LICENCE_FILE.match(p.name))
    found = {path.name: recognise(_read(path)) or UNRECOGNISED for path in files}
    if found:
        return Declared(" AND ".join(sorted(set(found.values()))), ", ".join(found))
    if (mix := root / "mix.exs").is_file() and (declared := _mix_licences(_read(mix))):
        return Declared(declared, "mix.exs licenses")
    for readme in sorted(p for p in root.iterdir() if p.is_file() and _README.match(p.name)):
        if spdx := _readme_licence(_read(readme)):
            return Declared(spdx, f"{readme.name} licence section")
    return Declared(None, "")


def _read(path: Path) -> str:
    with path.open("rb") as f:
        return f.read(MAX_LICENCE_BYTES).decode("utf-8", "replace")


def _mix_licences(mix: str) -> str | None:
    """`licenses: ["Apache-2.0", "MIT"]` as an SPDX expression (alternatives, as Hex reads them)."""
    if not (match := _MIX_LICENSES.search(mix)):
        return None
    names = re.findall(r'"([^"]+)"', match.group(1))
    try:
        alternatives = [parse(name) for name in names]
    except LicenceExpressionError:
        return UNRECOGNISED
    if not alternatives:
        return None
    return render(alternatives[0] if len(alternatives) == 1 else ("OR", tuple(alternatives)))


def _readme_licence(readme: str) -> str | None:
    if match := _SPDX_LINE.search(readme):
        try:
            return render(parse(match.group(1)))
        except LicenceExpressionError:
            return UNRECOGNISED
    headings = list(_HEADING.finditer(readme))
    for heading, following in zip(headings, headings[1:] + [None]):
        title = heading.group(2) if heading.group(1) else heading.group(3)
        if re.search(r"(?i)licen[cs]e|copying", title or ""):
            section = readme[heading.end():following.start() if following else len(readme)]
            return recognise(section)
    return None
