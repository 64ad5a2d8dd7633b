"""The KV-cache sampler against transformers' greedy generate, against itself (batch vs alone, mesh vs one
device, cache vs no cache on an NF4 + LoRA model), its token stream, and MultiPL-E's stop-sequence rule."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from devstral_jax.lora import LoRAParam
from devstral_jax.model import Transformer
from devstral_jax.sampler import Sampler, SamplingConfig, TextStream, sample_logits, truncate_at_stop
from devstral_jax.tokenizers.tekken import load_tekken
from tests.model_helpers import TINY, hf_greedy, hf_model, ours_from_hf

GREEDY = SamplingConfig(max_new_tokens=20, steps_per_call=8, prompt_bucket=16)
PROMPT_LENGTHS = (5, 17, 9)


def _prompts(config, lengths=PROMPT_LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, config.vocab_size, n).tolist() for n in lengths]


def _decode(tokens: list[int]) -> str:
    """A stand-in detokenizer: token t -> one letter, so stop strings are easy to place."""
    return "".join("abcdefghij\n"[t % 11] for t in tokens)


def _naive_greedy(model: Transformer, prompt: list[int], steps: int, length: int = 64) -> list[int]:
    """Greedy decoding by rerunning the whole (causal, so zero-padded on the right) buffer each step: no cache."""
    buffer = jnp.zeros((1, length), jnp.int32).at[0, :len(prompt)].set(jnp.asarray(prompt))
    next_token = nnx.jit(lambda model, buffer, end: jnp.argmax(model(buffer)[0][0, end - 1]).astype(jnp.int32))
    for end in range(len(prompt), len(prompt) + steps):
        buffer = buffer.at[0, end].set(next_token(model, buffer, end))
    return np.asarray(buffer[0, len(prompt):len(prompt) + steps]).tolist()


@pytest.mark.parametrize("scan_layers", [True, False])
def test_greedy_equals_transformers_generate(scan_layers):
    config = TINY.replace(scan_layers=scan_layers, remat_policy="none")
    hf = hf_model(config, seed=5)
    ours = Sampler(ours_from_hf(config, hf))
    for prompt, completion in zip(_prompts(config), ours.generate_tokens(_prompts(config), GREEDY)):
        assert completion.tokens == hf_greedy(hf, prompt, GREEDY.max_new_tokens)
        assert completion.finish_reason == "length"


@pytest.fixture(scope="module")
def qlora_model():
    """NF4 frozen linears, unrolled layers, LoRA adapters with non-zero B (so they change the outputs)."""
    config = TINY.replace(head_dim=32, attn_storage="nf4", mlp_storage="nf4", lora_rank=4, scan_layers=False,
                          remat_policy="none")  # NF4 needs input widths divisible by 64
    model = ours_from_hf(config, hf_model(config, seed=6))
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, LoRAParam) and path[-1] == "b":
            variable.set_value(0.3 * jax.random.normal(jax.random.key(len(path)), variable.shape))
    return model


def test_batch_of_different_lengths_equals_each_prompt_alone_on_nf4_lora(qlora_model):
    sampler = Sampler(qlora_model)
    prompts = _prompts(qlora_model.config)
    batch = sampler.generate_tokens(prompts, GREEDY)
    for prompt, together in zip(prompts, batch):
        alone = sampler.generate_tokens([prompt], GREEDY)[0]
        assert together.tokens == alone.tokens
        assert together.tokens == _naive_greedy(qlora_model, prompt, GREEDY.max_new_tokens)


def test_generation_on_a_mesh_equals_one_device():
    config = TINY.replace(remat_policy="none")
    model = ours_from_hf(config, hf_model(config, seed=7))
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "tensor"))
    prompts = _prompts(config, lengths=(4, 11, 7))  # three rows: padded to a multiple of the data axis
    on_mesh = Sampler(model, mesh=mesh).generate_tokens(prompts, GREEDY)
    alone = Sampler(model).generate_tokens(prompts, GREEDY)
    assert [c.tokens for c in on_mesh] == [c.tokens for c in alone]


def test_truncate_at_stop_is_multiples_rule():
    stops = ["\ndefmodule", "\ndefp", "\ndef ", "\n#", "\n\n"]
    assert truncate_at_stop("x + 1\n  end\nend\n\ndefmodule Foo", stops) == "x + 1\n  end\nend"
    # The earliest occurrence wins, whichever stop is listed first.
    assert truncate_at_stop("a\n# note\ndefp b", ["\ndefp", "\n#"]) == "a"
    assert truncate_at_stop("\n\nfoo", stops) == ""
    assert truncate_at_stop("no stop here", stops) == "no stop here"
    assert truncate_at_stop("abc", []) == "abc"


def test_stop_sequences_cut_exactly_where_multiple_would_and_stop_early():
    config = TINY.replace(remat_policy="none")
    sampler = Sampler(ours_from_hf(config, hf_model(config, seed=8)))
    prompts = _prompts(config)
    full = sampler.generate_tokens(prompts, GREEDY, decode=_decode)
    text = _decode(full[1].tokens)
    stops = [text[12:14], text[6:9]]  # two stops that occur in row 1; the earlier one must win
    stopped = sampler.generate_tokens(prompts, GREEDY, stop=stops, decode=_decode)
    for unstopped, completion in zip(full, stopped):
        assert completion.text == truncate_at_stop(_decode(unstopped.tokens), stops)
    assert stopped[1].text == text[:6] and stopped[1].finish_reason == "stop"
    assert len(stopped[1].tokens) < GREEDY.max_new_tokens  # the row stopped generating


def test_eos_ends_a_row_and_is_not_part_of_the_completion():
    config = TINY.replace(remat_policy="none")
    sampler = Sampler(ours_from_hf(config, hf_model(config, seed=9)))
    prompt = _prompts(config)[:1]
    full = sampler.generate_tokens(prompt, GREEDY)[0].tokens
    eos = full[10]
    ended = sampler.generate_tokens(prompt, GREEDY, eos_id=eos)[0]
    assert ended.tokens == full[:full.index(eos)] and ended.finish_reason == "eos"


def test_stream_receives_each_rows_new_tokens_after_every_device_call():
    config = TINY.replace(remat_policy="none")
    sampler = Sampler(ours_from_hf(config, hf_model(config, seed=9)))
    prompts = _prompts(config)
    calls = []
    completions = sampler.generate_tokens(prompts, GREEDY, stream=calls.append)
    # 20 tokens at 8 decode steps per call: the prefill's first token, then 8, 8 and 3, for every row.
    assert [[len(new) for new in call] for call in calls] == [[1] * 3, [8] * 3, [8] * 3, [3] * 3]
    for row, completion in enumerate(completions):
        assert [token for call in calls for token in call[row]] == completion.tokens

    eos = completions[0].tokens[10]
    calls = []
    ended = sampler.generate_tokens(prompts, GREEDY, eos_id=eos, stream=calls.append)
    assert ended[0].finish_reason == "eos" and any(c.finish_reason == "length" for c in ended)
    for row, completion in enumerate(ended):  # EOS and what followed it are never streamed
        assert [token for call in calls for token in call[row]] == completion.tokens
    assert len(calls) == 4 and calls[-1][0] == []  # a finished row gets no more tokens while the others go on


def test_text_stream_writes_text_as_it_comes_and_holds_back_a_split_character():
    tokenizer = load_tekken()
    tokens = tokenizer.encode("défmodule 🧪 ok", bos=False, eos=False)  # the emoji's 4 bytes span 3 tokens
    assert tokenizer.decode(tokens[:4]).endswith("\ufffd")
    out = io.StringIO()
    stream = TextStream(tokenizer.decode, out)
    written = []
    for piece in (tokens[:2], tokens[2:4], tokens[4:5], tokens[5:]):
        stream([piece])
        written.append(out.getvalue())
    stream.close()
    assert written == ["déf", "défmodule ", "défmodule ", "défmodule 🧪 ok"]
    assert out.getvalue() == "défmodule 🧪 ok"

    cut = TextStream(tokenizer.decode, io.StringIO())  # a completion that ends inside a character shows it as is
    cut([tokens[:4]])
    cut.close()
    assert cut.out.getvalue() == tokenizer.decode(tokens[:4])


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    config = TINY.replace(remat_policy="none")
    sampler = Sampler(ours_from_hf(config, hf_model(config, seed=10)))
    prompts = _prompts(config)
    hot = SamplingConfig(max_new_tokens=12, temperature=1.5, steps_per_call=4, prompt_bucket=16, seed=3)
    first, again = sampler.generate_tokens(prompts, hot), sampler.generate_tokens(prompts, hot)
    other = sampler.generate_tokens(prompts, SamplingConfig(**{**hot.__dict__, "seed": 4}))
    assert [c.tokens for c in first] == [c.tokens for c in again]
    assert [c.tokens for c in first] != [c.tokens for c in other]
    top1 = sampler.generate_tokens(prompts, SamplingConfig(**{**hot.__dict__, "top_k": 1, "max_new_tokens": 20}))
    assert [c.tokens for c in top1] == [c.tokens for c in sampler.generate_tokens(prompts, GREEDY)]


def test_sample_logits_respects_temperature_top_k_and_top_p():
    logits = jnp.log(jnp.tile(jnp.array([[0.5, 0.25, 0.15, 0.07, 0.03]]), (2000, 1)))  # 2000 independent rows
    draws = lambda **kw: np.asarray(sample_logits(logits, jax.random.key(0), **kw))
    plain = draws(temperature=1.0, top_k=0, top_p=1.0)
    np.testing.assert_allclose(np.bincount(plain, minlength=5) / 2000, [0.5, 0.25, 0.15, 0.07, 0.03], atol=0.04)
    assert set(draws(temperature=1.0, top_k=2, top_p=1.0)) == {0, 1}
    assert set(draws(temperature=1.0, top_k=0, top_p=0.8)) == {0, 1, 2}  # 0.5 + 0.25 < 0.8 <= 0.9
    assert set(draws(temperature=1.0, top_k=0, top_p=0.3)) == {0}
    assert set(np.asarray(sample_logits(logits, jax.random.key(0), 0.0, 0, 1.0))) == {0}


def test_bad_sampling_settings_are_clear_errors():
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingConfig(temperature=-1.0)
    model = Transformer(TINY.replace(max_position_embeddings=32), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exceed the model's 32 positions"):
        Sampler(model).generate_tokens([[1, 2, 3]], GREEDY)
    with pytest.raises(ValueError, match="need a `decode` function"):
        Sampler(model).generate_tokens([[1, 2, 3]], SamplingConfig(max_new_tokens=2), stop=["x"])
