"""The tokenizer interface: what training, sampling, evaluation and export ask of a model's tokenizer.

Two implementations (tekken.py: mistral-common's Tekken and Devstral's instruct encoding, for Mistral models;
hf.py: Hugging Face `tokenizers` and the model's Jinja chat template, for the others) meet one contract:

- `encode(text)` treats text as text: special-token strings written in it (`<s>`, `[INST]`, `<|im_start|>`
  inside an Elixir string) become ordinary tokens, never control tokens;
- `encode_record(record)` gives `(tokens, loss_mask)`, the mask 1 on the tokens the model is trained to
  produce: all of a `text` record after its first token, a `chat` record's assistant turns (with the token
  that ends each turn), a `fim` record's middle (with end-of-sequence).
"""

from __future__ import annotations

import abc
from typing import Sequence

import numpy as np

from devstral_jax.data.records import Message, Record

# Fill-in-the-middle for a tokenizer without FIM tokens: a plain-text format, Code Llama's markers spelled out as
# text. The model reads the prefix and suffix, then writes the middle and its end-of-sequence token.
FIM_TEXT = "<PRE> {prefix} <SUF>{suffix} <MID>"


class Tokenizer(abc.ABC):
    """A model's tokenizer: text <-> token ids, chat and FIM formats, and records -> (tokens, loss mask)."""

    name: str  # what it is and where it came from, for messages
    bos_id: int | None  # the token that starts a document, None when the model's documents start with none
    eos_id: int  # the token that ends a document or an assistant turn: generation stops there
    vocab_size: int  # token ids are < vocab_size, special tokens included
    file_name: str  # the file a model directory keeps it in

    @abc.abstractmethod
    def digest(self) -> str:
        """A digest of everything that decides its tokens (vocabulary, merges, chat template): a run's fingerprint
        holds it, so a resume with another tokenizer is refused."""

    @abc.abstractmethod
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """`text` as text (special-token strings in it stay text), with BOS (if the model has one) and EOS."""

    @abc.abstractmethod
    def decode(self, tokens: Sequence[int]) -> str:
        """The text of `tokens`, special tokens left out."""

    @abc.abstractmethod
    def encode_chat(self, messages: Sequence[Message]) -> tuple[list[int], list[int]]:
        """A whole conversation in the model's chat format, and a mask of its assistant turns' tokens."""

    @abc.abstractmethod
    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        """A conversation ending in a user turn, followed by what makes the model answer as the assistant."""

    @abc.abstractmethod
    def fim_prompt(self, prefix: str, suffix: str) -> list[int]:
        """What precedes the middle of a fill-in-the-middle example."""

    def encode_record(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int32 [n], loss_mask int32 [n]): mask[i] = 1 where token i is a training target."""
        if record.kind == "text":
            tokens = self.encode(record.text, bos=True, eos=True)
            mask = [0] + [1] * (len(tokens) - 1)
        elif record.kind == "chat":
            tokens, mask = self.encode_chat(record.messages)
        else:
            prompt, middle = self.fim_prompt(record.prefix, record.suffix), self.encode(record.middle, eos=True)
            tokens, mask = [*prompt, *middle], [0] * len(prompt) + [1] * len(middle)
        return np.asarray(tokens, np.int32), np.asarray(mask, np.int32)
