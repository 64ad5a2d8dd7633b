"""Curriculum: pacing functions, rows drawn only from admitted difficulty buckets, exact resume, config errors."""

import json
import os

import numpy as np
import pytest

from devstral_jax.data.curriculum import ADMITTED, PACINGS, TALLY, Curriculum, parse_curriculum
from devstral_jax.data.mixture import TALLY as SOURCE_TALLY
from devstral_jax.data.mixture import parse_mixture
from devstral_jax.data.pipeline import DataSpec, make_dataset, read_records
from devstral_jax.errors import ConfigError, DataError
from devstral_jax.tokenizers import TekkenTokenizer, Tokenizer
from devstral_jax.train import config as train_config
from tests.train_helpers import assert_resumes_exactly, straight_and_resumed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "devstral_jax", "data", "sample", "sample.jsonl")
EDGES = (0.0, 0.2, 0.3, 1.0)  # the sample's scores spread over these three buckets


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return TekkenTokenizer()


def _spec(pacing: str, steps: int = 10, **overrides) -> DataSpec:
    return DataSpec(**{**dict(paths=(SAMPLE,), split="train", seq_len=64, batch_size=8, seed=3,
                              curriculum=Curriculum(pacing, 0.15, steps, EDGES)), **overrides})


@pytest.mark.parametrize("pacing", PACINGS)
@pytest.mark.parametrize("start", [0.05, 0.2, 0.5])
def test_admitted_difficulty_never_decreases_and_reaches_everything(pacing, start):
    curriculum = Curriculum(pacing, start, 40, (0.0, 0.25, 0.5, 0.75, 1.0), jumps=3)
    admitted = [curriculum.admitted_difficulty(step) for step in range(60)]
    assert all(b >= a for a, b in zip(admitted, admitted[1:]))
    assert admitted[0] >= start and admitted[0] < 1.0
    assert admitted[40] == admitted[-1] == 1.0
    buckets = [curriculum.admitted_buckets(d) for d in admitted]
    assert buckets[0] >= 1 and all(b >= a for a, b in zip(buckets, buckets[1:])) and buckets[-1] == 4


def test_root_pacing_admits_harder_data_sooner_than_linear_and_step_and_baby_steps_jump():
    edges = (0.0, 0.25, 0.5, 0.75, 1.0)
    root, linear = Curriculum("root", 0.2, 100, edges), Curriculum("linear", 0.2, 100, edges)
    assert all(root.admitted_difficulty(s) > linear.admitted_difficulty(s) for s in range(1, 100))
    step = Curriculum("step", 0.2, 100, edges, jumps=4)
    assert len({step.admitted_difficulty(s) for s in range(101)}) == 5  # start and 4 jumps
    baby = Curriculum("baby_steps", 0.2, 100, edges)  # 0.2 is in the first bucket: 3 more open, one at a time
    assert [baby.admitted_buckets(baby.admitted_difficulty(s)) for s in (0, 24, 25, 50, 75, 99)] == [1, 1, 2, 3, 4, 4]


@pytest.mark.parametrize("pacing", PACINGS)
def test_rows_come_only_from_admitted_buckets_which_widen_to_all(pacing, tokenizer):
    curriculum = _spec(pacing).curriculum
    batches = [batch for _, batch in zip(range(14), make_dataset(_spec(pacing), tokenizer))]
    seen = np.zeros(3, np.int64)
    for step, batch in enumerate(batches):
        assert batch[ADMITTED] == pytest.approx(curriculum.admitted_difficulty(step))
        new = batch[TALLY] - seen
        admitted = curriculum.admitted_buckets(batch[ADMITTED])
        assert (new >= 0).all() and not new[admitted:].any(), (step, new, admitted)
        assert new.sum() == np.count_nonzero(batch["segment_ids"])  # every row's tokens counted in one bucket
        seen = batch[TALLY]
    assert batches[0][ADMITTED] < 1.0 and (seen > 0).all()  # by step 14 every bucket has been read


@pytest.mark.parametrize("mixed", [False, True])
def test_a_resumed_iterator_admits_exactly_the_rows_of_an_uninterrupted_one(mixed, tokenizer):
    mixture = parse_mixture(({"name": "docs", "weight": 3, "kind": "text"}, {"name": "chat", "weight": 1,
                                                                             "kind": "chat"})) if mixed else ()
    spec = _spec("root", mixture=mixture)
    straight = [batch for _, batch in zip(range(16), make_dataset(spec, tokenizer))]
    assert_resumes_exactly(lambda: make_dataset(spec, tokenizer), straight, 6)
    if mixed:  # the sources keep their weights under the curriculum
        tokens = straight[-1][SOURCE_TALLY]
        assert abs(tokens[0] / tokens.sum() - 0.75) < 0.05, tokens


def test_a_curriculum_over_records_without_a_difficulty_is_an_error(tmp_path, tokenizer):
    path = tmp_path / "old.jsonl"
    lines = [json.loads(line) for line in open(SAMPLE, encoding="utf-8").read().splitlines()[:20]]
    path.write_text("".join(json.dumps({k: v for k, v in d.items() if k != "difficulty"}) + "\n" for d in lines))
    with pytest.raises(DataError, match="has none: score the corpus first"):
        make_dataset(_spec("linear", paths=(str(path),)), tokenizer)


def test_a_mixture_source_filters_on_a_difficulty_band(tokenizer):
    hard = parse_mixture([{"name": "hard", "weight": 1, "difficulty": (0.3, 1.0)}])
    records = {r.id: r for r in read_records((SAMPLE,), "train")}
    batch = next(iter(make_dataset(_spec("linear", curriculum=None, mixture=hard, batch_size=4), tokenizer)))
    assert batch[SOURCE_TALLY].sum() > 0
    assert all(hard[0].admits(r) == (r.difficulty.score >= 0.3) for r in records.values())
    assert 0 < sum(hard[0].admits(r) for r in records.values()) < len(records)
    with pytest.raises(ConfigError, match="0 <= low < high <= 1"):
        parse_mixture([{"name": "x", "weight": 1, "difficulty": (0.5, 0.5)}])


@pytest.mark.parametrize("change, message", [
    (dict(pacing="cubic"), "must be one of"),
    (dict(pacing="root", start=0.0), r"start=0.0: must be in \(0, 1\]"),
    (dict(pacing="root", steps=-1), "whole number >= 0"),
    (dict(pacing="step", jumps=0), "jumps=0"),
    (dict(pacing="linear", buckets=(0.0, 1.0)), "two buckets or more"),
    (dict(pacing="linear", buckets=(0.0, 0.6, 0.4, 1.0)), "increasing edges"),
    (dict(pacing="linear", buckets=(0.1, 0.5, 1.0)), "from 0 to 1"),
])
def test_a_bad_curriculum_config_is_a_config_error(change, message):
    config = train_config.default_config()
    config.data.curriculum.update(change)
    with pytest.raises(ConfigError, match=message):
        train_config.validate(config)


def test_the_default_curriculum_is_off_and_a_good_one_validates():
    config = train_config.default_config()
    assert parse_curriculum(config.data.curriculum, 100) is None
    config.data.curriculum.update(pacing="baby_steps", start=0.3)
    train_config.validate(config)
    assert parse_curriculum(config.data.curriculum, 100).steps == 100  # steps 0: the run's train.steps


def test_the_trainer_logs_and_plots_the_curriculum_and_a_resumed_run_admits_the_same_rows(tmp_path):
    runs = straight_and_resumed(str(tmp_path), lambda c: c.data.curriculum.update(pacing="baby_steps", start=0.15,
                                                                                  buckets=EDGES))
    logged = {run: {step: {k: v for k, v in r.items() if k.startswith(("batch_crc32", ADMITTED, "tokens_seen"))}
                    for step, r in records.items()} for run, records in runs.items()}
    assert logged["straight"] == logged["resumed"]  # the same rows (crc of each batch), difficulty and tallies
    admitted = [logged["straight"][step][ADMITTED] for step in range(1, 7)]
    assert admitted[0] < 1.0 and admitted[-1] == 1.0 and admitted == sorted(admitted)
    assert set(logged["straight"][6]) >= {"tokens_seen/difficulty_0.00-0.20", "tokens_seen/difficulty_0.30-1.00"}
    with open(tmp_path / "straight" / "curriculum.png", "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
