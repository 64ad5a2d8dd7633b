"""Evaluates a model by running what it writes: sample completions, execute them against ExUnit tests, report.

    python launch/evaluate.py --config=configs/eval_tiny_cpu.py --model=<HF dir | random:<preset>> \
        --benchmark=humaneval-elixir.jsonl [--benchmark=...] [--doctest_records='shards/*.jsonl'] \
        [--perplexity_records='shards/*.jsonl'] --output_dir=eval_out

    python launch/evaluate.py --config=configs/eval_tiny_cpu.py --completions=samples.jsonl \
        [--benchmark=humaneval-elixir.jsonl] --output_dir=eval_out   # score given completions, no model

Writes to --output_dir: results.jsonl (every sample: completion, verdict, time, output), summary.json (all
metrics per benchmark), report.md (a table) and pass_at_k.png; samples/<benchmark>.jsonl keeps each finished
generation batch, so rerunning the same command after an interruption samples only what is missing.
Benchmarks are MultiPL-E JSONL files (see devstral_jax/eval/benchmarks.py); --doctest_records builds the
doctest benchmark from the data pipeline's held-out (validation) records and saves it as doctests.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from devstral_jax.cli import run
from devstral_jax.config import EXECUTION_FIELDS, PRESETS, ConfigError, ModelConfig, from_config_dict, preset
from devstral_jax.errors import CheckpointError
from devstral_jax.eval import doctests, metrics, report
from devstral_jax.eval.benchmarks import BenchmarkError, Problem, load_completions, load_problems
from devstral_jax.eval.perplexity import perplexity
from devstral_jax.eval.pool import ExecutionPool
from devstral_jax.eval.sample_store import SampleStore, StaleSamplesError, model_marker, problems_digest
from devstral_jax.eval.sandbox import SandboxUnavailable
from devstral_jax.hf.load import load as load_hf
from devstral_jax.model import Transformer
from devstral_jax.sampler import Sampler, SamplingConfig
from devstral_jax.tokenizer import load_tekken
from devstral_jax.train.trainer import TrainingError, restore_trained_model

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

def load_model(spec: str, model_config: ModelConfig, seed: int):
    """(model, tokenizer) for `--model`: an HF directory, a training workdir (base + trained adapters), or
    `random:<preset>`."""
    execution = {name: getattr(model_config, name) for name in EXECUTION_FIELDS}
    if spec.startswith("random:"):
        name = spec.removeprefix("random:")
        if name not in PRESETS:
            raise app.UsageError(f"--model=random:{name}: unknown preset; choose one of {sorted(PRESETS)}.")
        return Transformer(preset(name, **execution), rngs=nnx.Rngs(seed)), load_tekken()
    path = Path(spec)
    if not path.is_dir():
        raise app.UsageError(f"--model={spec}: no such directory (pass an HF model directory or random:<preset>).")
    if (path / "checkpoints").is_dir():
        try:
            model, _, _ = restore_trained_model(str(path))
        except (CheckpointError, TrainingError) as e:
            raise app.UsageError(f"--model={spec}: {e}") from None
        return model, load_tekken()
    if not (path / "config.json").is_file() and not (path / "params.json").is_file():
        raise app.UsageError(f"--model={spec} is neither a model directory (config.json or params.json) nor a "
                             "training workdir (checkpoints/).")
    loaded = load_hf(path, seed=seed, **execution)
    return loaded.model, loaded.tokenizer or load_tekken()


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
    report.write_results(output_dir / "results.jsonl", name, samples)
    return metrics.summarize(samples, ks=tuple(settings.ks))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    settings = config.eval
    if not (_MODEL.value or _COMPLETIONS.value):
        raise app.UsageError("Pass --model (to sample completions) or --completions (to score given ones).")
    if _MODEL.value and _COMPLETIONS.value:
        raise app.UsageError("Pass either --model or --completions, not both.")
    if _MODEL.value and not (_BENCHMARKS.value or _DOCTEST_RECORDS.value or _PERPLEXITY_RECORDS.value):
        raise app.UsageError("Nothing to evaluate: pass --benchmark, --doctest_records or --perplexity_records.")
    if settings.temperature == 0 and settings.num_samples > 1:
        logging.warning("num_samples=%d with greedy decoding: every sample is the same.", settings.num_samples)
    given_completions: dict[str, list[str]] = {}
    try:
        model_config = from_config_dict(config.model)
        benchmarks = {Path(path).stem: _first(load_problems(path), settings.max_problems) for path in _BENCHMARKS.value}
        if _COMPLETIONS.value:
            given = next(iter(benchmarks.values())) if len(benchmarks) == 1 else None
            if len(benchmarks) > 1:
                raise app.UsageError("With --completions pass at most one --benchmark (the one they answer).")
            problems, given_completions = load_completions(_COMPLETIONS.value, given)
            benchmarks = {Path(_COMPLETIONS.value).stem: problems}
    except (ConfigError, BenchmarkError) as error:
        raise app.UsageError(str(error)) from None

    output_dir = Path(_OUTPUT_DIR.value)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.jsonl").write_text("")
    model = tokenizer = sampler = None
    if _MODEL.value:
        model, tokenizer = load_model(_MODEL.value, model_config, config.seed)
        sampler = Sampler(model, tokenizer)
        print(f"model: {_MODEL.value} ({model.config.num_params:,} parameters) on {jax.devices()[0].platform}")

    summaries: dict[str, dict] = {}
    try:
        pool = ExecutionPool(settings.workers or None, timeout=settings.timeout, sandbox=settings.sandbox)
    except (SandboxUnavailable, ValueError) as error:
        raise app.UsageError(str(error)) from None
    with pool:
        print(f"execution pool: {pool.size} workers, {'sandboxed' if pool.sandbox.isolated else 'UNCONFINED'}")
        if _DOCTEST_RECORDS.value:
            try:
                sources = doctests.held_out_sources(_DOCTEST_RECORDS.value)
            except BenchmarkError as error:
                raise app.UsageError(str(error)) from None
            problems, counts = doctests.build_benchmark(sources, pool)
            print(f"doctest benchmark: {counts}")
            _save_problems(output_dir / "doctests.jsonl", problems)
            if problems:
                benchmarks["doctests"] = _first(problems, settings.max_doctest_problems)
        for name, problems in benchmarks.items():
            if _COMPLETIONS.value:
                completions = given_completions
            else:
                store = _sample_store(output_dir / "samples" / f"{name}.jsonl", problems, settings, config.seed)
                completions = sample_completions(sampler, problems, settings, config.seed, store)
            summaries[name] = evaluate_benchmark(name, problems, completions, pool, settings, output_dir)

    extra = {}
    if _PERPLEXITY_RECORDS.value and model is not None:
        try:
            texts = [text for _, text in doctests.held_out_sources(_PERPLEXITY_RECORDS.value)]
        except BenchmarkError as error:
            raise app.UsageError(str(error)) from None
        extra["perplexity"] = perplexity(model, tokenizer, texts, seq_len=settings.perplexity_seq_len,
                                         max_tokens=settings.perplexity_max_tokens)
    (output_dir / "summary.json").write_text(json.dumps({"benchmarks": summaries, **extra}, indent=2) + "\n")
    table = report.markdown_table(summaries) if summaries else ""
    if "perplexity" in extra:
        table += (f"\nPerplexity on held-out Elixir: {extra['perplexity']['perplexity']:.3f} "
                  f"({extra['perplexity']['tokens']:,} tokens)\n")
    (output_dir / "report.md").write_text(table)
    if summaries:
        report.pass_at_k_chart(output_dir / "pass_at_k.png", summaries)
    print(table)
    print(f"wrote {output_dir}/results.jsonl, summary.json, report.md" + (", pass_at_k.png" if summaries else ""))


def _sample_store(path: Path, problems: list[Problem], settings, seed: int) -> SampleStore:
    fingerprint = dict(model=_MODEL.value, model_files=model_marker(_MODEL.value), seed=seed,
                       problems=problems_digest(problems),
                       sampling={key: settings[key] for key in ("num_samples", "temperature", "top_k", "top_p",
                                                               "max_new_tokens", "batch_size", "steps_per_call")})
    try:
        return SampleStore(path, fingerprint)
    except StaleSamplesError as error:
        raise app.UsageError(str(error)) from None


def _first(problems: list[Problem], limit: int) -> list[Problem]:
    return problems[:limit] if limit else problems


def _save_problems(path: Path, problems: list[Problem]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"name": p.name, "prompt": p.prompt, "tests": p.tests, "stop_tokens": list(p.stop_tokens),
                                "reference": p.reference}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    run(main)
