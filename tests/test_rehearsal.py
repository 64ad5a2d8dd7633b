"""Self-synthesized rehearsal: the answer filter with the real Elixir parser and execution pool, the diversity figures
against brute force, and a three-stage run of the tiny model in which the first stage's model really answers its
prompts and the kept answers are written with their provenance and mixed into the next stage; plus
`train.keep_optimizer` carrying (or not) the previous stage's optimizer state."""

import json
import os
import re
import subprocess
import sys

import jax
import ml_collections
import optax
import pytest

from devstral_jax import sharding
from devstral_jax.checkpoint import Checkpointer, base_fingerprint
from devstral_jax.config import from_config_dict
from devstral_jax.data.records import Message, Record, Source
from devstral_jax.elixir.parse import parser_pool, read_snippet
from devstral_jax.eval.pool import ExecutionPool
from devstral_jax.sampler import Completion
from devstral_jax.train import rehearsal, trainer
from devstral_jax.train.config import sibling_config
from devstral_jax.train.metrics_log import read_metrics
from tests.test_train_resume import ENV, ROOT

SOURCE = Source(kind="local", package="demo", version="1", path="lib/demo.ex", licence="MIT", url="")
ADD_TESTS = ('defmodule AddTest do\n  use ExUnit.Case\n\n  test "adds" do\n    assert Add.add(1, 2) == 3\n  end\n'
             'end')


def _record(task: str, user: str) -> Record:
    return Record(id=f"{task}-{len(user)}", kind="chat", task=task, source=SOURCE,
                  messages=(Message("user", user), Message("assistant", "the original answer")))


def _answer(text: str, finish_reason: str = "eos") -> Completion:
    return Completion(text=text, tokens=[], finish_reason=finish_reason)


def test_the_filter_keeps_only_complete_answers_whose_elixir_parses_and_passes_its_tests():
    explain = _record("explain_doc", "What does `Enum.map/2` do? Show examples.")
    write_add = _record("code_from_tests", f"Write the Elixir module `Add` so that these tests pass:\n\n"
                                           f"```elixir\n{ADD_TESTS}\n```")
    implement = _record("doc_to_impl", "Implement `double/1`: doubles a number.")
    answers = [
        (explain, _answer("It maps:\n\n```elixir\nEnum.map([1, 2], fn x -> x * 2 end)\n```\n")),
        (explain, _answer("It maps:\n\n```elixir\nEnum.map([1, 2], fn x -> x * 2 end\n```\n")),  # no `)`
        (explain, _answer("It maps:\n\n```elixir\nEnum.map([1], & &1)\n```\n\n```\ndefmodule do end end\n```")),
        (explain, _answer("It maps:\n\n```python\nlist(map(f, xs))\n```\n")),  # no Elixir in it
        (explain, _answer("An IEx session:\n\n    iex> Enum.map([1, 2], &(&1 * 2))\n    [2, 4]\n")),
        (write_add, _answer("```elixir\ndefmodule Add do\n  def add(a, b), do: a + b\nend\n```")),
        (write_add, _answer("```elixir\ndefmodule Add do\n  def add(a, b), do: a - b\nend\n```")),  # tests fail
        (implement, _answer("def double(x), do: x * 2")),  # a code task's answer is code whole
        (implement, _answer("def double(x), do: x *")),
        (explain, _answer("It maps:\n\n```elixir\nEnum.map([1, 2],", "length")),  # cut at max_new_tokens
        (explain, _answer("   \n")),
        (explain, _answer(" ".join(["Enum.map"] * 40))),
        (explain, _answer("It maps:\n\n```elixir\nEnum.map([1, 2], fn x -> x * 2 end)\n```\n")),  # seen already
    ]
    with parser_pool(1) as parser:
        reasons = rehearsal.judge(answers, parser, lambda: ExecutionPool(2, timeout=10.0))
    assert reasons == [None, "parse_error", "parse_error", "no_code", None, None, "test_failed", None, "parse_error",
                       "truncated", "empty", "repetitive", "duplicate"]


def _distinct(texts, n):
    grams = []
    for text in texts:
        words = re.findall(r"[A-Za-z0-9_]+", text)
        grams += [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams)


def _shingles(text):
    words = re.findall(r"[A-Za-z0-9_]+", text)
    return {" ".join(words[i:i + 5]) for i in range(len(words) - 4)}


def test_diversity_equals_a_brute_force_count():
    base = "def total(items), do: Enum.reduce(items, 0, fn item, acc -> item.price * item.count + acc end)"
    texts = [base,
             base.replace("total", "sum_up"),  # one token of 20 changed: Jaccard of 5-grams 0.6, far from 0.7
             base + " # a total of the items in the cart",  # Jaccard 0.75 with the first: a near duplicate
             "GenServer.call(pid, :pop) returns the top of the stack and removes it from the state",
             base,  # an exact copy
             "x = 1"]  # too short for a 5-gram: never a near duplicate
    got = rehearsal.diversity(texts)
    for n in (1, 2, 3):
        assert got[f"distinct_{n}"] == pytest.approx(_distinct(texts, n))
    kept, duplicates = [], 0
    for text in texts:
        shingles = _shingles(text)
        if shingles and any(len(shingles & other) / len(shingles | other) >= 0.7 for other in kept):
            duplicates += 1
        elif shingles:
            kept.append(shingles)
    assert duplicates == 2
    assert got["near_duplicate_rate"] == pytest.approx(duplicates / len(texts))
    assert rehearsal.diversity([]) == dict(distinct_1=None, distinct_2=None, distinct_3=None,
                                           near_duplicate_rate=None)


ANSWER = "```elixir\n:ok\n```"
MEMORIZE_STEPS = 30  # enough for the tiny model to answer its one prompt with ANSWER, greedily, and stop


def _corpus(path):
    """One chat prompt with a parseable answer, and small modules as text, each in both splits."""
    records = []
    for i in range(80):
        split = "validation" if i >= 48 else "train"
        records.append(dict(id=f"chat{i}", kind="chat", task="explain_doc", split=split, source=vars(SOURCE),
                            messages=[dict(role="user", content="Write the atom ok in Elixir."),
                                      dict(role="assistant", content=ANSWER)]))
        records.append(dict(id=f"text{i}", kind="text", task="file", split=split, source=vars(SOURCE),
                            text=f"defmodule Demo{i} do\n  def run, do: {i}\nend\n"))
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _stages_config(data: str) -> ml_collections.ConfigDict:
    """configs/tiny_cpu.py shrunk: `chat` learns the prompt's answer; `code` (text) rehearses it and keeps the
    optimizer; `more` (text) rehearses with too few new tokens to finish an answer, and resets the optimizer."""
    config = sibling_config(os.path.join(ROOT, "configs", "tiny_cpu.py"), "tiny_cpu")
    config.model.num_layers = 1
    config.mesh.data = 1
    config.data.update(seq_len=64, batch_size=4, train_paths=(data,), validation_paths=(data,))
    config.train.update(loss_chunk=64, log_every=1, eval_every=100, eval_batches=1, checkpoint_every=100)
    config.optim.update(warmup_steps=0, schedule="constant", learning_rate=1e-2)
    config.rehearsal.update(prompts=4, max_new_tokens=16, temperature=0.0, batch_size=4)
    text = (dict(name="code", kind="text"),)
    config.stages = tuple(ml_collections.ConfigDict(stage) for stage in (
        dict(name="chat", train=dict(steps=MEMORIZE_STEPS), data=dict(mixture=(dict(name="chat", kind="chat"),))),
        dict(name="code", train=dict(steps=2, keep_optimizer=True), data=dict(mixture=text),
             rehearsal=dict(ratio=0.5)),
        dict(name="more", train=dict(steps=2), data=dict(mixture=text), rehearsal=dict(ratio=0.5, max_new_tokens=2)),
    ))
    return config


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """(config, workdir, log of the first run, log of a rerun, the rehearsal files' (inode, mtime) after each run)
    of the three-stage run, run as a user runs it (launch/train.py, one device)."""
    root = tmp_path_factory.mktemp("rehearsal")
    _corpus(root / "data.jsonl")
    (root / "stages.py").write_text(f"import sys\nsys.path.insert(0, {ROOT!r})\nfrom tests.test_rehearsal import "
                                    f"_stages_config\n\n\ndef get_config():\n    return _stages_config("
                                    f"{str(root / 'data.jsonl')!r})\n")
    workdir = str(root / "run")
    files = [os.path.join(workdir, "code", rehearsal.RECORDS_FILE),
             *(os.path.join(workdir, name, rehearsal.REPORT_FILE) for name in ("code", "more"))]
    logs, stats = [], []
    for _ in range(2):
        result = subprocess.run([sys.executable, "launch/train.py", f"--config={root / 'stages.py'}",
                                 f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                                env=ENV)
        assert result.returncode == 0, result.stderr[-4000:]
        logs.append(result.stderr)
        stats.append([(os.stat(f).st_ino, os.stat(f).st_mtime_ns) for f in files])
    return _stages_config(str(root / "data.jsonl")), workdir, logs[0], logs[1], stats


def test_rehearsal_answers_are_generated_filtered_written_with_provenance_and_mixed(staged):
    config, workdir, first_log, _, _ = staged
    stage = os.path.join(workdir, "code")
    with open(os.path.join(stage, rehearsal.REPORT_FILE)) as f:
        report = json.load(f)
    assert report["generated"] == 4 and report["step"] == MEMORIZE_STEPS
    assert report["kept"] >= 1 and report["kept"] + sum(report["dropped"].values()) == report["generated"]
    assert set(report["dropped"]) <= {"duplicate"}  # greedy answers to one prompt: the same answer four times
    assert report["settings"]["from_stage"] == "chat" and report["settings"]["ratio"] == 0.5
    assert rehearsal.summary_line(report) in first_log

    with open(os.path.join(stage, rehearsal.RECORDS_FILE)) as f:
        kept = [Record.from_json(line) for line in f]
    assert len(kept) == report["kept"]
    with parser_pool(1) as parser:
        for record in kept:
            assert record.kind == "chat" and record.task == "rehearsal" and record.source == SOURCE
            assert record.messages[0] == Message("user", "Write the atom ok in Elixir.")
            answer = record.messages[-1].content
            assert rehearsal.answer_code("explain_doc", answer)
            assert all(read_snippet(parser, code).parses for code in rehearsal.answer_code("explain_doc", answer))
            generated = record.generated
            assert re.fullmatch(r"chat\d+", generated.record) and int(generated.record[4:]) < 48  # a train prompt
            assert (generated.task, generated.stage, generated.step) == ("explain_doc", "chat", MEMORIZE_STEPS)
            assert generated.sampling == dict(max_new_tokens=16, temperature=0.0, top_k=0, top_p=0.95, seed=0)

    metrics = [r for r in read_metrics(os.path.join(stage, "metrics.jsonl")) if "loss" in r]
    assert metrics and all(r["tokens_seen/rehearsal"] > 0 and r["tokens_seen/code"] > 0 for r in metrics)


def test_a_stage_whose_answers_are_all_dropped_trains_without_rehearsal_and_says_so(staged):
    _, workdir, first_log, _, _ = staged
    stage = os.path.join(workdir, "more")
    with open(os.path.join(stage, rehearsal.REPORT_FILE)) as f:
        report = json.load(f)
    assert report["kept"] == 0 and report["dropped"] == {"truncated": 4}  # 2 new tokens cannot finish ANSWER
    assert not os.path.exists(os.path.join(stage, rehearsal.RECORDS_FILE))
    assert "Stage more trains without rehearsal: none of the 4 answers was kept." in first_log
    metrics = [r for r in read_metrics(os.path.join(stage, "metrics.jsonl")) if "loss" in r]
    assert len(metrics) == 2 and not any("tokens_seen/rehearsal" in r for r in metrics)


def test_a_rerun_reuses_the_rehearsal_it_made(staged):
    _, workdir, _, rerun_log, stats = staged
    for name in ("code", "more"):
        assert f"Stage {name} reuses its rehearsal in {os.path.join(workdir, name)}." in rerun_log
    assert stats[1] == stats[0]  # the same files, not rewritten (an atomic rewrite would be a new inode)


def _adam_counts(config, stage_workdir):
    """The step counts in a stage's final optimizer state (Adam's, and its learning-rate schedule's)."""
    model_config = from_config_dict(config.model)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    graphdef, lora, frozen, _ = trainer.build_model(config, model_config, mesh)
    _, fresh = trainer.train_step_and_state(config, model_config, graphdef, lora, frozen, mesh)
    with Checkpointer(os.path.join(stage_workdir, "checkpoints"), read_only=True) as checkpointer:
        part, _ = checkpointer.restore_part({"opt_state": trainer.abstract(fresh.opt_state)},
                                            expected_fingerprint=base_fingerprint(frozen))
    return {int(count) for _, count in optax.tree_utils.tree_get_all_with_path(part["opt_state"], "count")}


def test_keep_optimizer_carries_the_previous_stage_optimizer_state_and_its_absence_resets_it(staged):
    config, workdir, _, _, _ = staged
    stage_config = ml_collections.ConfigDict(config.to_dict())
    stage_config.stages = ()
    # `code` kept `chat`'s optimizer (its Adam moments and step count went on from 30); `more` started afresh.
    assert _adam_counts(stage_config, os.path.join(workdir, "code")) == {MEMORIZE_STEPS + 2}
    assert _adam_counts(stage_config, os.path.join(workdir, "more")) == {2}
