"""Forgetting measured: every stage's perplexity on the shipped general-code probe and on each stage's validation
data, as a table and a PNG."""

import json
import os

import ml_collections

from devstral_jax.data.pipeline import read_records
from devstral_jax.train.config import sibling_config
from devstral_jax.train.forgetting import GENERAL_CODE, format_table
from devstral_jax.train.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "devstral_jax", "data", "sample", "sample.jsonl")


def test_general_code_probe_is_shipped_python_with_its_licence():
    records = read_records((GENERAL_CODE,), "validation")
    assert len(records) >= 5 and all(r.source.licence == "PSF-2.0" and r.source.path.endswith(".py")
                                     for r in records)
    assert "def " in records[0].text and "defmodule" not in "".join(r.text for r in records)
    licence = os.path.join(os.path.dirname(GENERAL_CODE), "LICENSE.txt")
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in open(licence).read()


def test_format_table_has_a_row_per_model_and_a_column_per_probe():
    text = format_table({"base": {"general_code": 130000.0, "one": 99.5}, "one": {"general_code": 131000.0,
                                                                                  "one": 20.25}})
    assert text.splitlines() == ["| after | general_code | one |", "|---|---:|---:|",
                                 "| base | 130000.00 | 99.50 |", "| one | 131000.00 | 20.25 |"]


def test_two_stages_report_perplexity_on_general_code_and_each_stages_validation(tmp_path):
    config = sibling_config(os.path.join(ROOT, "configs", "x.py"), "tiny_cpu")
    config.model.num_layers = 1
    config.data.update(seq_len=64, batch_size=8, train_paths=(SAMPLE,), validation_paths=(SAMPLE,))
    config.train.update(loss_chunk=64, log_every=1, eval_every=100, eval_batches=1, checkpoint_every=100,
                        async_checkpoint=False)
    config.stages = (
        ml_collections.ConfigDict(dict(name="docs", train=dict(steps=8),
                                       data=dict(mixture=(dict(name="docs", weight=1, kind="text"),)))),
        ml_collections.ConfigDict(dict(name="chat", train=dict(steps=4),
                                       data=dict(mixture=(dict(name="chat", weight=1, kind="chat"),)))))
    result = train(config, str(tmp_path))
    table = json.loads((tmp_path / "forgetting.json").read_text())
    assert list(table) == ["base", "docs", "chat"]
    assert all(list(row) == ["general_code", "docs", "chat"] for row in table.values())
    assert table["docs"]["docs"] < table["base"]["docs"]  # training on the docs lowered their perplexity
    assert result.summary.splitlines()[0] == "| after | general_code | docs | chat |"
    assert (tmp_path / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| docs |" in (tmp_path / "forgetting.md").read_text()
