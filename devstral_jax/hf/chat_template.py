"""The instruct format as the serving engines' templates: Jinja (transformers, vLLM, TGI, llama.cpp) and Go
(Ollama), each rendering what mistral-common's `encode_instruct` encodes for the same conversation.

The format depends on the Tekken file's version: v3 (Mistral Nemo's `tekken_240911.json`, packaged with
mistral-common) prepends the system prompt to the last user turn, `[INST]{system}\\n\\n{user}[/INST]`; v7 and
later (Devstral's own `tekken.json`) put it first, in `[SYSTEM_PROMPT]...[/SYSTEM_PROMPT]`. Assistant turns end
with `</s>`; BOS is the engine's to add (the GGUF says `add_bos_token`).

The Jinja template is mistral-common's own (what transformers attaches when it converts Tekken). One quote is
changed: `'[INST]'` becomes `"[INST]"`, the same string in Jinja, because llama.cpp's fallback for engines not
running Jinja (llama-cli, `llama-server --no-jinja`) recognises a v3 Tekken template by `"[INST]"` and would
otherwise pick mistral-v3 (spaces around the content) rather than mistral-v3-tekken.
"""

from __future__ import annotations

import os

from mistral_common.integrations.chat_templates.chat_templates import convert_tokenizer_to_chat_template
from mistral_common.tokens.tokenizers.base import TokenizerVersion

from devstral_jax.errors import ExportError
from devstral_jax.tokenizers.tekken import tekken_config


def tekken_version(tekken_file: str | os.PathLike) -> TokenizerVersion:
    """The instruct-format version a `tekken.json` declares (v3, v7, v11, v13...)."""
    return TokenizerVersion(tekken_config(tekken_file)["version"])


def jinja_template(tekken_file: str | os.PathLike) -> str:
    """mistral-common's chat template for this Tekken, as llama.cpp's fallback also reads it (module docstring)."""
    template = convert_tokenizer_to_chat_template(str(tekken_file))
    if tekken_version(tekken_file) == TokenizerVersion.v3:
        template = template.replace("'[INST]'", '"[INST]"')
    return template


# Go text/template, as Ollama renders it: `.Messages` (Role, Content) and `.System`, all system messages joined
# by a blank line. The index of the last user message is found first: v3 puts the system prompt there.
_OLLAMA_V3 = """\
{{- $lastUser := -1 }}
{{- range $i, $m := .Messages }}{{ if eq $m.Role "user" }}{{ $lastUser = $i }}{{ end }}{{ end }}
{{- range $i, $m := .Messages }}
{{- if eq $m.Role "user" }}[INST]{{ if and $.System (eq $i $lastUser) }}{{ $.System }}

{{ end }}{{ $m.Content }}[/INST]
{{- else if eq $m.Role "assistant" }}{{ $m.Content }}</s>
{{- end }}
{{- end }}"""

_OLLAMA_V7 = """\
{{- range $i, $m := .Messages }}
{{- if eq $m.Role "system" }}[SYSTEM_PROMPT]{{ $m.Content }}[/SYSTEM_PROMPT]
{{- else if eq $m.Role "user" }}[INST]{{ $m.Content }}[/INST]
{{- else if eq $m.Role "assistant" }}{{ $m.Content }}</s>
{{- end }}
{{- end }}"""


def ollama_template(tekken_file: str | os.PathLike) -> str:
    """The Modelfile TEMPLATE for this Tekken's instruct format (system, user and assistant messages)."""
    version = tekken_version(tekken_file)
    if version == TokenizerVersion.v3:
        return _OLLAMA_V3
    if version in (TokenizerVersion.v7, TokenizerVersion.v11, TokenizerVersion.v13):
        return _OLLAMA_V7
    raise ExportError(f"{tekken_file} is a {version.value} Tekken; the Ollama template covers v3, v7, v11 and v13.")
