"""Export after a few LoRA training steps: a PEFT adapter that `peft` loads onto the transformers base, merged
HF directories that transformers loads, atomic writes, and launch/export.py end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx
from peft import PeftModel

from devstral_jax.errors import OutputExistsError
from devstral_jax.hf import param_map
from devstral_jax.hf.export import ExportError, merged_checkpoint_tensors, save_merged
from devstral_jax.hf.load import load
from devstral_jax.hf.model_dir import open_model_dir
from devstral_jax.hf.peft import AdapterError, adapter_from_model, check_adapter, load_adapter, save_adapter
from devstral_jax.lora import LoRAParam
from devstral_jax.tokenizer import load_tekken
from tests.hf_helpers import save_hf_checkpoint
from tests.model_helpers import TINY, hf_logits, max_relative_error

ROOT = Path(__file__).resolve().parents[1]
TOKENS = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 24))


def _train_lora(model, steps: int = 3) -> None:
    """A few real AdamW steps on the LoRA parameters only (next-token loss on random tokens)."""
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=LoRAParam)
    batch = jnp.asarray(np.random.default_rng(1).integers(0, TINY.vocab_size, (4, 16)))

    def loss_fn(model):
        logits, _ = model(batch[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch[:, 1:, None], axis=-1))

    @nnx.jit
    def step(model, optimizer):
        optimizer.update(model, nnx.grad(loss_fn, argnums=nnx.DiffState(0, LoRAParam))(model))

    for _ in range(steps):
        step(model, optimizer)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(transformers base, our model = same base + LoRA trained a few steps, the base directory)."""
    root = tmp_path_factory.mktemp("export")
    hf = save_hf_checkpoint(TINY, root / "base")
    model = load(root / "base", dtype="float32", lora_rank=4, lora_alpha=8.0, progress=False).model
    _train_lora(model)
    assert np.abs(np.asarray(model.layers.mlp.down_proj.lora.b[...])).max() > 1e-3  # B moved off zero
    return hf, model, root


def test_peft_loads_our_adapter_onto_the_transformers_base_with_our_logits(trained, tmp_path):
    hf, model, root = trained
    adapter = adapter_from_model(model)
    save_adapter(adapter, tmp_path / "adapter", base_model="tiny-mistral")
    assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
    base = transformers.MistralForCausalLM.from_pretrained(root / "base", dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ours = np.asarray(model(TOKENS)[0])
    assert max_relative_error(ours, hf_logits(hf, TOKENS)) > 1e-3  # the adapter changes the model...
    assert max_relative_error(hf_logits(peft_model, TOKENS), ours) < 1e-4  # ...and PEFT applies it as we do
    reread = load_adapter(tmp_path / "adapter")
    assert (reread.rank, reread.alpha, reread.targets) == (4, 8.0, sorted(TINY.lora_targets))
    for module, (a, b) in adapter.weights.items():
        np.testing.assert_array_equal(reread.weights[module][0], a)
        np.testing.assert_array_equal(reread.weights[module][1], b)


def test_merged_exports_load_in_transformers_with_our_merged_logits(trained, tmp_path):
    hf, model, root = trained
    ours = np.asarray(model(TOKENS)[0])
    # From the model in memory, float32: transformers computes our adapted logits.
    save_merged(tmp_path / "f32", model.config, param_map.state_dict(model, merge_lora=True), dtype="float32",
                progress=False)
    merged = transformers.MistralForCausalLM.from_pretrained(tmp_path / "f32", dtype=torch.float32)
    assert max_relative_error(hf_logits(merged, TOKENS), ours) < 1e-4
    reloaded = load(tmp_path / "f32", dtype="float32", progress=False).model  # and the export loads back into ours
    assert max_relative_error(reloaded(TOKENS)[0], hf_logits(merged, TOKENS)) < 1e-4

    # Streamed from the base checkpoint + the adapter, bfloat16, in shards of at most 100 kB.
    base = open_model_dir(root / "base")
    save_merged(tmp_path / "bf16", base.config, merged_checkpoint_tensors(base, adapter_from_model(model)),
                max_shard_bytes=100_000, readme="# card\n", progress=False)
    files = sorted(os.listdir(tmp_path / "bf16"))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) >= 2 and all(os.path.getsize(tmp_path / "bf16" / f) <= 100_000 + 4096 for f in shards)
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tekken.json",
            "tokenizer.json", "README.md"} <= set(files)
    text = "defmodule Greeter do\n  def hello(name), do: \"Hello, #{name}!\"\nend\n"
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "bf16")  # tokenizer.json made from Tekken
    assert tokenizer.encode(text, add_special_tokens=False) == load_tekken().encode(text, bos=False, eos=False)
    merged_bf16 = transformers.MistralForCausalLM.from_pretrained(tmp_path / "bf16")
    assert merged_bf16.dtype == torch.bfloat16
    reference = dict(param_map.state_dict(model, merge_lora=True))
    for name, tensor in merged_bf16.state_dict().items():  # each weight is ours, rounded to bfloat16
        expected = reference[name].astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_allclose(tensor.float().numpy(), expected, rtol=2**-8, atol=0, err_msg=name)


def test_a_failing_export_leaves_nothing_behind(trained, tmp_path):
    hf, model, root = trained
    tensors = dict(param_map.state_dict(model, merge_lora=True))
    tensors["model.layers.2.mlp.up_proj.weight"] = tensors["model.layers.2.mlp.up_proj.weight"].copy()
    tensors["model.layers.2.mlp.up_proj.weight"][3, 5] = np.nan  # diverged training
    with pytest.raises(ExportError, match=r"Tensor model\.layers\.2\.mlp\.up_proj\.weight has non-finite values"):
        save_merged(tmp_path / "out", model.config, tensors.items(), max_shard_bytes=100_000, progress=False)
    assert os.listdir(tmp_path) == []  # neither the output nor its temporary directory

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="taken already exists"):
        save_adapter(adapter_from_model(model), tmp_path / "taken", base_model="tiny-mistral")
    assert os.listdir(tmp_path / "taken") == ["keep.txt"]


def test_an_adapter_for_another_base_is_named(trained):
    hf, model, root = trained
    adapter = adapter_from_model(model)
    with pytest.raises(AdapterError, match=r"model\.layers\.0\.self_attn\.q_proj has lora_A \(4, 64\) and lora_B "
                                           r"\(96, 4\); the base's \[128, 64\] weight"):
        check_adapter(adapter, TINY.replace(head_dim=32))
    with pytest.raises(AdapterError, match=r"adapts model\.layers\.2\.\S+, which the base model \(2 layers\)"):
        check_adapter(adapter, TINY.replace(num_layers=2))


def _export(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/export.py", *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_launch_export_writes_adapter_and_merged_model_with_model_cards(trained, tmp_path):
    hf, model, root = trained
    save_adapter(adapter_from_model(model), tmp_path / "peft", base_model="tiny-mistral")
    manifest = {"records": 1234, "tokens": 567890, "sources": {"hexpm": {"records": 1000, "license": "Apache-2.0"},
                                                               "otp_docs": {"records": 234, "license": "Apache-2.0"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "eval.json").write_text(json.dumps({"humaneval_ex": {"pass@1": 0.4321, "pass@10": 0.61}}))
    result = _export(f"--base={root / 'base'}", f"--adapter={tmp_path / 'peft'}", f"--out={tmp_path / 'out'}",
                     "--config.formats=peft,merged", "--config.dtype=float32",
                     "--config.base_model=mistralai/Devstral-Small-2507",
                     f"--manifest={tmp_path / 'manifest.json'}", f"--eval_results={tmp_path / 'eval.json'}")
    assert result.returncode == 0, result.stderr[-3000:]
    merged = transformers.MistralForCausalLM.from_pretrained(tmp_path / "out" / "merged", dtype=torch.float32)
    assert max_relative_error(hf_logits(merged, TOKENS), np.asarray(model(TOKENS)[0])) < 1e-4
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "mistralai/Devstral-Small-2507"
    card = (tmp_path / "out" / "merged" / "README.md").read_text()
    assert "base_model: mistralai/Devstral-Small-2507" in card
    assert "| hexpm | 1000 | Apache-2.0 |" in card and "| pass@1 | 0.4321 |" in card

    # User mistakes are one-line errors, and nothing is written.
    failures = [
        ([f"--base={tmp_path / 'nowhere'}", f"--adapter={tmp_path / 'peft'}"], "No model directory at"),
        ([f"--base={root / 'base'}", f"--adapter={root / 'base'}"], "No adapter_config.json in"),
        ([f"--base={root / 'base'}", f"--workdir={tmp_path}"], "is not a training workdir"),
        ([f"--base={root / 'base'}", f"--adapter={tmp_path / 'peft'}", "--config.formats=gguf_q8_0"],
         "has 131072 tokens but the model's vocabulary is 256"),
    ]
    for flags, message in failures:
        result = _export(*flags, f"--out={tmp_path / 'failed'}")
        assert result.returncode != 0 and message in result.stderr, (flags, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, flags
    assert not (tmp_path / "failed").exists() or os.listdir(tmp_path / "failed") == []


def test_export_from_a_training_workdir(tmp_path):
    """launch/train.py for 2 steps (random NF4 base), then export its adapter against that base written as an HF
    directory: PEFT on transformers reproduces the trained model's logits."""
    from devstral_jax.train.trainer import restore_trained_model

    train = [sys.executable, "launch/train.py", "--config=configs/tiny_cpu.py", f"--workdir={tmp_path / 'run'}",
             "--config.model.num_layers=1", "--config.data.seq_len=64", "--config.data.batch_size=4",
             "--config.train.loss_chunk=64", "--config.train.steps=2", "--config.train.eval_every=2",
             "--config.train.eval_batches=1", "--config.train.checkpoint_every=2", "--config.optim.warmup_steps=1"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's run
    result = subprocess.run(train, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    trained_model, config, _ = restore_trained_model(str(tmp_path / "run"))
    save_merged(tmp_path / "base", config, param_map.state_dict(trained_model), dtype="float32", progress=False)

    result = _export(f"--base={tmp_path / 'base'}", f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'out'}",
                     "--config.formats=peft")
    assert result.returncode == 0, result.stderr[-3000:]
    base = transformers.MistralForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    tokens = np.random.default_rng(2).integers(0, config.vocab_size, (1, 16))
    ours = np.asarray(trained_model(tokens)[0])
    assert max_relative_error(ours, hf_logits(base, tokens)) > 1e-4  # the adapters trained
    peft_model = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval()
    assert max_relative_error(hf_logits(peft_model, tokens), ours) < 1e-4
