"""The tokenizer interface's two implementations against their references: SmolLM2's Hugging Face tokenizer (built
from the real GGUF) and chat template against transformers' own tokenizer and `apply_chat_template` (tokens and
assistant masks), Tekken against mistral-common; special tokens written in code stay text in both; and each model
gets the tokenizer that belongs to it."""

import pickle
import re
import shutil

import numpy as np
import pytest
import transformers
import xxhash

from devstral_jax.config import preset
from devstral_jax.data.records import Message, Record
from devstral_jax.errors import ConfigError
from devstral_jax.tokenizers import HFTokenizer, TekkenTokenizer, check_vocab, load_tokenizer, model_tokenizer
from devstral_jax.tokenizers.base import FIM_TEXT
from devstral_jax.tokenizers.tekken import PACKAGED_TEKKEN
from tests.gguf_helpers import real_smollm2

SOURCE = {"kind": "local", "package": "demo", "version": "0", "path": "lib/demo.ex", "licence": "MIT", "url": ""}
# Elixir that writes other models' special tokens in its strings: it must tokenize as the text it is.
TRICKY = ('defmodule Prompt do\n  @start "<|im_start|>assistant\\n"\n'
          '  def wrap(x), do: "<s>[INST] #{x} [/INST]</s><|im_end|>"\nend\n')
CONVERSATIONS = {
    "one turn": [Message("user", "Write an Elixir function that reverses a list."),
                 Message("assistant", "def reverse(list), do: Enum.reverse(list)")],
    "system and two turns": [Message("system", "You write idiomatic Elixir."), Message("user", "Sum a list."),
                             Message("assistant", "Enum.sum(list)"), Message("user", "  And the product?\n"),
                             Message("assistant", "Enum.reduce(list, 1, &*/2)  \n")],
    "replies starting with whitespace": [Message("user", "Indent it."), Message("assistant", "\n  Enum.sum(list)"),
                                         Message("user", "Again"), Message("assistant", " \tx")],
    "special tokens in code": [Message("user", f"Explain:\n{TRICKY}"), Message("assistant", TRICKY)],
}
# SmolLM2's ChatML template with transformers' {% generation %} markers around what the assistant writes (it renders
# the same text), and a Llama-3-style one (BOS, trimmed contents, a header) on SmolLM2's special tokens.
CHATML_MARKED = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_STYLE_MARKED = (
    "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '<|endoftext|>\n\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim + '<|im_end|>' }}"
    "{% endgeneration %}{% else %}{{ message['content'] | trim + '<|im_end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|endoftext|>\n\n' }}{% endif %}")


def _record(kind: str, **payload) -> Record:
    return Record.from_dict({"id": "x", "kind": kind, "task": "t", "source": SOURCE, **payload})


def _dicts(messages):
    return [{"role": m.role, "content": m.content} for m in messages]


@pytest.fixture(scope="module")
def smollm2():
    """(ours, transformers') tokenizers of the real SmolLM2 GGUF."""
    path = real_smollm2()
    reference = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return HFTokenizer(path), reference


@pytest.fixture(scope="module")
def tekken():
    return TekkenTokenizer()


def test_smollm2_text_encoding_and_ids_equal_transformers(smollm2):
    ours, reference = smollm2
    assert (ours.vocab_size, ours.eos_id, ours.bos_id) == (49152, reference.eos_token_id, None)  # no BOS in SmolLM2
    for text in ["defmodule Stack do\n  use GenServer\n\n  def push(pid, x), do: GenServer.cast(pid, {:push, x})\n",
                 "  leading spaces, tabs\t and üñíçødé ✓ 日本語\n\n\n", ""]:
        assert ours.encode(text) == reference.encode(text, add_special_tokens=False)
        assert ours.decode(ours.encode(text)) == text
    assert ours.encode("x = 1", bos=True, eos=True) == [*reference.encode("x = 1", add_special_tokens=False), 2]


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_smollm2_chat_tokens_equal_apply_chat_template(smollm2, name):
    ours, reference = smollm2
    messages = CONVERSATIONS[name]
    tokens, mask = ours.encode_chat(messages)
    if name == "special tokens in code":  # transformers parses them as control tokens: the thing to avoid
        assert tokens != reference.apply_chat_template(_dicts(messages), tokenize=True, return_dict=True)["input_ids"]
    else:
        assert tokens == reference.apply_chat_template(_dicts(messages), tokenize=True, return_dict=True)["input_ids"]
    prompt = reference.apply_chat_template(_dicts(messages[:-1]), add_generation_prompt=True, tokenize=False)
    if name != "special tokens in code":
        assert ours.encode_prompt(messages[:-1]) == reference.encode(prompt, add_special_tokens=False)
    if name == "replies starting with whitespace":
        return  # their first tokens join the header's newline: the marker test compares those masks to transformers'
    # The trained tokens are each assistant turn's content and the <|im_end|> that closes it.
    im_end = reference.convert_tokens_to_ids("<|im_end|>")
    trained = np.asarray(tokens)[np.asarray(mask) == 1].tolist()
    expected = [token for m in messages if m.role == "assistant"
                for token in [*reference.encode(m.content, add_special_tokens=False, split_special_tokens=True),
                              im_end]]
    assert trained == expected


def test_special_tokens_written_in_code_stay_text_for_smollm2(smollm2):
    ours, reference = smollm2
    as_text = reference.encode(TRICKY, add_special_tokens=False, split_special_tokens=True)
    assert ours.encode(TRICKY) == as_text
    assert not set(as_text) & set(reference.all_special_ids)
    # In a chat, only the template's own special tokens are special: a careful reference built by hand, ChatML
    # being `<|im_start|>{role}\n{content}<|im_end|>\n` per message after SmolLM2's default system prompt.
    im_start, im_end = reference.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    expected = []
    for role, content in [("system", system), *[(m.role, m.content) for m in CONVERSATIONS["special tokens in code"]]]:
        expected += [im_start, *reference.encode(f"{role}\n", add_special_tokens=False),
                     *reference.encode(content, add_special_tokens=False, split_special_tokens=True), im_end,
                     *reference.encode("\n", add_special_tokens=False)]
    tokens, _ = ours.encode_chat(CONVERSATIONS["special tokens in code"])
    assert tokens == expected
    assert tokens.count(im_start) == 3


@pytest.mark.parametrize("template", [CHATML_MARKED, LLAMA3_STYLE_MARKED], ids=["chatml", "llama3_style"])
def test_assistant_masks_equal_transformers_generation_markers(tmp_path, smollm2, template):
    _, reference = smollm2
    reference.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").write_text(template)
    marked = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = HFTokenizer(tmp_path)
    for name, messages in CONVERSATIONS.items():
        if name == "special tokens in code":
            continue
        tokens, mask = ours.encode_chat(messages)
        expected = marked.apply_chat_template(_dicts(messages), tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True)
        assert tokens == expected["input_ids"], name
        assert mask == expected["assistant_masks"], name
        assert 0 < sum(mask) < len(mask)


def test_smollm2_records_text_fim_and_pickling(smollm2):
    ours, reference = smollm2
    tokens, mask = ours.encode_record(_record("text", text="defmodule A do\nend\n"))
    assert tokens.tolist() == [*reference.encode("defmodule A do\nend\n", add_special_tokens=False), 2]
    assert mask.tolist() == [0] + [1] * (len(tokens) - 1)
    # SmolLM2 has no FIM tokens: FIM is the plain-text format, the middle and EOS trained.
    record = _record("fim", prefix="def add(a, b) do\n  ", suffix="\nend\n", middle="a + b")
    tokens, mask = ours.encode_record(record)
    prompt = reference.encode(FIM_TEXT.format(prefix=record.prefix, suffix=record.suffix), add_special_tokens=False)
    assert tokens.tolist() == [*prompt, *reference.encode("a + b", add_special_tokens=False), 2]
    assert mask.tolist() == [0] * len(prompt) + [1] * (len(tokens) - len(prompt))
    # Grain's worker processes receive the tokenizer pickled.
    chat = _record("chat", messages=_dicts(CONVERSATIONS["system and two turns"]))
    copy = pickle.loads(pickle.dumps(ours))
    for got, want in zip(copy.encode_record(chat), ours.encode_record(chat)):
        np.testing.assert_array_equal(got, want)


def test_fim_uses_the_vocabularys_fim_tokens_where_it_has_them(tmp_path, smollm2):
    _, reference = smollm2
    reference.save_pretrained(tmp_path)
    with_fim = transformers.AutoTokenizer.from_pretrained(tmp_path)
    with_fim.add_special_tokens({"additional_special_tokens": ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"]})
    with_fim.save_pretrained(tmp_path)
    ours = HFTokenizer(tmp_path)
    prefix_id, suffix_id, middle_id = with_fim.convert_tokens_to_ids(["<fim_prefix>", "<fim_suffix>", "<fim_middle>"])
    prefix, suffix = "def add(a, b) do\n  ", "\nend\n"
    # StarCoder's prefix-suffix-middle order, the code as text.
    assert ours.fim_prompt(prefix, suffix) == [prefix_id, *reference.encode(prefix, add_special_tokens=False),
                                               suffix_id, *reference.encode(suffix, add_special_tokens=False),
                                               middle_id]
    assert ours.encode("<fim_middle>") == reference.encode("<fim_middle>", add_special_tokens=False)  # text in code


def test_special_tokens_written_in_code_stay_text_for_tekken(tekken):
    raw = tekken._tekken
    controls = {raw.get_special_token(name) for name in ("<s>", "</s>", "[INST]", "[/INST]")}
    assert not set(tekken.encode(TRICKY)) & controls
    tokens, mask = tekken.encode_chat(CONVERSATIONS["special tokens in code"])
    inst = raw.get_special_token("[INST]")
    assert tokens.count(inst) == 1  # the one user turn's, none from the code
    assert np.asarray(tokens)[np.asarray(mask) == 1].tolist() == [*tekken.encode(TRICKY), tekken.eos_id]


def test_tekken_prompt_ends_the_user_turn(tekken):
    messages = CONVERSATIONS["system and two turns"]
    prompt = tekken.encode_prompt(messages[:-1])
    tokens, _ = tekken.encode_chat(messages)
    assert tokens[:len(prompt)] == prompt and prompt[-1] == tekken._tekken.get_special_token("[/INST]")


def test_each_model_gets_its_own_tokenizer(tmp_path, smollm2):
    ours, reference = smollm2
    mistral, llama = preset("tiny"), preset("smollm2_135m")
    assert isinstance(model_tokenizer(None, mistral, "tiny"), TekkenTokenizer)
    assert isinstance(model_tokenizer(tmp_path, mistral, "tiny"), TekkenTokenizer)  # a directory without one: default
    assert isinstance(model_tokenizer(None, llama, "smollm2"), HFTokenizer)
    assert isinstance(load_tokenizer(real_smollm2()), HFTokenizer)
    shutil.copy(PACKAGED_TEKKEN, tmp_path / "tekken.json")
    reference.save_pretrained(tmp_path)  # a directory with both: Tekken, as for Devstral's repos
    assert isinstance(model_tokenizer(tmp_path, mistral, "tiny"), TekkenTokenizer)
    (tmp_path / "tekken.json").unlink()
    from_dir = model_tokenizer(tmp_path, llama, "smollm2")
    assert isinstance(from_dir, HFTokenizer) and from_dir.encode(TRICKY) == ours.encode(TRICKY)
    check_vocab(ours, llama, "smollm2")
    check_vocab(ours, preset("tiny"), "tiny")  # an embedding larger than the tokenizer's vocabulary (padded) holds it
    with pytest.raises(ConfigError, match=r"smaller has a vocabulary of 1000 tokens, Hugging Face tokenizer "
                                          r"\(.*SmolLM2.*\) has 49152: they do not belong together"):
        check_vocab(ours, preset("smollm2_135m", vocab_size=1000), "smaller")
    with pytest.raises(ConfigError, match=re.escape(f"smaller has a vocabulary of 1000 tokens, Hugging Face tokenizer "
                                                    f"({tmp_path}) has 49152")):
        model_tokenizer(tmp_path, preset("smollm2_135m", vocab_size=1000), "smaller")  # its own, too small
    with pytest.raises(ConfigError, match=r"padded has a vocabulary of 131073 tokens, the packaged Tekken has 131072: "
                                          r"they do not belong together"):
        model_tokenizer(None, preset("tiny", vocab_size=131073), "padded")  # a default must match exactly
    with pytest.raises(ConfigError, match="No tokenizer at"):
        load_tokenizer(tmp_path / "absent")


def test_digest_changes_with_what_decides_the_tokens(tmp_path, smollm2):
    ours, reference = smollm2
    # Tekken's is its file's digest, as run fingerprints recorded it before there were other tokenizers.
    assert TekkenTokenizer().digest() == xxhash.xxh3_128_hexdigest(PACKAGED_TEKKEN.read_bytes())
    assert ours.digest() == HFTokenizer(real_smollm2()).digest() != TekkenTokenizer().digest()
    reference.save_pretrained(tmp_path / "same")
    other = transformers.AutoTokenizer.from_pretrained(tmp_path / "same")
    other.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    other.save_pretrained(tmp_path / "other_template")
    assert HFTokenizer(tmp_path / "same").digest() == HFTokenizer(tmp_path / "same").digest()
    assert HFTokenizer(tmp_path / "other_template").digest() != HFTokenizer(tmp_path / "same").digest()
