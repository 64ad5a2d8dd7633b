"""The entry points on a Llama-family GGUF base: launch/train.py trains on it with the tokenizer in its metadata
(SmolLM2's), launch/generate.py samples from the run with that tokenizer, and launch/evaluate.py refuses a Llama
model whose vocabulary is not its family's default tokenizer's, naming both."""

import os
import subprocess
import sys
from pathlib import Path

import torch
import transformers

from devstral_jax.checkpoint import Checkpointer
from devstral_jax.config import preset, to_hf_config
from devstral_jax.tokenizers import HFTokenizer
from devstral_jax.train.config import sibling_config
from tests.gguf_helpers import TINY_SMOLLM2, real_smollm2, write_gguf
from tests.model_helpers import hf_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's run


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)


def test_train_and_generate_on_a_gguf_base_use_its_own_tokenizer(tmp_path):
    base = tmp_path / "tiny-smollm2.gguf"
    write_gguf(hf_model(TINY_SMOLLM2, seed=3), TINY_SMOLLM2, base, "Q8_0", tokenizer_from=real_smollm2())
    config = tmp_path / "tiny_smollm2.py"
    config.write_text(f'''
from devstral_jax.config import preset, to_config_dict
from devstral_jax.train.config import sibling_config
def get_config():
    config = sibling_config("{ROOT}/configs/x.py", "tiny_cpu")
    config.model = to_config_dict(preset("smollm2_135m", hidden_size=64, intermediate_size=128, num_layers=3,
                                         num_heads=4, num_kv_heads=2, head_dim=16, dtype="float32",
                                         remat_policy="none", attn_storage="nf4", mlp_storage="nf4", lora_rank=4))
    config.base = "{base}"
    return config
''')
    workdir = tmp_path / "run"
    result = _run("launch/train.py", f"--config={config}", f"--workdir={workdir}", "--config.data.seq_len=64",
                  "--config.data.batch_size=2", "--config.train.loss_chunk=64", "--config.train.steps=2",
                  "--config.train.eval_batches=1")
    assert result.returncode == 0, result.stderr[-3000:]  # Tekken (131,072 tokens) would be refused: 49,152 here
    assert Checkpointer(workdir / "checkpoints").restore_meta()["base_source"] == str(base)

    result = _run("launch/generate.py", f"--config={config}", f"--workdir={workdir}",
                  "--config.generate.max_new_tokens=8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"tokens of Hugging Face tokenizer ({base})" in result.stdout
    prompt = sibling_config(str(ROOT / "configs" / "x.py"), "tiny_cpu").generate.prompt
    assert f"prompt: {len(HFTokenizer(base).encode(prompt))} tokens" in result.stdout


def test_evaluate_refuses_a_model_whose_vocabulary_is_not_its_tokenizers(tmp_path):
    # A Llama-family directory without tokenizer files gets the family's (SmolLM2's): 49,152 tokens for 256 rows.
    config = preset("smollm2_135m", num_layers=1, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2,
                    head_dim=16, vocab_size=256)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**to_hf_config(config))).to(torch.float32) \
        .save_pretrained(tmp_path / "model")
    result = _run("launch/evaluate.py", "--config=configs/eval_tiny_cpu.py", f"--model={tmp_path / 'model'}",
                  "--benchmark=tests/eval/data/humaneval_ex_sample.jsonl", f"--output_dir={tmp_path / 'eval'}")
    assert result.returncode == 1
    assert (f"evaluate.py: error: --model={tmp_path / 'model'} has a vocabulary of 256 tokens, Hugging Face "
            "tokenizer (" in result.stderr and "SmolLM2" in result.stderr
            and "(the folder has no tokenizer.json) has 49152: they do not belong together. Add the model's own "
            "tokenizer.json to it." in result.stderr), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
