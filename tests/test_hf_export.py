"""Export after a few LoRA training steps: a PEFT adapter that `peft` loads onto the transformers base, merged
HF directories that transformers 4.x and 5.x load (weights, Tekken's ids, BOS, the instruct format), atomic
writes, and launch/export.py end to end (versions, manifest, --list, Bumblebee refusal)."""

import concurrent.futures
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
import tokenizers
import torch
import transformers
from flax import nnx
from peft import PeftModel

from devstral_jax.errors import OutputExistsError
from devstral_jax.hf import model_card, param_map, versions
from devstral_jax.hf.export import ExportError, merged_checkpoint_tensors, save_merged
from devstral_jax.hf.load import load
from devstral_jax.hf.model_dir import open_model_dir
from devstral_jax.hf.peft import AdapterError, adapter_from_model, check_adapter, load_adapter, save_adapter
from devstral_jax.lora import LoRAParam
from devstral_jax.tokenizers.tekken import PACKAGED_TEKKEN, load_tekken
from tests.serving_helpers import CONTROL_TOKENS, CONVERSATION, SNIPPETS, instruct_tokens
from tests.hf_helpers import save_hf_checkpoint
from tests.model_helpers import TINY, hf_logits, max_relative_error

ROOT = Path(__file__).resolve().parents[1]
TOKENS = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 24))
# transformers 4.x (+ its tokenizers and huggingface-hub), pip-installed there by `make test` (see the Makefile).
TRANSFORMERS4 = Path(sys.prefix) / "transformers4"


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


def _probe(merged_dir: Path, pythonpath: Path | None) -> tuple[dict, str]:
    """tests/transformers_probe.py on `merged_dir`, under the venv's transformers or the one at `pythonpath`."""
    request = {"dir": str(merged_dir), "snippets": SNIPPETS, "messages": CONVERSATION, "tokens": TOKENS.tolist()}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "transformers_probe.py")], input=json.dumps(request),
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), result.stderr


def test_merged_tokenizer_is_tekken_with_bos_and_the_instruct_format_in_transformers_4_and_5(trained, tmp_path):
    """Both transformers generations load the merged directory: Tekken's ids with BOS on 20 Elixir snippets,
    mistral-common's instruct encoding through the chat template, our logits, no regex warning."""
    hf, model, root = trained
    assert (TRANSFORMERS4 / "transformers").is_dir(), f"no transformers 4.x at {TRANSFORMERS4}: run `make test`"
    save_merged(tmp_path / "merged", model.config, param_map.state_dict(model, merge_lora=True), dtype="float32",
                progress=False)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["transformers_version"] == \
        transformers.__version__
    tokenizer_config = json.loads((tmp_path / "merged" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # not 5.x's TokenizersBackend

    tekken = load_tekken()
    expected = [tekken.encode(text, bos=True, eos=False) for text in SNIPPETS]
    plain = [i for i, text in enumerate(SNIPPETS) if not any(token in text for token in CONTROL_TOKENS)]
    expected_chat = instruct_tokens(PACKAGED_TEKKEN, CONVERSATION)
    ours = np.asarray(model(TOKENS)[0])
    for pythonpath, major in ((None, "5."), (TRANSFORMERS4, "4.")):
        probe, log = _probe(tmp_path / "merged", pythonpath)
        assert probe["version"].startswith(major), probe["version"]
        for how in ("auto", "fast"):  # AutoTokenizer (5.x: mistral-common on tekken.json) and tokenizer.json
            assert [probe[how]["ids"][i] for i in plain] == [expected[i] for i in plain], (major, how)
            assert probe[how]["chat_ids"] == expected_chat, (major, how)
        # Control-token text (`<s>` in an Elixir string) stays text when the caller asks, as in mistral-common.
        assert probe["fast"]["ids_as_text"] == expected, major
        assert max_relative_error(np.array(probe["logits"]), ours) < 1e-4, major
        assert "incorrect regex pattern" not in log, major
    # What TGI and Bumblebee read: tokenizer.json alone, through `tokenizers`.
    tokenizer_json = tokenizers.Tokenizer.from_file(str(tmp_path / "merged" / "tokenizer.json"))
    assert [tokenizer_json.encode(SNIPPETS[i]).ids for i in plain] == [expected[i] for i in plain]


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


def test_launch_export_writes_a_version_with_model_cards_and_a_manifest(trained, tmp_path):
    hf, model, root = trained
    save_adapter(adapter_from_model(model), tmp_path / "peft", base_model="tiny-mistral")
    manifest = {"records": 1234, "tokens": 567890, "sources": {"hexpm": {"records": 1000, "license": "Apache-2.0"},
                                                               "otp_docs": {"records": 234, "license": "Apache-2.0"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    evaluation = {"humaneval_ex": {"pass@1": 0.4321, "pass@10": 0.61}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    flags = [f"--base={root / 'base'}", f"--adapter={tmp_path / 'peft'}", f"--out={tmp_path / 'out'}",
             "--config.dtype=float32", "--config.base_model=mistralai/Devstral-Small-2507",
             f"--manifest={tmp_path / 'manifest.json'}", f"--eval_results={tmp_path / 'eval.json'}"]
    result = _export(*flags, "--config.formats=peft,merged")
    assert result.returncode == 0, result.stderr[-3000:]
    version = tmp_path / "out" / "devstral-elixir" / "v1"
    merged = transformers.MistralForCausalLM.from_pretrained(version / "merged", dtype=torch.float32)
    assert max_relative_error(hf_logits(merged, TOKENS), np.asarray(model(TOKENS)[0])) < 1e-4
    config = json.loads((version / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "mistralai/Devstral-Small-2507"
    card = (version / "merged" / "README.md").read_text()
    assert "base_model: mistralai/Devstral-Small-2507" in card
    assert "| hexpm | 1000 | Apache-2.0 |" in card and "| pass@1 | 0.4321 |" in card
    # TINY's head_dim (24) is not hidden / heads (64 / 4): the card says Bumblebee cannot load it.
    assert "Bumblebee: **cannot load this model yet**" in card and "head_dim is 24" in card
    assert "Bumblebee.load_model" in model_card.render(TINY.replace(head_dim=16), base_model="m", adapter=None,
                                                       kind="merged")

    written = json.loads((version / "manifest.json").read_text())
    assert (written["name"], written["version"]) == ("devstral-elixir", "v1")
    assert written["base"]["name"] == "mistralai/Devstral-Small-2507"
    assert written["base"]["fingerprint"] == versions.model_fingerprint(open_model_dir(root / "base"))
    assert written["adapter"]["sha256"] == versions.adapter_digest(load_adapter(tmp_path / "peft"))
    assert (written["adapter"]["rank"], written["adapter"]["targets"]) == (4, sorted(TINY.lora_targets))
    assert written["data"]["sha256"] == versions.file_sha256(tmp_path / "manifest.json")
    assert written["evaluation"] == evaluation and written["training"] is None
    assert set(written["formats"]) == {"peft", "merged"}
    assert {f["path"] for f in written["formats"]["peft"]["files"]} == \
        {"adapter/README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    for kind, entry in written["formats"].items():
        assert entry["bytes"] == sum(f["bytes"] for f in entry["files"]) > 0, kind
        for f in entry["files"]:
            assert (version / f["path"]).stat().st_size == f["bytes"] and versions.file_sha256(version / f["path"]) == \
                f["sha256"], f["path"]

    # The next export of the same --out and name is v2; --list shows both, oldest first.
    result = _export(*flags, "--config.formats=peft")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((version.parent / "v2" / "manifest.json").read_text())["version"] == "v2"
    listing = _export(f"--out={tmp_path / 'out'}", "--list")
    assert listing.returncode == 0, listing.stderr[-3000:]
    header, first, second = listing.stdout.strip().splitlines()
    assert header.split()[:4] == ["name", "version", "created", "base"]
    assert first.split()[:2] == ["devstral-elixir", "v1"] and second.split()[:2] == ["devstral-elixir", "v2"]
    assert "mistralai/Devstral-Small-2507" in first and "merged" in first and "merged" not in second
    assert "humaneval_ex.pass@1=0.4321" in first

    # User mistakes are one-line errors, and nothing is written.
    failures = [
        ([f"--base={tmp_path / 'nowhere'}", f"--adapter={tmp_path / 'peft'}"], "No model directory at"),
        ([f"--base={root / 'base'}", f"--adapter={root / 'base'}"], "No adapter_config.json in"),
        ([f"--base={root / 'base'}", f"--workdir={tmp_path}"], "is not a training workdir"),
        ([f"--base={root / 'base'}", f"--adapter={tmp_path / 'peft'}", "--config.formats=gguf_q8_0"],
         "has 131072 tokens but the model's vocabulary is 256"),
        ([f"--base={root / 'base'}", f"--adapter={tmp_path / 'peft'}", "--config.formats=merged,bumblebee"],
         "Bumblebee's Mistral loader derives head_dim from hidden_size / num_heads = 16, but this model's head_dim "
         "is 24"),
    ]
    with concurrent.futures.ThreadPoolExecutor(2) as threads:  # two at a time: each launch is mostly Python's start
        results = list(threads.map(lambda failure: _export(*failure[0], f"--out={tmp_path / 'failed'}"), failures))
    for (arguments, message), result in zip(failures, results):
        assert result.returncode != 0 and message in result.stderr, (arguments, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, arguments
    assert not (tmp_path / "failed").exists() or os.listdir(tmp_path / "failed") == []
    result = _export(*flags, "--config.formats=peft", "--config.version=v1")  # a version is never overwritten
    assert result.returncode != 0 and "v1 already exists" in result.stderr and "Traceback" not in result.stderr
    assert json.loads((version / "manifest.json").read_text()) == written


def test_export_from_a_training_workdir(trained_workdir, tmp_path):
    """launch/train.py for 2 steps (random NF4 base: conftest.py), then export its adapter against that base written
    as an HF directory: PEFT on transformers reproduces the trained model's logits."""
    from devstral_jax.train.trainer import restore_trained_model

    trained_model, config, _ = restore_trained_model(str(trained_workdir))
    save_merged(tmp_path / "base", config, param_map.state_dict(trained_model), dtype="float32", progress=False)

    result = _export(f"--base={tmp_path / 'base'}", f"--workdir={trained_workdir}", f"--out={tmp_path / 'out'}",
                     "--config.formats=peft")
    assert result.returncode == 0, result.stderr[-3000:]
    version = tmp_path / "out" / "devstral-elixir" / "v1"
    training = json.loads((version / "manifest.json").read_text())["training"]
    assert training["workdir"] == str(trained_workdir) and training["config"]["train"]["steps"] == 2
    base = transformers.MistralForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    tokens = np.random.default_rng(2).integers(0, config.vocab_size, (1, 16))
    ours = np.asarray(trained_model(tokens)[0])
    assert max_relative_error(ours, hf_logits(base, tokens)) > 1e-4  # the adapters trained
    peft_model = PeftModel.from_pretrained(base, version / "adapter").eval()
    assert max_relative_error(hf_logits(peft_model, tokens), ours) < 1e-4
