"""A rerun into the same output folder with other settings redoes what they change, says so, and never lets the
manifest claim settings that the records were not built with."""

import json
import logging
from pathlib import Path

from conftest import FIXTURES

from data_pipeline.checkpoint import key, unit_settings
from data_pipeline.run import run


def records(out: Path) -> list[dict]:
    return [json.loads(line) for split in ("train", "validation")
            for line in (out / "jsonl" / f"{split}.jsonl").read_text().splitlines()]


def test_a_rerun_with_fim_rate_zero_has_no_fim_records(data_config, caplog):
    data_config.sources.local.paths = (str(FIXTURES / "elixir_tree"),)
    data_config.sources.local.batch_files = 2
    data_config.instruct.fim_rate = 1.0
    out = Path(data_config.output_dir)
    first = run(data_config)
    assert any(r["kind"] == "fim" for r in records(out)) and first["pipeline"]["redone_units"] == []
    units = sorted(p.name for p in (out / "work" / "units").iterdir())

    again = run(data_config)  # nothing changed: every unit is reused
    assert again["pipeline"]["redone_units"] == []
    assert sorted(p.name for p in (out / "work" / "units").iterdir()) == units

    data_config.instruct.fim_rate = 0.0
    with caplog.at_level(logging.WARNING, logger="data_pipeline.run"):
        manifest = run(data_config)
    assert not any(r["kind"] == "fim" for r in records(out))
    assert manifest["config"]["instruct"]["fim_rate"] == 0.0
    assert "fim" not in manifest["splits"]["train"]["records_by_kind"]
    assert {tuple(u["changes"]) for u in manifest["pipeline"]["redone_units"]} == {("instruct.fim_rate: 1.0 -> 0.0",)}
    assert len(manifest["pipeline"]["redone_units"]) == len(units) == 3
    assert "Redid 3 saved units because what shapes them changed: instruct.fim_rate: 1.0 -> 0.0" in caplog.text
    assert len(list((out / "work" / "units").iterdir())) == 3  # the stale results are replaced, not kept beside
    assert "3 units were redone" in (out / "report.md").read_text()


def test_what_shapes_a_unit_is_in_its_key(data_config):
    def unit_key(**changes):
        settings = {"kind": "local", "licences": ("MIT",), "code": "code-a", "elixir": "1.14.0", **changes}
        return key(unit_settings(data_config, **settings))

    base = unit_key()
    assert unit_key() == base
    assert len({base, unit_key(elixir="1.15.7"), unit_key(code="code-b"), unit_key(licences=("Apache-2.0",))}) == 4
    for setting, value in (("instruct.fim_rate", 0.1), ("filters.max_line_length", 10), ("seed", 3)):
        section, _, name = setting.rpartition(".")
        (data_config[section] if section else data_config)[name] = value
        assert unit_key() != base, setting
        base = unit_key()
    data_config.dedup.threshold = 0.5  # assembly settings are redone on every run, never saved in a unit
    data_config.workers = 7
    assert unit_key() == base
