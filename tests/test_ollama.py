"""The Modelfile written beside a GGUF: it parses under Ollama's documented grammar, points at the GGUF, and its
TEMPLATE (rendered as Go's text/template renders it, with the data Ollama passes) tokenizes, through llama.cpp
on that GGUF, to mistral-common's instruct encoding of the same conversation, for v3 and v7 Tekken files."""

import json

import llama_cpp
import pytest

from devstral_jax.config import preset
from devstral_jax.hf.ollama import modelfile_path, save_modelfile
from devstral_jax.tokenizers.tekken import PACKAGED_TEKKEN
from tests.ollama_helpers import parameter_value, parse_modelfile, render_go_template
from tests.serving_helpers import CONVERSATION, instruct_tokens, random_gguf

CONFIG = preset("tiny", num_layers=1)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    """A one-layer random model's F16 GGUF (the Modelfile needs a file to name; llama.cpp reads its vocabulary)."""
    path = tmp_path_factory.mktemp("ollama") / "devstral-elixir-f16.gguf"
    random_gguf(path, CONFIG, seed=3)
    return path


def _ollama_data(conversation: list[dict[str, str]]) -> dict:
    """What Ollama passes a chat template: every message (Role, Content) and the system messages joined."""
    return {"System": "\n\n".join(m["content"] for m in conversation if m["role"] == "system"),
            "Messages": [{"Role": m["role"], "Content": m["content"]} for m in conversation]}


@pytest.mark.parametrize("version", ["v3", "v7"])
def test_modelfile_parses_and_its_template_renders_the_instruct_format(gguf, tmp_path, version):
    tekken = tmp_path / "tekken.json"
    tekken_json = json.loads(PACKAGED_TEKKEN.read_text())
    tekken_json["config"]["version"] = version  # the same vocabulary, the instruct format of `version`
    tekken.write_text(json.dumps(tekken_json))
    modelfile = save_modelfile(gguf, tekken)
    assert modelfile == modelfile_path(gguf) and modelfile.endswith("devstral-elixir-f16.Modelfile")

    commands = parse_modelfile(open(modelfile).read())
    arguments = {}
    for name, argument in commands:
        arguments.setdefault(name, []).append(argument)
    assert arguments["FROM"] == ["./devstral-elixir-f16.gguf"] and (gguf.parent / "devstral-elixir-f16.gguf").is_file()
    parameters = [parameter_value(argument) for argument in arguments["PARAMETER"]]
    assert {value for key, value in parameters if key == "stop"} == {"</s>", "[INST]"}
    assert dict(p for p in parameters if p[0] != "stop") == {"temperature": 0.15, "num_ctx": 8192,
                                                             "repeat_penalty": 1.0}

    (template,) = arguments["TEMPLATE"]
    vocabulary = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    try:
        for conversation in (CONVERSATION, [m for m in CONVERSATION if m["role"] != "system"], CONVERSATION[:2]):
            prompt = render_go_template(template, _ollama_data(conversation))
            # Ollama adds BOS (the GGUF's add_bos_token) and reads control tokens in the rendered prompt.
            tokens = vocabulary.tokenize(prompt.encode(), add_bos=True, special=True)
            assert tokens == instruct_tokens(tekken, conversation), (version, prompt)
    finally:
        vocabulary.close()
