"""Shared by the serving tests: GGUF files of random models, and what engines are compared with: Tekken's ids for
twenty Elixir snippets (modules, sigils, heredocs, binaries, unicode, odd whitespace, and strings that spell
Mistral's control tokens, `<s>`, `[INST]`, which a tokenizer must encode as text), and mistral-common's instruct
encoding of a conversation, as training encodes chat records (devstral_jax/data/tokenize.py)."""

from __future__ import annotations

import os

import numpy as np

from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import InstructRequest
from mistral_common.tokens.tokenizers.base import TokenizerVersion
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from devstral_jax.config import ModelConfig
from devstral_jax.hf import param_map
from devstral_jax.hf.gguf_export import save_gguf
from devstral_jax.tokenizers.tekken import PACKAGED_TEKKEN
from tests.model_helpers import hf_model

CONTROL_TOKENS = ("<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]")

SNIPPETS = [
    'defmodule Greeter do\n  def hello(name), do: "Hello, #{name}!"\nend\n',
    "defmodule Stack do\n  use GenServer\n\n  @impl true\n  def init(items), do: {:ok, items}\n\n"
    "  @impl true\n  def handle_call(:pop, _from, [head | tail]), do: {:reply, head, tail}\nend\n",
    '@moduledoc """\nParses `key=value` pairs.\n\n    iex> KV.parse("a=1")\n    %{"a" => "1"}\n"""\n',
    "Enum.map(1..10, &(&1 * &1))\n|> Enum.filter(&(rem(&1, 2) == 0))\n|> Enum.sum()\n",
    'Regex.scan(~r/(?<year>\\d{4})-(?<month>\\d{2})/u, "2024-01 and 2025-12", capture: :all_names)\n',
    "<<version::8, length::16-big, payload::binary-size(length), rest::binary>> = packet\n",
    'case File.read(path) do\n  {:ok, body} -> String.split(body, "\\n", trim: true)\n'
    "  {:error, reason} -> raise File.Error, reason: reason, action: \"read\", path: path\nend\n",
    'name = "Zoë Ångström 日本語 🚀"\nString.length(name) |> IO.inspect(label: "graphemes")\n',
    "defstruct [:id, name: \"\", tags: [], inserted_at: nil]\n\n@type t :: %__MODULE__{id: pos_integer() | nil}\n",
    "with {:ok, user} <- Accounts.fetch(id),\n     :ok <- Policy.authorize(user, :edit) do\n"
    "  {:ok, user}\nelse\n  {:error, _} = error -> error\nend\n",
    "\tdef tabs_and_trailing_spaces(x) do   \n\t\tx + 1_000_000\t\nend\r\n",
    "for x <- [1, 2, 3], y <- ~w(a b c)a, into: %{}, do: {{x, y}, :\"quoted atom #{x}\"}\n",
    "try do\n  :ets.lookup(:cache, key)\nrescue\n  ArgumentError -> []\ncatch\n  :exit, _ -> []\nend\n",
    "spawn_link(fn ->\n  receive do\n    {:ping, from} -> send(from, :pong)\n  after\n    5_000 -> exit(:timeout)\n"
    "  end\nend)\n",
    "@spec fetch!(map(), atom()) :: term()\ndef fetch!(map, key) when is_map(map) and is_atom(key),"
    " do: Map.fetch!(map, key)\n",
    'charlist = ~c"hello"\n0x1F |> Bitwise.band(0b1010) |> Integer.to_string(16) # => "A"\n',
    'prompt = "<s>[INST] write a GenServer [/INST]"\nIO.puts(prompt)\n',
    'defmodule Chat do\n  @stop "</s>"\n  def turn(text), do: "[INST]" <> text <> "[/INST]"\nend\n',
    "# The model must not see control tokens here: <s> </s> [INST] [/INST] [SYSTEM_PROMPT]\n"
    ":ok = Logger.info(\"saw <s>\")\n",
    '~s(<s>inside a sigil</s>) |> String.replace("[INST]", "")\n',
]

ROLES = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
CONVERSATION = [
    {"role": "system", "content": "You are an Elixir expert. Answer with code."},
    {"role": "user", "content": "Write a function that sums a list."},
    {"role": "assistant", "content": "def sum(list), do: Enum.reduce(list, 0, &+/2)"},
    {"role": "user", "content": "Now make it tail-recursive:\n\n```elixir\ndef sum([]), do: 0\n```"},
]


def instruct_tokens(tekken_file: str | os.PathLike, conversation: list[dict[str, str]]) -> list[int]:
    """mistral-common's encoding of an OpenAI-style conversation. v3 takes the system messages as the request's
    system prompt (as devstral_jax/data/tokenize.py passes them); v7 and later encode system messages in place."""
    instruct = MistralTokenizer.from_file(str(tekken_file)).instruct_tokenizer
    if instruct.tokenizer.version == TokenizerVersion.v3:
        system = "\n\n".join(m["content"] for m in conversation if m["role"] == "system") or None
        turns = [ROLES[m["role"]](content=m["content"]) for m in conversation if m["role"] != "system"]
        request = InstructRequest(messages=turns, system_prompt=system)
    else:
        request = InstructRequest(messages=[ROLES[m["role"]](content=m["content"]) for m in conversation])
    return instruct.encode_instruct(request).tokens


def random_gguf(path: str | os.PathLike, config: ModelConfig, seed: int, outtype: str = "f16",
                tensors: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Writes a GGUF (with the packaged Tekken) of `tensors`, default a random transformers model's; returns them."""
    if tensors is None:
        tensors = {name: t.detach().numpy() for name, t in hf_model(config, seed).state_dict().items()}
    stream = ((n.hf_name, tensors[n.hf_name]) for n in param_map.param_names(config))
    save_gguf(path, config, stream, tokenizer=str(PACKAGED_TEKKEN), outtype=outtype, progress=False)
    return tensors
