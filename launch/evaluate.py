"""Evaluates a model by running what it writes: sample completions, execute them against ExUnit tests, report.

    python launch/evaluate.py --config=configs/eval_tiny_cpu.py --model=<HF dir | random:<preset>> \
        --benchmark=humaneval-elixir.jsonl [--benchmark=...] [--doctest_records='shards/*.jsonl'] \
        [--perplexity_records='shards/*.jsonl'] --output_dir=eval_out

    python launch/evaluate.py --config=configs/eval_tiny_cpu.py --completions=samples.jsonl \
        [--benchmark=humaneval-elixir.jsonl] --output_dir=eval_out   # score given completions, no model

Writes to --output_dir: results.jsonl (every sample: completion, verdict, time, output), summary.json (all
metrics per benchmark), report.md (a table) and pass_at_k.png; samples/<benchmark>.jsonl keeps each finished
generation batch, so rerunning the same command after an interruption samples only what is missing. Every
input is read and checked, and the model loaded, before --output_dir is touched; the results are written
in it under a temporary folder (.partial/) and swapped in only when all of them are complete, so a failed
run leaves the previous results as they were.
Benchmarks are MultiPL-E JSONL files (see devstral_jax/eval/benchmarks.py); --doctest_records builds the
doctest benchmark from the data pipeline's held-out (validation) records and saves it as doctests.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
from absl import flags
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from devstral_jax.cli import run
from devstral_jax.config import EXECUTION_FIELDS, PRESETS, ModelConfig, from_config_dict, preset
from devstral_jax.errors import FlagError
from devstral_jax.eval import doctests, metrics, report
from devstral_jax.eval.benchmarks import Problem, load_completions, load_problems
from devstral_jax.eval.perplexity import perplexity
from devstral_jax.eval.pool import ExecutionPool
from devstral_jax.eval.sample_store import SampleStore, model_marker, problems_digest
from devstral_jax.hf.load import load as load_hf
from devstral_jax.model import Transformer
from devstral_jax.sampler import Sampler, SamplingConfig
from devstral_jax.tokenizer import load_tekken
from devstral_jax.train.trainer import restore_trained_model

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file, e.g. configs/eval_tiny_cpu.py.")
_MODEL = flags.DEFINE_string("model", None, "An HF model directory, a training workdir, or random:<preset> "
                             "(random weights, for tests).")
_BENCHMARKS = flags.DEFINE_multi_string("benchmark", [], "A MultiPL-E-format JSONL benchmark (repeatable).")
_COMPLETIONS = flags.DEFINE_string("completions", None, "Score the completions in this JSONL file instead of sampling.")
_DOCTEST_RECORDS = flags.DEFINE_multi_string("doctest_records", [], "Glob of record JSONL shards: build the "
                                             "doctest benchmark from their held-out (validation) .ex files.")
_PERPLEXITY_RECORDS = flags.DEFINE_multi_string("perplexity_records", [], "Glob of record JSONL shards: "
                                                "perplexity on their held-out (validation) text.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where results.jsonl, summary.json, report.md and the chart go.")
flags.mark_flags_as_required(["config", "output_dir"])


@dataclasses.dataclass
class Evaluation:
    """What one run evaluates: every input read and checked, and the model loaded, before any program runs."""
    output_dir: Path
    staging: Path  # where this run's results are written until they are complete (then swapped in)
    benchmarks: dict[str, list[Problem]]
    given_completions: dict[str, list[str]] | None = None  # --completions: scored instead of sampled
    doctest_sources: list[tuple[str, str]] | None = None  # held-out .ex files: the doctest benchmark's source
    perplexity_texts: list[str] | None = None
    model: Transformer | None = None
    tokenizer: Any = None


def setup(argv: list[str], config) -> Evaluation:
    """Checks the flags, reads the benchmarks, completions and records, loads the model, then prepares
    --output_dir: a mistake in any of them stops the run here, before anything is sampled, executed or written."""
    _check_flags(argv, config.eval)
    model_config = from_config_dict(config.model)
    output_dir = Path(_OUTPUT_DIR.value)
    evaluation = Evaluation(output_dir=output_dir, staging=output_dir / ".partial",
                            benchmarks={Path(path).stem: _first(load_problems(path), config.eval.max_problems)
                                        for path in _BENCHMARKS.value})
    if _COMPLETIONS.value:
        problems, evaluation.given_completions = load_completions(_COMPLETIONS.value,
                                                                  next(iter(evaluation.benchmarks.values()), None))
        evaluation.benchmarks = {Path(_COMPLETIONS.value).stem: problems}
    if _DOCTEST_RECORDS.value:
        evaluation.doctest_sources = _held_out(_DOCTEST_RECORDS.value, "--doctest_records")
    if _PERPLEXITY_RECORDS.value:
        evaluation.perplexity_texts = [text for _, text in _held_out(_PERPLEXITY_RECORDS.value,
                                                                    "--perplexity_records")]
    if evaluation.output_dir.exists() and not evaluation.output_dir.is_dir():
        raise FlagError(f"--output_dir={evaluation.output_dir} is a file; pass a directory.")
    if _MODEL.value:
        evaluation.model, evaluation.tokenizer = load_model(_MODEL.value, model_config, config.seed)
        print(f"model: {_MODEL.value} ({evaluation.model.config.num_params:,} parameters) on "
              f"{jax.devices()[0].platform}")
    evaluation.output_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(evaluation.staging, ignore_errors=True)  # an interrupted run's
    evaluation.staging.mkdir()
    return evaluation


def _held_out(patterns: list[str], flag: str) -> list[tuple[str, str]]:
    sources = doctests.held_out_sources(patterns)
    if not sources:
        raise FlagError(f"{flag}={','.join(patterns)}: no held-out (validation-split) text records of .ex files "
                        "in these shards; pass the data pipeline's JSONL shards.")
    return sources


def _check_flags(argv: list[str], settings) -> None:
    if len(argv) > 1:
        raise FlagError(f"Unexpected arguments: {argv[1:]}")
    if not (_MODEL.value or _COMPLETIONS.value):
        raise FlagError("Pass --model (to sample completions) or --completions (to score given ones).")
    if _MODEL.value and _COMPLETIONS.value:
        raise FlagError("Pass either --model or --completions, not both.")
    if _MODEL.value and not (_BENCHMARKS.value or _DOCTEST_RECORDS.value or _PERPLEXITY_RECORDS.value):
        raise FlagError("Nothing to evaluate: pass --benchmark, --doctest_records or --perplexity_records.")
    if _COMPLETIONS.value and len(_BENCHMARKS.value) > 1:
        raise FlagError("With --completions pass at most one --benchmark (the one they answer).")
    if _COMPLETIONS.value and (_DOCTEST_RECORDS.value or _PERPLEXITY_RECORDS.value):
        raise FlagError("--doctest_records and --perplexity_records need --model: the doctest benchmark's "
                        "completions and the perplexity come from the model.")
    if settings.temperature == 0 and settings.num_samples > 1:
        logging.warning("num_samples=%d with greedy decoding: every sample is the same.", settings.num_samples)


def load_model(spec: str, model_config: ModelConfig, seed: int):
    """(model, tokenizer) for `--model`: an HF directory, a training workdir (base + trained adapters), or
    `random:<preset>`."""
    execution = {name: getattr(model_config, name) for name in EXECUTION_FIELDS}
    if spec.startswith("random:"):
        name = spec.removeprefix("random:")
        if name not in PRESETS:
            raise FlagError(f"--model=random:{name}: unknown preset; choose one of {sorted(PRESETS)}.")
        return Transformer(preset(name, **execution), rngs=nnx.Rngs(seed)), load_tekken()
    path = Path(spec)
    if not path.is_dir():
        raise FlagError(f"--model={spec}: no such directory (pass an HF model directory or random:<preset>).")
    if (path / "checkpoints").is_dir():
        model, _, _ = restore_trained_model(str(path))
        return model, _checked_vocab(model, load_tekken(), f"--model={spec}", "the packaged Tekken", exact=False)
    if not (path / "config.json").is_file() and not (path / "params.json").is_file():
        raise FlagError(f"--model={spec} is neither a model directory (config.json or params.json) nor a "
                        "training workdir (checkpoints/).")
    loaded = load_hf(path, seed=seed, **execution)
    if loaded.tokenizer is not None:
        return loaded.model, _checked_vocab(loaded.model, loaded.tokenizer, f"--model={spec}", "its tekken.json",
                                            exact=False)
    return loaded.model, _checked_vocab(loaded.model, load_tekken(), f"--model={spec}",
                                        "the packaged Tekken (the folder has no tekken.json)", exact=True)


def _checked_vocab(model: Transformer, tokenizer, model_name: str, tokenizer_name: str, exact: bool):
    """`tokenizer`, if `model` can use it: its embedding must hold every token id, and a tokenizer the folder does
    not name (a fallback) must match the vocabulary exactly, or scores would silently be for the wrong text."""
    model_vocab, tokenizer_vocab = model.config.vocab_size, tokenizer.n_words
    if model_vocab < tokenizer_vocab or (exact and model_vocab != tokenizer_vocab):
        raise FlagError(f"{model_name} has a vocabulary of {model_vocab} tokens, {tokenizer_name} has "
                        f"{tokenizer_vocab}: they do not belong together. Add the model's own tekken.json to it.")
    return tokenizer


def sample_completions(sampler: Sampler, problems: list[Problem], settings, seed: int,
                       store: SampleStore) -> dict[str, list[str]]:
    """`settings.num_samples` completions per problem, batched, cut at each problem's stop tokens. Batches
    already in `store` (an interrupted run's) are reused; each new one is added to it as it finishes."""
    sampling = SamplingConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                              top_k=settings.top_k, top_p=settings.top_p, seed=seed,
                              steps_per_call=settings.steps_per_call)
    rows = [problem for problem in problems for _ in range(settings.num_samples)]
    starts = range(0, len(rows), settings.batch_size)
    if store.batches:
        print(f"reusing {sum(s in store.batches for s in starts)} of {len(starts)} sampled batches from {store.path}")
    with tqdm(total=len(rows), desc="sampling", unit="completion") as bar:
        for start in starts:
            batch = rows[start:start + settings.batch_size]
            if start not in store.batches:
                texts = [""] * len(batch)
                by_stops: dict[tuple[str, ...], list[int]] = {}
                for i, problem in enumerate(batch):
                    by_stops.setdefault(problem.stop_tokens, []).append(i)
                for stops, group in by_stops.items():
                    generated = sampler.generate([batch[i].prompt for i in group],
                                                 dataclasses.replace(sampling, seed=seed + start), stop=stops)
                    for i, completion in zip(group, generated):
                        texts[i] = completion.text
                store.add(start, texts)
            bar.update(len(batch))
    completions: dict[str, list[str]] = {problem.name: [] for problem in problems}
    for start in starts:
        for problem, text in zip(rows[start:start + settings.batch_size], store.batches[start]):
            completions[problem.name].append(text)
    return completions


def evaluate_benchmark(name: str, problems: list[Problem], completions: dict[str, list[str]], pool: ExecutionPool,
                       settings, output_dir: Path) -> dict:
    """Runs every completion, appends the samples to results.jsonl, returns the benchmark's metrics."""
    pairs = [(problem, i, completion) for problem in problems for i, completion in enumerate(completions[problem.name])]
    verdicts = pool.run([problem.program(completion) for problem, _, completion in pairs], progress=f"running {name}")
    samples = [metrics.Sample(problem.name, i, completion, verdict, problem.reference)
               for (problem, i, completion), verdict in zip(pairs, verdicts)]
    report.write_results(output_dir / "results.jsonl", name, samples)  # output_dir: the run's staging folder
    return metrics.summarize(samples, ks=tuple(settings.ks))


def evaluate(evaluation: Evaluation, config) -> tuple[dict[str, dict], dict]:
    """Samples (or takes the given) completions, runs them in the execution pool and measures perplexity:
    (metrics per benchmark, extra metrics). Every sample goes to results.jsonl as its benchmark finishes."""
    settings = config.eval
    benchmarks = dict(evaluation.benchmarks)
    sampler = Sampler(evaluation.model, evaluation.tokenizer) if evaluation.model is not None else None
    summaries: dict[str, dict] = {}
    with ExecutionPool(settings.workers or None, timeout=settings.timeout, sandbox=settings.sandbox) as pool:
        print(f"execution pool: {pool.size} workers, {'sandboxed' if pool.sandbox.isolated else 'UNCONFINED'}")
        if evaluation.doctest_sources is not None:
            problems, counts = doctests.build_benchmark(evaluation.doctest_sources, pool)
            print(f"doctest benchmark: {counts}")
            _save_problems(evaluation.staging / "doctests.jsonl", problems)
            if problems:
                benchmarks["doctests"] = _first(problems, settings.max_doctest_problems)
        for name, problems in benchmarks.items():
            completions = evaluation.given_completions
            if completions is None:
                store = SampleStore(evaluation.output_dir / "samples" / f"{name}.jsonl",
                                    _sampling_fingerprint(problems, settings, config.seed))
                completions = sample_completions(sampler, problems, settings, config.seed, store)
            summaries[name] = evaluate_benchmark(name, problems, completions, pool, settings, evaluation.staging)
    extra = {}
    if evaluation.perplexity_texts is not None:
        extra["perplexity"] = perplexity(evaluation.model, evaluation.tokenizer, evaluation.perplexity_texts,
                                         seq_len=settings.perplexity_seq_len,
                                         max_tokens=settings.perplexity_max_tokens)
    return summaries, extra


def write_report(output_dir: Path, summaries: dict[str, dict], extra: dict) -> None:
    """summary.json, report.md and pass_at_k.png, and the table on stdout."""
    (output_dir / "summary.json").write_text(json.dumps({"benchmarks": summaries, **extra}, indent=2) + "\n")
    table = report.markdown_table(summaries) if summaries else ""
    if "perplexity" in extra:
        table += (f"\nPerplexity on held-out Elixir: {extra['perplexity']['perplexity']:.3f} "
                  f"({extra['perplexity']['tokens']:,} tokens)\n")
    (output_dir / "report.md").write_text(table)
    if summaries:
        report.pass_at_k_chart(output_dir / "pass_at_k.png", summaries)
    print(table)


def publish(evaluation: Evaluation) -> None:
    """Swaps the finished results into --output_dir, each file replacing the previous run's at once; a previous
    run's result file this run does not make (e.g. its chart) is removed, so none is left from another run."""
    made = {path.name for path in evaluation.staging.iterdir()}
    for stale in ("results.jsonl", "summary.json", "report.md", "pass_at_k.png", "doctests.jsonl"):
        if stale not in made:
            (evaluation.output_dir / stale).unlink(missing_ok=True)
    for name in sorted(made, key=lambda name: name == "summary.json"):  # the summary last: it says "complete"
        os.replace(evaluation.staging / name, evaluation.output_dir / name)
    evaluation.staging.rmdir()
    print(f"wrote {evaluation.output_dir}/{', '.join(sorted(made))}")


def main(argv: list[str]) -> None:
    config = _CONFIG.value
    evaluation = setup(argv, config)
    summaries, extra = evaluate(evaluation, config)
    write_report(evaluation.staging, summaries, extra)
    publish(evaluation)


def _sampling_fingerprint(problems: list[Problem], settings, seed: int) -> dict:
    """What the samples of a store depend on: a store made with anything else is refused, not reused."""
    return dict(model=_MODEL.value, model_files=model_marker(_MODEL.value), seed=seed,
                problems=problems_digest(problems),
                sampling={key: settings[key] for key in ("num_samples", "temperature", "top_k", "top_p",
                                                        "max_new_tokens", "batch_size", "steps_per_call")})


def _first(problems: list[Problem], limit: int) -> list[Problem]:
    return problems[:limit] if limit else problems


def _save_problems(path: Path, problems: list[Problem]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"name": p.name, "prompt": p.prompt, "tests": p.tests,
                                "stop_tokens": list(p.stop_tokens), "reference": p.reference},
                               ensure_ascii=False) + "\n")


if __name__ == "__main__":
    run(main)
