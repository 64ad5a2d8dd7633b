"""Data mixtures: weighted sources over the shipped sample, token shares, exact resume, per-source tallies logged."""

import json
import os

import numpy as np
import pytest

from devstral_jax.data.mixture import TALLY, parse_mixture
from devstral_jax.data.pipeline import DataSpec, make_dataset, read_records
from devstral_jax.tokenizers import TekkenTokenizer, Tokenizer
from devstral_jax.errors import ConfigError
from devstral_jax.train.metrics_log import read_metrics

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

    first = iter(make_dataset(_spec(), tokenizer))
    for _ in range(37):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # as the checkpoint stores it
    resumed = iter(make_dataset(_spec(), tokenizer))
    resumed.set_state(state)
    for expected in straight[37:]:
        got = next(resumed)
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


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
    from devstral_jax.train.config import sibling_config
    from devstral_jax.train.trainer import train

    def config(**train_overrides):
        c = sibling_config(os.path.join(ROOT, "configs", "x.py"), "tiny_cpu")
        c.model.num_layers = 1
        c.data.update(seq_len=64, batch_size=8, train_paths=(SAMPLE,), validation_paths=(SAMPLE,),
                      mixture=THREE_TO_ONE)
        c.train.update(steps=6, loss_chunk=64, log_every=1, eval_every=6, eval_batches=1, checkpoint_every=3,
                       async_checkpoint=False, **train_overrides)
        return c

    train(config(), str(tmp_path / "straight"))
    train(config(stop_at=3), str(tmp_path / "resumed"))
    train(config(), str(tmp_path / "resumed"))
    logged = {}
    for run in ("straight", "resumed"):
        records = read_metrics(str(tmp_path / run / "metrics.jsonl"))
        logged[run] = {r["step"]: (r["tokens_seen/docs"], r["tokens_seen/chat"]) for r in records if "loss" in r}
    assert logged["straight"] == logged["resumed"]
    totals = [sum(logged["straight"][step]) for step in range(1, 7)]
    assert all(b > a for a, b in zip(totals, totals[1:]))  # running totals
    assert totals[-1] <= 6 * 8 * 64
