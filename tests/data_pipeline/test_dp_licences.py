"""Licences: SPDX expressions against the allowlist, and what a local tree declares (licence files, mix.exs,
README), checked on the real licence files of corpus repositories."""

import json
from pathlib import Path

import pytest
from conftest import FIXTURES

from data_pipeline.licence_detect import declared_licence, recognise
from data_pipeline.licences import decide
from data_pipeline.run import run

REAL = FIXTURES / "real"
ALLOW = ("MIT", "Apache-2.0", "BSD-3-Clause")
MODULE = "defmodule Lib do\n  @moduledoc \"A library module for the licence tests.\"\n  def f(x), do: x + 1\nend\n"

BSD_3 = """Redistribution and use in source and binary forms, with or without modification, are permitted provided
that the following conditions are met: ... 3. Neither the name of the copyright holder nor the names of its
contributors may be used to endorse or promote products derived from this software without specific prior
written permission."""
BSD_2 = """Redistribution and use in source and binary forms, with or without modification, are permitted provided
that the following conditions are met: 1. Redistributions of source code must retain the above copyright notice."""
ISC = """Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee is
hereby granted, provided that the above copyright notice and this permission notice appear in all copies."""
MPL = "This Source Code Form is subject to the terms of the Mozilla Public License, v. 2.0."
GPL_3 = """GNU GENERAL PUBLIC LICENSE Version 3, 29 June 2007 ... If your program is a subroutine library, you may
consider it more useful to permit linking proprietary applications with the library. If this is what you want
to do, use the GNU Lesser General Public License instead of this License."""


@pytest.mark.parametrize("declared, allowed, licence", [
    (["MIT OR Apache-2.0"], True, "MIT OR Apache-2.0"),
    (["GPL-3.0 or MIT"], True, "GPL-3.0 OR MIT"),
    (["Apache-2.0 AND MIT"], True, "Apache-2.0 AND MIT"),
    (["Apache-2.0 AND GPL-3.0"], False, "Apache-2.0 AND GPL-3.0"),
    (["(MIT AND GPL-2.0) OR BSD-3-Clause"], True, "(MIT AND GPL-2.0) OR BSD-3-Clause"),
    (["(MIT OR GPL-2.0) AND LGPL-3.0"], False, "(MIT OR GPL-2.0) AND LGPL-3.0"),
    (["Apache-2.0 WITH LLVM-exception"], True, "Apache-2.0 WITH LLVM-exception"),
    (["Apache License, Version 2.0"], True, "Apache-2.0"),
    (["GPL-3.0", "MIT License"], True, "GPL-3.0 OR MIT"),  # Hex's list: alternatives
    (["(MIT"], False, "(MIT"),
    ([], False, "NOASSERTION"),
])
def test_spdx_expressions_against_the_allowlist(declared, allowed, licence):
    decision = decide(declared, ALLOW)
    assert (decision.allowed, decision.licence) == (allowed, licence), decision.reason


def test_the_reason_names_what_is_not_allowed():
    assert decide(["Apache-2.0 AND GPL-3.0"], ALLOW).reason == "GPL-3.0 is not on the allowlist"
    assert decide(["GPL-3.0 OR AGPL-3.0"], ALLOW).reason == "AGPL-3.0 and GPL-3.0 are not on the allowlist"
    assert "parenthesis is not closed" in decide(["(MIT"], ALLOW).reason


@pytest.mark.parametrize("text, spdx", [
    ((REAL / "con_cache_LICENSE").read_text(), "MIT"),
    ((REAL / "jason_LICENSE").read_text(), "Apache-2.0"),  # the notice, not the text
    ((REAL / "LICENSE-Apache-2.0.txt").read_text(), "Apache-2.0"),
    (BSD_3, "BSD-3-Clause"), (BSD_2, "BSD-2-Clause"), (ISC, "ISC"), (MPL, "MPL-2.0"), (GPL_3, "GPL-3.0"),
    ("Same as Elixir under Apache License 2.0.", "Apache-2.0"), ("See the LICENSE file.", None),
])
def test_licence_texts_are_recognised(text, spdx):
    assert recognise(text) == spdx


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in {"lib/lib.ex": MODULE, **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_what_a_tree_declares(tmp_path):
    def declared(name, files):
        found = declared_licence(tree(tmp_path / name, files))
        return found.licence, found.source

    assert declared("con_cache", {"LICENSE": (REAL / "con_cache_LICENSE").read_text()}) == ("MIT", "LICENSE")
    assert declared("mint", {"LICENSE.txt": (REAL / "LICENSE-Apache-2.0.txt").read_text()}) == \
        ("Apache-2.0", "LICENSE.txt")
    assert declared("gen_stage", {"mix.exs": (REAL / "gen_stage_mix.exs").read_text(), "README.md": "# GenStage\n"}) \
        == ("Apache-2.0", "mix.exs licenses")
    readme = "# GenStage\n\nStages.\n\n## License\n\nSame as Elixir under Apache License 2.0.\n\n## Other\n\nMIT\n"
    assert declared("readme_only", {"README.md": readme}) == ("Apache-2.0", "README.md licence section")
    assert declared("spdx_line", {"README.md": "# X\n<!-- SPDX-License-Identifier: MIT OR Apache-2.0 -->\n"}) == \
        ("MIT OR Apache-2.0", "README.md licence section")
    assert declared("dual", {"LICENSE-MIT": (REAL / "con_cache_LICENSE").read_text(),
                             "LICENSE-APACHE": (REAL / "jason_LICENSE").read_text()}) == \
        ("Apache-2.0 AND MIT", "LICENSE-APACHE, LICENSE-MIT")
    assert declared("proprietary", {"LICENSE": "Copyright Acme. All rights reserved.\n",
                                    "mix.exs": 'defp package, do: [licenses: ["MIT"]]\n'}) == \
        ("LicenseRef-unrecognised", "LICENSE")
    assert declared("nothing", {"README.md": "# Nothing here\n"}) == (None, "")


def test_local_trees_get_their_own_licence_and_unknown_ones_are_excluded(tmp_path, data_config):
    roots = [tree(tmp_path / "gen_stage", {"mix.exs": (REAL / "gen_stage_mix.exs").read_text()}),
             tree(tmp_path / "copyleft", {"COPYING": GPL_3}),
             tree(tmp_path / "unlicensed", {}),
             tree(tmp_path / "mine", {})]
    data_config.sources.local.licence = ""  # detect
    data_config.sources.local.paths = tuple(str(root) for root in roots[:3])
    manifest = run(data_config)
    units = {u["package"]: u for u in manifest["units"]}
    assert units["gen_stage"]["status"] == "done"
    assert units["gen_stage"]["licence"] == {"allowed": True, "licence": "Apache-2.0", "source": "mix.exs licenses",
                                             "reason": "Apache-2.0 is on the allowlist"}
    assert (units["copyleft"]["status"], units["copyleft"]["reason"]) == \
        ("rejected", "licence: GPL-3.0 is not on the allowlist")
    assert (units["unlicensed"]["status"], units["unlicensed"]["reason"]) == \
        ("rejected", "licence: no licence declared")
    records = [json.loads(line) for line in (tmp_path / "out" / "jsonl" / "train.jsonl").read_text().splitlines()]
    assert {(r["source"]["package"], r["source"]["licence"]) for r in records} == {("gen_stage", "Apache-2.0")}

    data_config.sources.local.licence = "LicenseRef-own-code"  # the explicit override, for code you own
    data_config.sources.local.paths = (str(roots[3]),)
    manifest = run(data_config)
    assert manifest["units"][0]["licence"]["licence"] == "LicenseRef-own-code"
    assert manifest["units"][0]["licence"]["source"] == "config sources.local.licence"
