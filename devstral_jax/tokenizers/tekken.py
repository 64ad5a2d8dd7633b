"""Mistral models' tokenizer: Tekken (131,072 tokens) through mistral-common, with Devstral's instruct and FIM
encodings, and the Tekken file helpers.

mistral-common is the encoder Mistral supports (chat templates for Mistral models are unreliable). Tekken
never parses special tokens out of text, so `[INST]` or `</s>` written in code stays text. The file ships inside
the `mistral-common` package, so no hub access is needed; a Devstral checkout's own `tekken.json` can be passed
instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import mistral_common
import xxhash
from mistral_common.protocol.fim.request import FIMRequest
from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
from mistral_common.protocol.instruct.request import InstructRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from devstral_jax.data.records import Message
from devstral_jax.errors import ConfigError
from devstral_jax.tokenizers.base import Tokenizer

PACKAGED_TEKKEN = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"


def tekken_file(path: str | os.PathLike | None = None) -> Path:
    """The Tekken file `path` names (a `tekken.json` or a model directory holding one); default: the packaged one."""
    path = Path(path) if path else PACKAGED_TEKKEN
    if path.is_dir():
        path = path / "tekken.json"
    if not path.is_file():
        raise ConfigError(f"No Tekken tokenizer at {path}: pass a tekken.json or a directory holding one.")
    return path


def load_tekken(path: str | os.PathLike | None = None) -> Tekkenizer:
    """Loads Tekken from `path` (a `tekken.json` or a model directory holding one); default: the packaged file."""
    return Tekkenizer.from_file(str(tekken_file(path)))


def tekken_config(path: str | os.PathLike | None = None) -> dict:
    """The `config` section of a Tekken file (version, default_vocab_size, ...), read without building the
    tokenizer (which takes seconds)."""
    with open(tekken_file(path)) as f:
        return json.load(f)["config"]


class TekkenTokenizer(Tokenizer):
    """Tekken from `path` (a tekken.json or a directory holding one); default: the file packaged with mistral-common."""

    file_name = "tekken.json"

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = tekken_file(path)
        self.name = "the packaged Tekken" if not path else f"Tekken ({self.path})"
        self._instruct = MistralTokenizer.from_file(str(self.path)).instruct_tokenizer
        self._tekken = self._instruct.tokenizer
        self.bos_id, self.eos_id = self._tekken.bos_id, self._tekken.eos_id
        self.vocab_size = self._tekken.n_words

    def digest(self) -> str:
        return xxhash.xxh3_128_hexdigest(self.path.read_bytes())

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self._tekken.encode(text, bos=bos, eos=eos)

    def decode(self, tokens: Sequence[int]) -> str:
        return self._tekken.decode(list(tokens))

    def encode_chat(self, messages: Sequence[Message]) -> tuple[list[int], list[int]]:
        request = _request(messages)
        tokens = self._instruct.encode_instruct(request).tokens
        mask = [0] * len(tokens)
        # Find each assistant turn's tokens (content + </s>) in order; mark them as targets.
        start = 0
        turns = request.messages
        users = [i for i, m in enumerate(turns) if isinstance(m, UserMessage)]
        last_user = users[-1] if users else -1
        for i, message in enumerate(turns):
            if not isinstance(message, AssistantMessage):
                continue
            reply = self._instruct.encode_assistant_message(message, is_before_last_user_message=i < last_user)
            at = _find(tokens, reply, start)
            if at < 0:
                raise ValueError(f"Assistant turn {i} not found in its conversation's Tekken encoding.")
            mask[at:at + len(reply)] = [1] * len(reply)
            start = at + len(reply)
        return tokens, mask

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        return self._instruct.encode_instruct(_request(messages)).tokens

    def fim_prompt(self, prefix: str, suffix: str) -> list[int]:
        return self._instruct.encode_fim(FIMRequest(prompt=prefix, suffix=suffix)).tokens


def _request(messages: Sequence[Message]) -> InstructRequest:
    """mistral-common's request: system messages joined into its system prompt, the turns in order."""
    system = [m.content for m in messages if m.role == "system"]
    turns = [UserMessage(content=m.content) if m.role == "user" else AssistantMessage(content=m.content)
             for m in messages if m.role != "system"]
    return InstructRequest(messages=turns, system_prompt="\n\n".join(system) or None)


def _find(haystack: list[int], needle: list[int], start: int) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i:i + len(needle)] == needle:
            return i
    return -1
