"""Data mixtures: weighted sources over the shipped sample, token shares, exact resume, per-source tallies logged."""

import os

import numpy as np
import pytest

from devstral_jax.data.mixture import TALLY, parse_mixture
from devstral_jax.data.pipeline import DataSpec, make_dataset, read_records
from devstral_jax.tokenizers import TekkenTokenizer, Tokenizer
from devstral_jax.errors import ConfigError
from tests.train_helpers import assert_resumes_exactly, straight_and_resumed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "devstral_jax", "data", "sample", "sample.jsonl")
THREE_TO_ONE = ({"name": "docs", "weight": 3, "kind": "text"}, {"name": "chat", "weight": 1, "kind": "chat"})


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return TekkenTokenizer()


def _spec(**overrides) -> DataSpec:
    return DataSpec(**{**dict(paths=(SAMPLE,), split="train", seq_len=64, batch_size=100, seed=1,
                              mixture=parse_mixture(THREE_TO_ONE)), **overrides})


def test_three_to_one_gives_75_25_token_shares_over_10k_rows_and_resumes_exactly(tokenizer):
    iterator = iter(make_dataset(_spec(), tokenizer))
    straight = [next(iterator) for _ in range(100)]  # 100 batches x 100 rows
    tokens = straight[-1][TALLY]
    assert abs(tokens[0] / tokens.sum() - 0.75) < 0.02, tokens
    # The tally counts exactly the real tokens of the rows it saw.
    assert tokens.sum() == sum(int(np.count_nonzero(b["segment_ids"])) for b in straight)

    assert_resumes_exactly(lambda: make_dataset(_spec(), tokenizer), straight, 37)


def test_each_source_reads_only_the_records_its_filters_admit(tokenizer):
    chat_only = parse_mixture([{"name": "chat", "weight": 1, "kind": "chat"}])
    docs_only = parse_mixture([{"name": "docs", "weight": 1, "kind": ("text",), "task": "doc_text"}])
    chat_batch = next(iter(make_dataset(_spec(mixture=chat_only, batch_size=20), tokenizer)))
    docs_batch = next(iter(make_dataset(_spec(mixture=docs_only, batch_size=20), tokenizer)))
    # Chat rows train only on assistant turns (the prompt is masked); documentation text trains on every token.
    real = lambda b: b["segment_ids"] > 0  # noqa: E731
    assert chat_batch["loss_mask"][real(chat_batch)].mean() < 0.9
    assert docs_batch["loss_mask"][real(docs_batch)].mean() > 0.95
    records = read_records((SAMPLE,), "validation")
    validation = next(iter(make_dataset(_spec(mixture=chat_only, split="validation", batch_size=4, shuffle=False,
                                              num_epochs=1), tokenizer)))
    assert TALLY not in validation and any(r.kind == "chat" for r in records)


@pytest.mark.parametrize("entries, message", [
    ([{"name": "a", "weight": 1, "knd": "chat"}], "unknown fields ['knd']"),
    ([{"name": "a", "weight": 0}], "must be a positive number"),
    ([{"name": "a"}, {"name": "a"}], "names repeat"),
])
def test_bad_mixture_is_a_config_error(entries, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_mixture(entries)


def test_a_source_that_admits_nothing_is_a_config_error(tokenizer):
    with pytest.raises(ConfigError, match="'fim' .* admits none of the"):
        make_dataset(_spec(mixture=parse_mixture([{"name": "fim", "weight": 1, "kind": "fim"}])), tokenizer)


def test_trainer_logs_tokens_per_source_and_a_resumed_run_continues_the_tally(tmp_path):
    runs = straight_and_resumed(str(tmp_path), lambda c: c.data.update(mixture=THREE_TO_ONE))
    logged = {run: {step: (r["tokens_seen/docs"], r["tokens_seen/chat"]) for step, r in records.items()}
              for run, records in runs.items()}
    assert logged["straight"] == logged["resumed"]
    totals = [sum(logged["straight"][step]) for step in range(1, 7)]
    assert all(b > a for a, b in zip(totals, totals[1:]))  # running totals
    assert totals[-1] <= 6 * 8 * 64
