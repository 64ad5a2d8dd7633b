"""The tokenizer files of a merged export, made from Tekken for every reader of a Hugging Face directory:
transformers 4.x and 5.x, vLLM, TGI, Bumblebee and plain `tokenizers`.

transformers converts Tekken to a byte-level BPE (`convert_tekken_tokenizer`: the same ids as mistral-common)
and attaches mistral-common's chat template; three things in what it saves are changed:
- `tokenizer_config.json` names `PreTrainedTokenizerFast`, which transformers 4.x and 5.x both load, instead of
  transformers 5's `TokenizersBackend`, which 4.x (and vLLM's default tokenizer mode on it) cannot import;
- `tokenizer.json`'s post-processor adds `<s>`, as Tekken does before a prompt: readers of `tokenizer.json`
  alone (TGI, Bumblebee, `tokenizers`) apply nothing else;
- the chat template is `chat_template.jinja_template` (llama.cpp's fallback reads it as mistral-v3-tekken).

As in every Hugging Face Mistral tokenizer, text that spells a control token (`[INST]`, `<s>`) becomes that
token unless the caller passes `split_special_tokens=True`; mistral-common (vLLM's `--tokenizer-mode mistral`)
always encodes text as text.
"""

from __future__ import annotations

import json
import os

from tokenizers import Tokenizer, processors
from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

from devstral_jax.hf.chat_template import jinja_template

TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def save_hf_tokenizer(tekken_file: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Writes tokenizer.json, tokenizer_config.json and chat_template.jinja for `tekken_file` into `out_dir`."""
    tokenizer = convert_tekken_tokenizer(str(tekken_file), chat_template=jinja_template(tekken_file))
    tokenizer.save_pretrained(out_dir)
    bos = tokenizer.bos_token
    path = os.path.join(out_dir, "tokenizer.json")
    fast = Tokenizer.from_file(path)
    fast.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                      special_tokens=[(bos, tokenizer.bos_token_id)]),
    ])
    fast.save(path)
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config.pop("backend", None)  # transformers 5's marker for TokenizersBackend
    config["tokenizer_class"] = TOKENIZER_CLASS
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
