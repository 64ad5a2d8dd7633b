"""The README.md (Hugging Face model card) that goes with every export: what it is, how it was made, how to serve it.

The training data manifest (data_pipeline's `manifest.json`) and evaluation results (JSON) are summarised
when given: their top-level numbers as a table, and a table per nested section (per source, per benchmark).
"""

from __future__ import annotations

import json
from typing import Any

from devstral_jax.config import ModelConfig
from devstral_jax.hf.export import bumblebee_problem
from devstral_jax.hf.peft import Adapter


def render(config: ModelConfig, *, base_model: str, adapter: Adapter | None, kind: str,
           manifest: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None) -> str:
    """`kind` is "adapter" (a PEFT LoRA directory) or "merged" (a full MistralForCausalLM directory)."""
    front = ["---", f"base_model: {base_model}", "license: apache-2.0",
             f"library_name: {'peft' if kind == 'adapter' else 'transformers'}", "pipeline_tag: text-generation",
             "tags:", "- elixir", "- code", "- devstral", "- lora" if adapter else "- mistral", "---", ""]
    lines = [f"# {base_model.split('/')[-1]}, fine-tuned for Elixir", "",
             f"{'A LoRA adapter for' if kind == 'adapter' else 'A merged fine-tune of'} `{base_model}` "
             "(Mistral architecture) trained with devstral_jax (JAX/Flax QLoRA) on Elixir code and documentation.", ""]
    lines += ["## Model", "", "| | |", "|---|---|",
              f"| layers / hidden / MLP | {config.num_layers} / {config.hidden_size} / {config.intermediate_size} |",
              f"| heads (query / KV) x dim | {config.num_heads} / {config.num_kv_heads} x {config.head_dim} |",
              f"| vocabulary | {config.vocab_size} (Tekken) |", f"| RoPE theta | {config.rope_theta:g} |",
              f"| parameters | {config.num_params:,} |"]
    if adapter is not None:
        lines += [f"| LoRA | rank {adapter.rank}, alpha {adapter.alpha:g}, dropout {adapter.dropout:g}, "
                  f"on {', '.join(adapter.targets)} ({len(adapter.weights)} modules) |"]
    lines += [""]
    lines += _section("Training data", manifest) + _section("Evaluation", evaluation)
    lines += ["## Use", ""] + _usage(kind, base_model, adapter.rank if adapter else 0)
    if kind == "merged":
        lines += _bumblebee(config)
    return "\n".join(front + lines) + "\n"


def _section(title: str, data: dict[str, Any] | None) -> list[str]:
    """Top-level numbers as one table; each nested dict as its own table (one row per entry when its entries are
    themselves dicts, e.g. per source); lists inline."""
    if not data:
        return []
    lines = [f"## {title}", ""]
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, (dict, list))]
    if scalars:
        lines += _table(["", ""], [[k, v] for k, v in scalars])
    for key, value in data.items():
        if isinstance(value, list) and not all(isinstance(row, dict) for row in value):
            lines += [f"**{key}**: " + ", ".join(_cell(v) for v in value), ""]
        elif isinstance(value, (dict, list)) and value:
            rows = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
            if all(isinstance(row, dict) for _, row in rows):
                columns = list(dict.fromkeys(c for _, row in rows for c in row))
                lines += [f"**{key}**", ""] + _table(["", *columns], [[name, *(row.get(c, "") for c in columns)]
                                                                      for name, row in rows])
            else:
                lines += [f"**{key}**", ""] + _table(["", ""], [[name, v] for name, v in rows])
    return lines


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows), ""]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))[:80]
    return str(value).replace("|", "\\|").replace("\n", " ")


def _usage(kind: str, base: str, rank: int) -> list[str]:
    if kind == "adapter":
        return ["transformers + PEFT:", "", "```python", "from peft import PeftModel",
                "from transformers import AutoModelForCausalLM", "",
                f'base = AutoModelForCausalLM.from_pretrained("{base}", dtype="bfloat16")',
                'model = PeftModel.from_pretrained(base, "path/to/this/adapter")', "```", "",
                "vLLM, serving the LoRA beside the base:", "", "```sh",
                f"vllm serve {base} --tokenizer-mode mistral --enable-lora --max-lora-rank {rank} \\",
                "  --lora-modules elixir=path/to/this/adapter", "```", ""]
    return ["transformers:", "", "```python", "from transformers import AutoModelForCausalLM", "",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/model", dtype="bfloat16")', "```", "",
            "vLLM: `vllm serve path/to/this/model --tokenizer-mode mistral`", "",
            "Tokenize with mistral-common's Tekken (`tekken.json`, shipped here), as Mistral recommends for "
            "Devstral.", ""]


def _bumblebee(config: ModelConfig) -> list[str]:
    problem = bumblebee_problem(config)
    if problem:
        return [f"Bumblebee: **cannot load this model yet**. {problem}", ""]
    return ["Bumblebee (Elixir):", "", "```elixir",
            '{:ok, model} = Bumblebee.load_model({:local, "path/to/this/model"})',
            '{:ok, tokenizer} = Bumblebee.load_tokenizer({:local, "path/to/this/model"})', "```", ""]
