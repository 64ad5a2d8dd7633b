# The installed Elixir's own modules as Elixir source, rebuilt from their docs chunks (Code.fetch_docs)
# and typespecs, served by devstral_jax/elixir/worker.py for otp_docs.py:
#
#   %{"op" => "version"}              -> System.version()
#   %{"op" => "app", "app" => "elixir"} -> [%{"path" => "lib/elixir/lib/enum.ex", "source" => binary}]
#
# Each file holds the documented modules compiled from one original source file: @moduledoc, and per
# documented function or macro its @doc, @spec and a bodiless head (`def all?(enumerable)`). The .beam
# files carry no source code, so there are no bodies; the docs carry the doctests.
# One-shot use: elixir otp_docs.exs APP DIR writes the files under DIR.

defmodule OtpDocs do
  def handle(%{"op" => "version"}), do: System.version()
  def handle(%{"op" => "app", "app" => app}), do: app_sources(app)

  def app_sources(app) do
    app = String.to_atom(app)

    case Application.load(app) do
      :ok ->
        :ok

      {:error, {:already_loaded, ^app}} ->
        :ok

      {:error, reason} ->
        raise ArgumentError, "application #{app} is not installed: #{inspect(reason)}"
    end

    {:ok, modules} = :application.get_key(app, :modules)

    modules
    |> Enum.sort()
    |> Enum.flat_map(&module_source/1)
    |> Enum.group_by(fn {path, _} -> path end, fn {_, source} -> source end)
    |> Enum.sort()
    |> Enum.map(fn {path, sources} -> %{"path" => path, "source" => Enum.join(sources, "\n")} end)
  end

  defp module_source(module) do
    with {:docs_v1, _, :elixir, _, moduledoc, _, docs} when moduledoc != :hidden <-
           Code.fetch_docs(module),
         specs = specs(module),
         body = Enum.flat_map(Enum.sort(docs), &definition(&1, specs)),
         true <- body != [] or is_map(moduledoc) do
      keyword =
        if function_exported?(module, :__protocol__, 1), do: "defprotocol", else: "defmodule"

      lines =
        ["#{keyword} #{inspect(module)} do"] ++
          doc_attribute("moduledoc", moduledoc) ++ body ++ ["end"]

      source = Enum.join(lines, "\n") <> "\n"
      # Only what Elixir itself can read back is kept.
      if match?({:ok, _}, Code.string_to_quoted(source)),
        do: [{source_path(module), source}],
        else: []
    else
      _ -> []
    end
  end

  defp definition({{kind, name, arity}, _, [signature | _], doc, _}, specs)
       when kind in [:function, :macro] do
    keyword = if kind == :function, do: "def", else: "defmacro"
    head = "#{keyword} #{signature}"
    # Macros' specs are stored under MACRO-name/arity+1; only functions get one here.
    spec_lines = if kind == :function, do: Map.get(specs, {name, arity}, []), else: []

    if is_map(doc) and match?({:ok, _}, Code.string_to_quoted(head)) do
      [""] ++ doc_attribute("doc", doc) ++ spec_lines ++ ["  " <> head]
    else
      []
    end
  end

  defp definition(_entry, _specs), do: []

  defp doc_attribute(attribute, %{"en" => text}) do
    delimiter = if String.contains?(text, ~s(""")), do: "'''", else: ~s(""")

    if String.contains?(text, delimiter) do
      []
    else
      lines = text |> String.trim_trailing() |> String.split("\n") |> Enum.map(&indent/1)
      ["  @#{attribute} ~S#{delimiter}"] ++ lines ++ ["  #{delimiter}"]
    end
  end

  defp doc_attribute(_attribute, _none), do: []

  defp indent(line) do
    if String.trim(line) == "", do: "", else: "  " <> line
  end

  # %{{name, arity} => ["  @spec ..."]}
  defp specs(module) do
    case Code.Typespec.fetch_specs(module) do
      {:ok, specs} ->
        Map.new(specs, fn {{name, arity}, clauses} ->
          lines =
            for clause <- clauses,
                do: "  @spec " <> Macro.to_string(Code.Typespec.spec_to_quoted(name, clause))

          {{name, arity}, lines}
        end)

      :error ->
        %{}
    end
  end

  # "lib/elixir/lib/enum.ex", from where the module was compiled.
  defp source_path(module) do
    source = to_string(module.module_info(:compile)[:source] || "")

    case Regex.run(~r{(lib/[^/]+/lib/.+)$}, source) do
      [_, path] -> path
      nil -> "lib/" <> (module |> inspect() |> Macro.underscore()) <> ".ex"
    end
  end
end

case System.argv() do
  [] ->
    ElixirWorker.serve(&OtpDocs.handle/1)

  [app, directory] ->
    for %{"path" => path, "source" => source} <- OtpDocs.app_sources(app) do
      target = Path.join(directory, path)
      File.mkdir_p!(Path.dirname(target))
      File.write!(target, source)
    end
end
