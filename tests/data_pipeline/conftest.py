"""Shared fixtures: one parser pool for the session, and pipeline configs that write under tmp_path."""

from pathlib import Path

import pytest

from data_pipeline.config import base_config
from devstral_jax.elixir.parse import parser_pool

FIXTURES = Path(__file__).parent / "fixtures"
BENCHMARK = FIXTURES / "humaneval_ex_3.jsonl"  # 3 MultiPL-E HumanEval-Elixir problems (MIT)


@pytest.fixture(scope="session")
def pool():
    with parser_pool(2) as workers:
        yield workers


@pytest.fixture
def data_config(tmp_path):
    """Every source off, output under tmp_path, quick retries, the fixture benchmark for decontamination."""
    config = base_config()
    config.output_dir = str(tmp_path / "out")
    config.progress = False
    config.http.backoff_s = 0.01
    config.http.backoff_max_s = 0.05
    config.decontam.benchmarks = (str(BENCHMARK),)
    config.sources.local.licence = "LicenseRef-own-code"  # the hand-made trees have no licence file
    return config
