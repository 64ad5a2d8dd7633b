"""Records -> token ids and loss masks, through mistral-common's Devstral instruct encoding.

Each record becomes one token sequence with a mask marking the tokens the model is trained to
*produce*: all of a `text` record, the assistant turns (and their end-of-sequence) of a `chat`
record, the middle (and end-of-sequence) of a `fim` record.
"""

from __future__ import annotations

import os

import numpy as np
from mistral_common.protocol.fim.request import FIMRequest
from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
from mistral_common.protocol.instruct.request import InstructRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from devstral_jax.data.records import Record
from devstral_jax.tokenizer import tekken_file


class RecordTokenizer:
    """Tokenizes records with Tekken; `tekken_path` (a tekken.json or a directory holding one) defaults to the
    file packaged with mistral-common."""

    def __init__(self, tekken_path: str | os.PathLike | None = None):
        self._mistral = MistralTokenizer.from_file(str(tekken_file(tekken_path)))
        self._instruct = self._mistral.instruct_tokenizer
        self._tekken = self._instruct.tokenizer
        self.bos_id, self.eos_id = self._tekken.bos_id, self._tekken.eos_id
        self.vocab_size = self._tekken.n_words

    def encode_text(self, text: str) -> list[int]:
        return self._tekken.encode(text, bos=False, eos=False)

    def __call__(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int32 [n], loss_mask int32 [n]): mask[i] = 1 where token i is a training target."""
        if record.kind == "text":
            tokens = [self.bos_id, *self.encode_text(record.text), self.eos_id]
            mask = [0] + [1] * (len(tokens) - 1)
        elif record.kind == "chat":
            tokens, mask = self._chat(record)
        else:
            prompt = self._instruct.encode_fim(FIMRequest(prompt=record.prefix, suffix=record.suffix)).tokens
            middle = [*self.encode_text(record.middle), self.eos_id]
            tokens, mask = [*prompt, *middle], [0] * len(prompt) + [1] * len(middle)
        return np.asarray(tokens, np.int32), np.asarray(mask, np.int32)

    def _chat(self, record: Record) -> tuple[list[int], list[int]]:
        system = [m.content for m in record.messages if m.role == "system"]
        turns = [UserMessage(content=m.content) if m.role == "user" else AssistantMessage(content=m.content)
                 for m in record.messages if m.role != "system"]
        request = InstructRequest(messages=turns, system_prompt="\n\n".join(system) or None)
        tokens = self._instruct.encode_instruct(request).tokens
        mask = [0] * len(tokens)
        # Find each assistant turn's tokens (content + </s>) in order; mark them as targets.
        start = 0
        last_user = max(i for i, m in enumerate(turns) if isinstance(m, UserMessage)) if any(
            isinstance(m, UserMessage) for m in turns) else -1
        for i, message in enumerate(turns):
            if not isinstance(message, AssistantMessage):
                continue
            reply = self._instruct.encode_assistant_message(message, is_before_last_user_message=i < last_user)
            at = _find(tokens, reply, start)
            if at < 0:
                raise ValueError(f"Record {record.id}: assistant turn {i} not found in its encoding.")
            mask[at:at + len(reply)] = [1] * len(reply)
            start = at + len(reply)
        return tokens, mask


def _find(haystack: list[int], needle: list[int], start: int) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i:i + len(needle)] == needle:
            return i
    return -1


def training_windows(tokens: np.ndarray, loss_mask: np.ndarray, seq_len: int) -> list[dict[str, np.ndarray]]:
    """Shifted next-token examples of at most `seq_len` positions: inputs[t] predicts targets[t] = tokens[t+1].

    A sequence longer than `seq_len` + 1 is cut into consecutive windows (each re-reads the last token of
    the previous one as its first input), so no target is lost or repeated.
    """
    inputs, targets, mask = tokens[:-1], tokens[1:], loss_mask[1:]
    return [dict(inputs=inputs[s:s + seq_len], targets=targets[s:s + seq_len], loss_mask=mask[s:s + seq_len])
            for s in range(0, len(inputs), seq_len) if mask[s:s + seq_len].any()]
