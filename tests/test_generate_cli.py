"""launch/generate.py end to end: config -> tiny model -> Sampler tokens streamed as Tekken text; and its errors."""

import ast
import concurrent.futures
import subprocess
import sys
from pathlib import Path

import jax
from flax import nnx

from devstral_jax import sharding
from devstral_jax.config import from_config_dict
from devstral_jax.data.records import Message
from devstral_jax.model import Transformer
from devstral_jax.sampler import Sampler, SamplingConfig
from devstral_jax.tokenizers.tekken import load_tekken
from devstral_jax.train.config import sibling_config
from devstral_jax.train.trainer import build_model, run_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _generate(*flags: str, text: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/generate.py", "--config=configs/tiny_cpu.py", *flags],
                          cwd=ROOT, capture_output=True, text=text, timeout=300)


def test_prints_the_samplers_tokens_as_text_as_they_come():
    result = _generate("--config.generate.max_new_tokens=20", "--config.model.num_layers=1", text=False)
    assert result.returncode == 0, result.stderr.decode()
    stdout = result.stdout.decode()  # no newline translation: the streamed text is compared exactly
    assert "model: " in stdout and "(1 layers" in stdout

    config = sibling_config(str(ROOT / "configs" / "x.py"), "tiny_cpu")
    config.model.num_layers = 1
    tokenizer = load_tekken()
    prompt = tokenizer.encode(config.generate.prompt, bos=True, eos=False)
    expected = Sampler(Transformer(from_config_dict(config.model), rngs=nnx.Rngs(config.seed))).generate_tokens(
        [prompt], SamplingConfig(max_new_tokens=20), eos_id=tokenizer.eos_id, decode=tokenizer.decode)[0]

    summary = stdout[stdout.rindex("\ngenerated "):]
    assert f"generated {len(expected.tokens)} tokens" in summary
    assert ast.literal_eval(summary.split(": ", 1)[1].splitlines()[0]) == expected.tokens
    assert f"decoded: {expected.text!r}" in summary
    # What streamed to the terminal, right after the prompt: the same tokens' text.
    streamed = stdout[:stdout.rindex("\ngenerated ")]
    assert streamed.endswith(config.generate.prompt + tokenizer.decode(expected.tokens))


def test_config_mistakes_are_one_line_errors_not_tracebacks():
    mistakes = [("--config.model.num_layerz=3", 'Did you mean "num_layers"'),
                ("--config.model.num_layers=x", "invalid literal for int()"),
                ("--config.model.num_heads=3", "num_kv_heads=2 must divide num_heads=3")]
    with concurrent.futures.ThreadPoolExecutor(2) as threads:  # two at a time: each launch is mostly Python's start
        results = list(threads.map(lambda mistake: _generate(mistake[0]), mistakes))
    for (flag, message), result in zip(mistakes, results):
        assert result.returncode != 0, flag
        assert message in result.stderr, (flag, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, flag


def test_without_a_workdir_samples_the_real_base_and_a_chat_prompt_is_a_user_turn():
    """configs/smollm2_cpu.py has a real base (SmolLM2's GGUF): without --workdir generate.py samples that base with
    fresh adapters (what training starts from), and `generate.chat` encodes the prompt in the model's chat format.
    The printed tokens are the ones our Sampler gives the same model for the chat-encoded prompt."""
    question = "Write an Elixir function that reverses a list."
    result = subprocess.run([sys.executable, "launch/generate.py", "--config=configs/smollm2_cpu.py",
                             "--config.generate.chat=True", f"--config.generate.prompt={question}",
                             "--config.generate.max_new_tokens=6"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "before training (fresh adapters)" in result.stdout and "as a user turn" in result.stdout

    config = sibling_config(str(ROOT / "configs" / "x.py"), "smollm2_cpu")
    model_config = from_config_dict(config.model)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    model = nnx.merge(*build_model(config, model_config, mesh)[:3])
    tokenizer = run_tokenizer(config, model_config)
    prompt = tokenizer.encode_prompt([Message("user", question)])
    assert f"prompt: {len(prompt)} tokens" in result.stdout
    expected = Sampler(model, tokenizer).generate_tokens([prompt], SamplingConfig(max_new_tokens=6),
                                                         eos_id=tokenizer.eos_id, decode=tokenizer.decode)[0]
    summary = result.stdout[result.stdout.rindex("\ngenerated "):]
    assert ast.literal_eval(summary.split(": ", 1)[1].splitlines()[0]) == expected.tokens
