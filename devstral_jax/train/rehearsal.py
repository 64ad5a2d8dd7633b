"""Self-synthesized rehearsal (SSR; Huang et al., 2024): before a stage, the previous stage's model answers a seeded
sample of the earlier stages' prompts, and the answers that hold up are mixed into the stage, so it keeps
practising what it could already do without replaying (or even having) the original answers.

    stage(..., rehearsal=dict(ratio=0.1, prompts=64, max_new_tokens=256, temperature=0.7))

Prompts: the user turns (everything before the final assistant turn) of the chat records that an earlier stage's
mixture admits (its `data.train_paths`; an empty mixture admits every record), that fit in a training row with
the answer. Text-only stages give no prompts: continuing raw code is what their own text records already teach,
exactly, so a stage that should keep them mixes them in as a source instead.

An answer is kept only if it is complete (ended by EOS, not cut at `max_new_tokens`), not degenerate (empty or
looping), has Elixir code that all parses with the real Elixir parser (its fenced and indented code blocks; the
whole answer where the task's answer is code and it has no fence), and, for tasks whose prompt or answer is a
module and the other its ExUnit tests, passes them in the sandboxed execution pool. Answers that exactly repeat
a kept one are dropped too. Kept answers become `rehearsal` chat records (records.py: `generated` says what they
answered, and with which model) in `<stage workdir>/rehearsal.jsonl`, mixed in as the source `rehearsal` at
`ratio` of the stage's rows. `rehearsal.json` reports the counts, why each dropped answer was dropped, and the
kept answers' diversity (distinct-1/2/3 and the MinHash near-duplicate rate). A rerun reuses both files.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import random
from typing import Any, Callable, Iterable, Sequence

import ml_collections
from flax import nnx
from markdown_it import MarkdownIt

from devstral_jax.atomic import atomic_write
from devstral_jax.checkpoint import Checkpointer
from devstral_jax.data.mixture import parse_mixture
from devstral_jax.data.near_duplicates import NearDuplicates, code_tokens
from devstral_jax.data.pipeline import record_source
from devstral_jax.data.records import REHEARSAL_TASK, Generated, Message, Record
from devstral_jax.elixir.parse import parser_pool, read_snippet
from devstral_jax.elixir.worker import ElixirPool
from devstral_jax.errors import ConfigError, TrainingError
from devstral_jax.eval.pool import ExecutionPool
from devstral_jax.eval.verdict import Program
from devstral_jax.sampler import Completion, Sampler, SamplingConfig

RECORDS_FILE = "rehearsal.jsonl"
REPORT_FILE = "rehearsal.json"
SOURCE = "rehearsal"  # the mixture source of the kept answers
# Tasks whose answer is Elixir code (data_pipeline/instruct.py, kinds/): an answer without a fence is code whole.
CODE_TASKS = frozenset({"doc_to_impl", "otp_behaviour", "otp_design", "doctest_tests", "code_from_tests",
                        "tests_from_code", "repair_compile", "repair_tests"})
# Tasks with tests: which side holds the module (the other holds its ExUnit tests, which must pass against it).
TESTED_TASKS = {"code_from_tests": "answer", "tests_from_code": "prompt"}
ELIXIR_LABELS = frozenset({"", "elixir", "ex", "exs", "iex"})
REPETITIVE = (30, 0.3)  # an answer of at least 30 words whose distinct 3-gram share is below 0.3 is looping
_MARKDOWN = MarkdownIt("commonmark")


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        ratio=0.0,  # share of the stage's rows that are rehearsal; 0: off
        prompts=64,  # earlier prompts the previous stage's model answers
        max_new_tokens=256, temperature=0.7, top_k=0, top_p=0.95, seed=0,
        batch_size=8,  # prompts generated together
        test_timeout_s=10.0,  # per program, for answers with tests
    ))


def check_config(config: ml_collections.ConfigDict) -> None:
    if not 0.0 <= config.rehearsal.ratio < 1.0:
        raise ConfigError(f"config.rehearsal.ratio={config.rehearsal.ratio!r}: must be in [0, 1) (0: off).")


@dataclasses.dataclass(frozen=True)
class Prompt:
    record: Record  # the earlier record whose user turns are asked again
    tokens: list[int]  # its prompt in the model's chat format, ready to answer

    @property
    def messages(self) -> tuple[Message, ...]:
        return self.record.messages[:-1]


# --- which prompts -------------------------------------------------------------------------------------------

def earlier_prompts(earlier: Sequence[ml_collections.ConfigDict], count: int, seed: int, tokenizer: Any,
                    max_tokens: int) -> tuple[list[Prompt], int]:
    """A seeded sample of `count` prompts of the chat records the `earlier` stages' mixtures admit, each at most
    `max_tokens` long; and how many longer ones were passed over."""
    by_paths: dict[tuple[str, ...], list] = collections.defaultdict(list)
    for config in earlier:
        by_paths[tuple(config.data.train_paths)].append(parse_mixture(config.data.mixture))
    candidates, seen = [], set()
    for paths, mixtures in by_paths.items():
        records = record_source(paths, "train")
        for index in range(len(records)):
            record = records[index]
            if (record is None or record.kind != "chat" or record.task == REHEARSAL_TASK or record.id in seen
                    or not any(not sources or any(s.admits(record) for s in sources) for sources in mixtures)):
                continue
            seen.add(record.id)
            candidates.append((records, index))
    random.Random(seed).shuffle(candidates)
    prompts, too_long = [], 0
    for records, index in candidates:
        if len(prompts) == count:
            break
        record = records[index]
        tokens = tokenizer.encode_prompt(record.messages[:-1])
        if len(tokens) > max_tokens:
            too_long += 1
            continue
        prompts.append(Prompt(record, tokens))
    return prompts, too_long


# --- which answers -------------------------------------------------------------------------------------------

def elixir_blocks(text: str) -> tuple[list[str], bool]:
    """(the Elixir code blocks of a Markdown answer: fences labelled as Elixir or not at all, and indented blocks;
    whether it has any fence at all)."""
    blocks, fenced = [], False
    for token in _MARKDOWN.parse(text):
        if token.type == "fence":
            fenced = True
            if token.info.strip().split(" ")[0].lower() in ELIXIR_LABELS:
                blocks.append(token.content)
        elif token.type == "code_block":
            blocks.append(token.content)
    return [b for b in blocks if b.strip()], fenced


def answer_code(task: str, text: str) -> list[str]:
    """The Elixir code an answer must parse: its code blocks, or the whole answer where the task's answer is code
    and it has no fence."""
    blocks, fenced = elixir_blocks(text)
    return [text] if task in CODE_TASKS and not fenced else blocks


def is_repetitive(text: str) -> bool:
    words = text.split()
    least, share = REPETITIVE
    return len(words) >= least and len(set(zip(words, words[1:], words[2:]))) / (len(words) - 2) < share


def first_look(completion: Completion) -> str | None:
    """Why an answer is dropped before its code is read, or None."""
    if not completion.text.strip():
        return "empty"
    if completion.finish_reason == "length":
        return "truncated"
    if is_repetitive(completion.text):
        return "repetitive"
    return None


def test_program(task: str, prompt: str, code: list[str]) -> Program | None:
    """The program that runs a tested task's module against its tests (one from the prompt, one from the answer);
    None for a task without tests, or a prompt without its code."""
    if task not in TESTED_TASKS or not (given := elixir_blocks(prompt)[0]):
        return None
    answer = "\n\n".join(code)
    module, tests = (answer, given[-1]) if TESTED_TASKS[task] == "answer" else (given[-1], answer)
    tests = f"ExUnit.start()\n{tests.rstrip()}\n"
    return Program(source=f"{module.rstrip()}\n\n{tests}", tests=tests)


def judge(answers: Sequence[tuple[Record, Completion]], parser: ElixirPool,
          executor_factory: Callable[[], ExecutionPool]) -> list[str | None]:
    """For each (earlier record, its new answer): why it is dropped, or None to keep it. `parser`: an Elixir
    parser pool (elixir/parse.py); `executor_factory()`: an ExecutionPool, made only when an answer has tests."""
    reasons: list[str | None] = []
    programs: dict[int, Program] = {}
    for index, (record, completion) in enumerate(answers):
        reason = first_look(completion)
        code = [] if reason else answer_code(record.task, completion.text)
        if reason is None and not code:
            reason = "no_code"
        if reason is None and not all(read_snippet(parser, block).parses for block in code):
            reason = "parse_error"
        if reason is None and (program := test_program(record.task, record.messages[-2].content, code)):
            programs[index] = program
        reasons.append(reason)
    if programs:
        with executor_factory() as executor:
            verdicts = executor.run(list(programs.values()))
        for index, verdict in zip(programs, verdicts):
            reasons[index] = None if verdict.passed else "test_failed"
    kept_texts = set()
    for index, (_, completion) in enumerate(answers):
        if reasons[index] is None:
            key = " ".join(completion.text.split())
            reasons[index] = "duplicate" if key in kept_texts else None
            kept_texts.add(key)
    return reasons


# --- how diverse ---------------------------------------------------------------------------------------------

def diversity(texts: Sequence[str]) -> dict[str, float | None]:
    """distinct-n (Li et al., 2016: distinct n-grams / all n-grams, over every text's code tokens) for n = 1, 2, 3,
    and the share of texts that nearly duplicate an earlier one (MinHash, the data pipeline's dedup settings);
    None where there is nothing to count."""
    result: dict[str, float | None] = {}
    tokenized = [code_tokens(text) for text in texts]
    for n in (1, 2, 3):
        grams = [tuple(tokens[i:i + n]) for tokens in tokenized for i in range(len(tokens) - n + 1)]
        result[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else None
    near = NearDuplicates()
    duplicates = sum(near.duplicate_of(str(i), text) is not None for i, text in enumerate(texts))
    result["near_duplicate_rate"] = duplicates / len(texts) if texts else None
    return result


# --- the stage's rehearsal -----------------------------------------------------------------------------------

def rehearsal_record(prompt: Prompt, answer: str, stage: str, step: int, sampling: dict[str, Any]) -> Record:
    """A kept answer as a training record: the earlier prompt, the new answer, and where it came from (the
    original record's source keeps its credit and licence: the prompt is its material). It takes the original's
    difficulty too (the same task; this package never imports the data pipeline's scorer), so a curriculum can
    pace a stage that rehearses."""
    generated = Generated(record=prompt.record.id, task=prompt.record.task, stage=stage, step=step,
                          sampling=sampling)
    messages = (*prompt.messages, Message("assistant", answer))
    key = json.dumps([dataclasses.asdict(generated), answer], sort_keys=True, ensure_ascii=False)
    return Record(id=hashlib.sha256(key.encode()).hexdigest()[:24], kind="chat", task=REHEARSAL_TASK,
                  source=prompt.record.source, messages=messages, generated=generated,
                  difficulty=prompt.record.difficulty)


def prepare(name: str, stage_config: ml_collections.ConfigDict, earlier: Sequence[ml_collections.ConfigDict],
            stage_workdir: str, previous_name: str, previous_workdir: str, models: Any) -> dict[str, Any]:
    """Makes (or, on a rerun, reads) the stage's rehearsal and adds it to the stage's data: the file to
    `data.train_paths`, the source `rehearsal` to `data.mixture`. `models`: stages.StageModels, which loads the
    previous stage's model. Returns the report."""
    settings = stage_config.rehearsal
    if not previous_workdir:
        raise ConfigError(f"Stage {name!r} asks for rehearsal (rehearsal.ratio={settings.ratio}), but no stage comes "
                          "before it to answer earlier prompts; set the ratio on a later stage.")
    stage_workdir = os.path.abspath(stage_workdir)
    os.makedirs(stage_workdir, exist_ok=True)
    report_path = os.path.join(stage_workdir, REPORT_FILE)
    wanted = dict(settings.to_dict(), from_stage=previous_name)
    if os.path.isfile(report_path):
        with open(report_path) as f:
            report = json.load(f)
        if report["settings"] != wanted:
            raise TrainingError(f"{report_path} was made with other rehearsal settings ({report['settings']}, now "
                                f"{wanted}); delete it and {RECORDS_FILE} beside it to make the rehearsal again.")
        logging.info("Stage %s reuses its rehearsal in %s.", name, stage_workdir)
    else:
        report = _make(name, stage_config, earlier, stage_workdir, previous_name, previous_workdir, models, wanted)
    logging.info("%s", summary_line(report))
    if report["kept"]:
        stage_config.data.train_paths = (*stage_config.data.train_paths, os.path.join(stage_workdir, RECORDS_FILE))
        stage_config.data.mixture = with_rehearsal(stage_config.data.mixture, settings.ratio)
    else:
        logging.warning("Stage %s trains without rehearsal: none of the %d answers was kept.", name,
                        report["generated"])
    return report


def with_rehearsal(entries: Iterable[dict], ratio: float) -> tuple[dict, ...]:
    """The mixture with the rehearsal source added at `ratio` of the rows (a stage without a mixture becomes one
    source, `stage`, of all its records)."""
    entries = [dict(entry) for entry in entries] or [dict(name="stage", weight=1.0)]
    total = sum(entry.get("weight", 1.0) for entry in entries)
    return (*entries, dict(name=SOURCE, weight=total * ratio / (1.0 - ratio), task=REHEARSAL_TASK))


def summary_line(report: dict[str, Any]) -> str:
    dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(report["dropped"].items())) or "none"
    d = report["diversity"]
    figures = ("distinct-1/2/3 " + "/".join("-" if d[f"distinct_{n}"] is None else f"{d[f'distinct_{n}']:.2f}"
                                            for n in (1, 2, 3))
               + ("" if d["near_duplicate_rate"] is None else f", near-duplicates {d['near_duplicate_rate']:.0%}"))
    return (f"Rehearsal for stage {report['stage']}: {report['generated']} answers by the model after "
            f"{report['settings']['from_stage']} (step {report['step']}), kept {report['kept']}; dropped: {dropped}; "
            f"{figures}.")


def _make(name: str, stage_config: ml_collections.ConfigDict, earlier: Sequence[ml_collections.ConfigDict],
          stage_workdir: str, previous_name: str, previous_workdir: str, models: Any,
          wanted: dict[str, Any]) -> dict[str, Any]:
    settings = stage_config.rehearsal
    prompts, too_long = earlier_prompts(earlier, settings.prompts, settings.seed, models.tokenizer,
                                        stage_config.data.seq_len - settings.max_new_tokens)
    with Checkpointer(os.path.join(previous_workdir, "checkpoints"), read_only=True) as checkpointer:
        step = checkpointer.latest_step()
    sampling = dict(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_k=settings.top_k,
                    top_p=settings.top_p, seed=settings.seed)
    completions = _answers(prompts, previous_workdir, models, sampling, settings.batch_size)
    answers = [(prompt.record, completion) for prompt, completion in zip(prompts, completions)]
    with parser_pool(1) as parser:
        reasons = judge(answers, parser, lambda: ExecutionPool(2, timeout=settings.test_timeout_s))
    kept = [rehearsal_record(prompt, completion.text.strip(), previous_name, step, sampling)
            for prompt, completion, reason in zip(prompts, completions, reasons) if reason is None]
    if kept:
        atomic_write(os.path.join(stage_workdir, RECORDS_FILE),
                     "".join(record.to_json() + "\n" for record in kept).encode())
    report = dict(stage=name, step=step, settings=wanted, prompts_too_long=too_long, generated=len(answers),
                  kept=len(kept), dropped=dict(collections.Counter(r for r in reasons if r is not None)),
                  diversity=diversity([record.messages[-1].content for record in kept]))
    atomic_write(os.path.join(stage_workdir, REPORT_FILE), json.dumps(report, indent=1).encode())
    return report


def _answers(prompts: Sequence[Prompt], workdir: str, models: Any, sampling: dict[str, Any],
             batch_size: int) -> list[Completion]:
    """The previous stage's model's answers to `prompts`, `batch_size` at a time (each batch seeded apart)."""
    if not prompts:
        return []
    graphdef, lora, frozen = models.load(workdir)
    sampler = Sampler(nnx.merge(graphdef, lora, frozen), models.tokenizer)
    completions = []
    for start in range(0, len(prompts), batch_size):
        config = SamplingConfig(**dict(sampling, seed=sampling["seed"] + start))
        completions += sampler.generate_tokens([p.tokens for p in prompts[start:start + batch_size]], config,
                                               eos_id=models.tokenizer.eos_id, decode=models.tokenizer.decode)
    return completions
