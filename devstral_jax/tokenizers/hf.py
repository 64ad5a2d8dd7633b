"""Hugging Face tokenizers with their model's Jinja chat template (SmolLM2, Llama 3.x and other non-Mistral models).

transformers loads the tokenizer (from a model directory's tokenizer.json + tokenizer_config.json, or builds it
from a GGUF file's metadata) and renders the chat template exactly as its `apply_chat_template` does. Two things
differ from `apply_chat_template`, both so that training sees what the model should learn:

- Message contents stay text. Every special token string in a message (`<|im_start|>` in an Elixir string)
  is swapped for a private-use character before rendering and swapped back after, so only the template's own
  special tokens are tokenized as such. The rendered chat is split at those and each text run between them is
  tokenized on its own, as `tokenizers` itself tokenizes the text between special tokens, so a conversation
  without special-token strings in its messages gets exactly transformers' tokens.
- The assistant turns are found by rendering incrementally: turn i spans from the end of the conversation
  before it rendered with the generation prompt to the end of the last special token the template writes in
  it (`<|im_end|>`, `<|eot_id|>`); tokens overlapping a turn are marked, as transformers'
  `return_assistant_tokens_mask` marks the tokens overlapping `{% generation %}` blocks.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Sequence

import jinja2
import tokenizers
import xxhash

from devstral_jax.data.records import Message
from devstral_jax.errors import ConfigError, DataError
from devstral_jax.tokenizers.base import FIM_TEXT, Tokenizer

if TYPE_CHECKING:
    import transformers

_PRIVATE_USE = 0xF0000  # special token k hides in a message as chr(_PRIVATE_USE + k) (Unicode plane 15)
FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")  # StarCoder's, where a vocabulary has them


class HFTokenizer(Tokenizer):
    """The tokenizer of a model directory (tokenizer.json + tokenizer_config.json) or of a GGUF file."""

    file_name = "tokenizer.json"

    def __init__(self, source: str | os.PathLike):
        self.source = os.fspath(source)
        self.name = f"Hugging Face tokenizer ({self.source})"
        loaded = transformers_tokenizer(self.source)
        self._text = tokenizers.Tokenizer.from_str(loaded.backend_tokenizer.to_str())
        self._text.encode_special_tokens = True  # text is text: special-token strings in it are not parsed
        self._chat_template = loaded.chat_template if isinstance(loaded.chat_template, str) else None
        self._template_variables = dict(loaded.special_tokens_map)  # bos_token, eos_token...: as transformers passes
        self._controls = {token.content: id for id, token in loaded.added_tokens_decoder.items() if token.special}
        longest_first = sorted(self._controls, key=len, reverse=True)
        self._control_re = re.compile("(" + ("|".join(map(re.escape, longest_first)) or "(?!)") + ")")
        self._hidden = {token: chr(_PRIVATE_USE + k) for k, token in enumerate(longest_first)}
        self._shown = {ord(char): token for token, char in self._hidden.items()}
        if loaded.eos_token_id is None:
            raise ConfigError(f"{self.name} has no end-of-sequence token.")
        self.eos_id = loaded.eos_token_id
        adds_bos = loaded.backend_tokenizer.encode("", add_special_tokens=True).ids[:1]
        self.bos_id = loaded.bos_token_id if adds_bos and adds_bos == [loaded.bos_token_id] else None
        self.vocab_size = len(loaded)
        vocab = self._text.get_vocab(with_added_tokens=True)
        fim_ids = [vocab.get(token) for token in FIM_TOKENS]
        self._fim_ids = None if None in fim_ids else fim_ids

    def digest(self) -> str:
        return xxhash.xxh3_128_hexdigest("\0".join([self._text.to_str(), self._chat_template or "",
                                                     json.dumps(self._template_variables, sort_keys=True)]).encode())

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._text.encode(text, add_special_tokens=False).ids
        return [*([self.bos_id] if bos and self.bos_id is not None else []), *ids, *([self.eos_id] if eos else [])]

    def decode(self, tokens: Sequence[int]) -> str:
        return self._text.decode(list(tokens), skip_special_tokens=True)

    def encode_chat(self, messages: Sequence[Message]) -> tuple[list[int], list[int]]:
        chat = self._hidden_chat(messages)
        rendered = self._render(chat, add_generation_prompt=False)
        turns = []
        for i, message in enumerate(chat):
            if message["role"] != "assistant":
                continue
            before = self._render(chat[:i], add_generation_prompt=True)
            through = self._render(chat[:i + 1], add_generation_prompt=False)
            if not (through.startswith(before) and rendered.startswith(through)):
                raise ConfigError(f"The chat template of {self.name} does not render a conversation turn by turn (a "
                                  "conversation up to an assistant turn is not a prefix of the whole), so the "
                                  "assistant turns cannot be found for the loss mask.")
            ends = [match.end() for match in self._control_re.finditer(through, len(before))]
            turns.append((self._shown_length(before), self._shown_length(through[:ends[-1] if ends else None])))
        tokens, spans = self._tokenize(rendered)
        mask = [int(any(start < turn_end and end > turn_start for turn_start, turn_end in turns))
                for start, end in spans]
        return tokens, mask

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        return self._tokenize(self._render(self._hidden_chat(messages), add_generation_prompt=True))[0]

    def fim_prompt(self, prefix: str, suffix: str) -> list[int]:
        start = [] if self.bos_id is None else [self.bos_id]
        if self._fim_ids is None:
            return [*start, *self.encode(FIM_TEXT.format(prefix=prefix, suffix=suffix))]
        prefix_id, suffix_id, middle_id = self._fim_ids
        return [*start, prefix_id, *self.encode(prefix), suffix_id, *self.encode(suffix), middle_id]

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes tokenizer.json, tokenizer_config.json (with the chat template) etc. as transformers saves them."""
        transformers_tokenizer(self.source).save_pretrained(directory)

    def _hidden_chat(self, messages: Sequence[Message]) -> list[dict[str, str]]:
        """The messages as the template sees them, each special-token string in them hidden (module docstring)."""
        chat = []
        for message in messages:
            if any(ord(char) in self._shown for char in message.content):
                raise DataError(f"A {message.role} message contains a Unicode private-use character (U+F0000..) "
                                f"that {self.name} reserves for hiding special tokens.")
            hidden = self._control_re.sub(lambda match: self._hidden[match.group()], message.content)
            chat.append({"role": message.role, "content": hidden})
        return chat

    def _render(self, chat: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if self._chat_template is None:
            raise ConfigError(f"{self.name} has no chat template, so it cannot encode chat records.")
        from transformers.utils.chat_template_utils import render_jinja_template  # see transformers_tokenizer

        try:
            rendered, _ = render_jinja_template(conversations=[chat], chat_template=self._chat_template,
                                                add_generation_prompt=add_generation_prompt,
                                                **self._template_variables)
        except jinja2.TemplateError as e:
            raise DataError(f"The chat template of {self.name} refused a conversation: {e}") from None
        return rendered[0]

    def _shown_length(self, rendered: str) -> int:
        return len(rendered.translate(self._shown))

    def _tokenize(self, rendered: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The rendered chat's tokens and each one's character span in it (hidden tokens shown again): the template's
        special tokens as themselves, the text between them (messages' special-token strings included) as text."""
        tokens: list[int] = []
        spans: list[tuple[int, int]] = []
        at = 0
        for i, piece in enumerate(self._control_re.split(rendered)):
            if i % 2:  # split() puts the captured special tokens at the odd places
                tokens.append(self._controls[piece])
                spans.append((at, at + len(piece)))
            else:
                piece = piece.translate(self._shown)
                encoding = self._text.encode(piece, add_special_tokens=False)
                tokens += encoding.ids
                spans += [(at + start, at + end) for start, end in encoding.offsets]
            at += len(piece)
        return tokens, spans


def transformers_tokenizer(source: str) -> transformers.PreTrainedTokenizerBase:
    """transformers' tokenizer of a model directory, or built from a GGUF file's metadata."""
    import transformers  # imported where used: seconds to import, and Mistral models never need it here

    try:
        if source.endswith(".gguf"):
            return transformers.AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(source)),
                                                              gguf_file=os.path.basename(source))
        return transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ConfigError(f"transformers cannot load a tokenizer from {source}: {e}") from None
