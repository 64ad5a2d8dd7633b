"""Run as a script by tests/test_hf_export.py under transformers 4.x (PYTHONPATH = a pinned 4.x install) or
5.x (the venv's): what that version makes of a merged export. Reads {dir, snippets, messages, tokens} as JSON on
stdin; prints JSON on stdout: the version, the model's logits, and for each way of loading the tokenizer
(`auto`: AutoTokenizer, which 5.x points at tekken.json through mistral-common; `fast`: tokenizer.json and
tokenizer_config.json, as 4.x, vLLM's `auto` mode and TGI read them) its class, ids and chat-template ids."""

import json
import sys

import torch
import transformers

request = json.load(sys.stdin)


def chat_ids(tokenizer) -> list[int]:
    """The chat template's ids: 4.x returns a list, 5.x a BatchEncoding."""
    ids = tokenizer.apply_chat_template(request["messages"], tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


loaded = {"auto": transformers.AutoTokenizer.from_pretrained(request["dir"]),
          "fast": transformers.PreTrainedTokenizerFast.from_pretrained(request["dir"])}
result = {"version": transformers.__version__}
for how, tokenizer in loaded.items():
    result[how] = {"class": type(tokenizer).__name__, "chat_ids": chat_ids(tokenizer),
                   "ids": [tokenizer(text).input_ids for text in request["snippets"]]}
result["fast"]["ids_as_text"] = [loaded["fast"](text, split_special_tokens=True).input_ids
                                 for text in request["snippets"]]
model = transformers.AutoModelForCausalLM.from_pretrained(request["dir"], dtype=torch.float32).eval()
with torch.no_grad():
    result["logits"] = model(torch.tensor(request["tokens"])).logits.tolist()
json.dump(result, sys.stdout)
