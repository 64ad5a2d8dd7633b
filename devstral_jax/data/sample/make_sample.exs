# Builds sample.jsonl: training records from the installed Elixir's own module and function docs.
#   elixir devstral_jax/data/sample/make_sample.exs > devstral_jax/data/sample/sample.jsonl
#   python launch/score_data.py --input=devstral_jax/data/sample/sample.jsonl   (adds each record's difficulty)
# Elixir's documentation is Apache-2.0 (Copyright The Elixir Team); see README.md beside this file.
modules = [Enum, String, Map, List, Keyword, Integer, Float, Tuple, MapSet, Range, Stream, Regex,
           Access, Agent, Task, GenServer, Supervisor, Registry, Process, Path, URI, Base, Bitwise,
           Kernel, Atom, Function, IO, File, System, Date, Time, DateTime, NaiveDateTime, Calendar,
           Code, Macro, Module, Application, Exception, Inspect, Protocol, StringIO, OptionParser]
version = System.version()

records =
  for module <- modules,
      {:docs_v1, _, :elixir, _, module_doc, _, docs} = Code.fetch_docs(module),
      {{kind, name, arity}, _anno, [signature | _], %{"en" => doc}, _meta} <-
        [{{:module, module, 0}, nil, [inspect(module)], module_doc, %{}} | docs],
      kind in [:module, :function, :macro],
      is_binary(doc) and byte_size(doc) > 80 do
    mod = inspect(module)
    subject = if kind == :module, do: mod, else: "#{mod}.#{signature}"
    id = :crypto.hash(:sha256, "#{mod}.#{name}/#{arity}") |> Base.encode16(case: :lower) |> binary_part(0, 16)
    split = if :erlang.phash2(subject, 10) == 0, do: "validation", else: "train"
    source = %{kind: "otp_docs", package: "elixir", version: version, path: "#{mod}", licence: "Apache-2.0",
               url: "https://hexdocs.pm/elixir/#{version}/#{mod}.html"}

    if rem(:erlang.phash2(id), 2) == 0 do
      %{id: id, kind: "text", task: "doc_text", split: split, source: source,
        text: "# #{subject}\n\n#{doc}"}
    else
      %{id: id, kind: "chat", task: "explain_doc", split: split, source: source,
        messages: [%{role: "user", content: "In Elixir, what does `#{subject}` do? Show examples."},
                   %{role: "assistant", content: doc}]}
    end
  end

# A tiny JSON encoder: Elixir 1.14 has none built in and Hex packages are out of reach.
defmodule SampleJSON do
  def encode(map) when is_map(map),
    do: "{" <> Enum.map_join(map, ",", fn {k, v} -> encode(to_string(k)) <> ":" <> encode(v) end) <> "}"
  def encode(list) when is_list(list), do: "[" <> Enum.map_join(list, ",", &encode/1) <> "]"
  def encode(s) when is_binary(s) do
    escaped = for <<c::utf8 <- s>>, into: "" do
      case c do
        ?" -> "\\\""
        ?\\ -> "\\\\"
        ?\n -> "\\n"
        ?\t -> "\\t"
        c when c < 0x20 -> "\\u" <> String.pad_leading(Integer.to_string(c, 16), 4, "0")
        c -> <<c::utf8>>
      end
    end
    "\"" <> escaped <> "\""
  end
end

Enum.each(records, &IO.puts(SampleJSON.encode(&1)))
