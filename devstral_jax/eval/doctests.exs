# Finds documented, single-clause `def ... do ... end` functions in an Elixir source file, for the doctest
# benchmark (devstral_jax/eval/doctests.py). Parses only (Code.string_to_quoted), never evaluates.
# Served through devstral_jax/elixir_worker.py, which defines ElixirWorker.serve/1.

defmodule DevstralEval.Doctests do
  @doc "The module's name and end line and its candidate functions, or nil if the file is not one top-level module."
  def functions(source) do
    with {:ok, ast} <- Code.string_to_quoted(source, columns: true, token_metadata: true),
         {:defmodule, meta, [name, [do: body]]} <- ast,
         end_line when is_integer(end_line) <- meta[:end][:line] do
      definitions = body |> block() |> Enum.reduce({nil, []}, &collect/2) |> elem(1) |> Enum.reverse()
      clauses = Enum.frequencies_by(definitions, &{&1["name"], &1["arity"]})

      %{
        "module" => Macro.to_string(name),
        "end_line" => end_line,
        "functions" => Enum.filter(definitions, &(&1["doc"] && clauses[{&1["name"], &1["arity"]}] == 1))
      }
    else
      _ -> nil
    end
  end

  defp block({:__block__, _, expressions}), do: expressions
  defp block(expression), do: [expression]

  # Walks the module body keeping the last @doc (with its line) for the next def.
  defp collect({:@, meta, [{:doc, _, [doc]}]}, {_, found}) when is_binary(doc), do: {{doc, meta[:line]}, found}
  defp collect({:@, _, [{:doc, _, _}]}, {_, found}), do: {nil, found}

  defp collect({kind, meta, [head, _body]}, {doc, found}) when kind in [:def, :defp] do
    {name, args} = head(head)

    function = %{
      "name" => Atom.to_string(name),
      "arity" => length(args || []),
      "public" => kind == :def,
      "def_line" => meta[:line],
      "do_line" => meta[:do][:line],
      "end_line" => meta[:end][:line],
      "doc" => doc && kind == :def && meta[:end] && elem(doc, 0),
      "doc_line" => doc && elem(doc, 1)
    }

    {nil, [function | found]}
  end

  defp collect(_other, state), do: state

  defp head({:when, _, [head | _]}), do: head(head)
  defp head({name, _, args}) when is_atom(name), do: {name, if(is_list(args), do: args, else: [])}
  defp head(_), do: {:unknown, []}
end

ElixirWorker.serve(fn %{"op" => "functions", "source" => source} -> DevstralEval.Doctests.functions(source) end)
