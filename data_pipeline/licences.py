"""Licence decisions: which sources may be used, by SPDX id against a configurable allowlist.

Hex metadata holds free-form licence names ("Apache 2.0", "MIT License"); the common spellings are
mapped to SPDX ids first. A unit with several licences (dual licensing) is allowed when any one is.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

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

@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    licence: str  # the SPDX id(s) considered, joined with " OR "; "NOASSERTION" when none is known
    reason: str


def normalize(name: str) -> str:
    """An SPDX id for a free-form licence name; unknown names come back stripped and unchanged."""
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()), name.strip())


def decide(licences: Iterable[str], allow: Iterable[str]) -> Decision:
    """Allowed when any of `licences` (normalized) is in `allow`."""
    allow = set(allow)
    ids = sorted({normalize(name) for name in licences if name and name.strip()})
    if not ids or ids == ["NOASSERTION"]:
        return Decision(False, "NOASSERTION", "no licence declared")
    joined = " OR ".join(ids)
    if permitted := [spdx for spdx in ids if spdx in allow]:
        return Decision(True, joined, f"{permitted[0]} is on the allowlist")
    return Decision(False, joined, f"{joined} is not on the allowlist")
