# The one Elixir source reader, served by devstral_jax/elixir/worker.py (or run once on files): the data
# pipeline reads every file with it, the doctest benchmark finds its functions and examples with it.
#
#   %{"op" => "parse", "path" => path, "source" => binary}
#     -> %{"ok" => true, "modules" => [module]} | %{"ok" => false, "error" => message}
#   %{"op" => "consult", "text" => binary}       (Erlang terms, as in a Hex tarball's metadata.config)
#     -> %{"ok" => true, "terms" => [term]}    | %{"ok" => false, "error" => message}
#
# A module: name, kind (defmodule | defprotocol | defimpl), parent (the enclosing module's name, nil at the
# top level), line, end_line, moduledoc, moduledoc_span ([line, end_line] of the attribute, or nil),
# behaviours, uses, functions, doctests.
# A function (its consecutive clauses together): name, arity, kind (def, defp, defmacro, ...), line,
# end_line, signature, doc, doc_line (of its @doc, or nil), specs ([line, end_line] of each @spec), impl,
# has_body, clauses (how many have a body), do_line (of the first body's `do` when written `do ... end`,
# else nil), doctests.
# A doc is a string, false (@doc false) or nil.
# Doctests are groups of steps %{"expr", "expected", "valid", "bare_assert", "calls"}: expected is nil when
# the step only sets up; valid is false when the expression or the expected value is not Elixir (e.g.
# shell output); bare_assert is true when `EXPR == EXPECTED`, written as is, reads as comparing the two
# (no operator looser than `==`, no call without parentheses, no comment in EXPR takes the rest in);
# calls are the [name, arity] of calls without a module that Kernel does not provide.
#
# One-shot use (for benchmarks): elixir parser.exs FILE... prints one summary line per file.

defmodule SourceReader do
  @def_kinds [:def, :defp, :defmacro, :defmacrop, :defguard, :defguardp, :defdelegate]

  def handle(%{"op" => "parse", "source" => source} = request),
    do: parse(source, Map.get(request, "path", "nofile"))

  def handle(%{"op" => "consult", "text" => text}), do: consult(text)

  def parse(source, path) do
    if String.valid?(source) do
      case Code.string_to_quoted(source,
             file: path,
             columns: true,
             token_metadata: true,
             emit_warnings: false
           ) do
        {:ok, ast} ->
          %{"ok" => true, "modules" => modules(ast, nil)}

        {:error, {meta, message, token}} ->
          %{"ok" => false, "error" => syntax_error(meta, message, token)}
      end
    else
      %{"ok" => false, "error" => "not valid UTF-8"}
    end
  end

  defp syntax_error(meta, {prefix, suffix}, token),
    do: syntax_error(meta, prefix <> token <> suffix, "")

  defp syntax_error(meta, message, token),
    do: "syntax error at line #{Keyword.get(meta, :line, 0)}: #{message}#{token}"

  # --- modules ---------------------------------------------------------------------------------------

  defp modules(ast, parent) do
    Enum.flat_map(expressions(ast), fn
      {kind, meta, args} = node
      when kind in [:defmodule, :defprotocol, :defimpl] and is_list(args) ->
        with {:ok, body} <- do_block(args) do
          name = module_name(kind, args, parent)
          {info, nested} = module_body(expressions(body), name)

          module =
            Map.merge(info, %{
              "name" => name,
              "kind" => Atom.to_string(kind),
              "parent" => parent,
              "line" => meta[:line],
              "end_line" => end_line(node)
            })

          [module | nested]
        else
          :none -> []
        end

      {conditional, _, [_condition, branches]}
      when conditional in [:if, :unless] and is_list(branches) ->
        Enum.flat_map([:do, :else], &modules(Keyword.get(branches, &1), parent))

      _ ->
        []
    end)
  end

  defp expressions({:__block__, _, exprs}), do: exprs
  defp expressions(nil), do: []
  defp expressions(expr), do: [expr]

  defp do_block(args) do
    Enum.find_value(args, :none, fn
      keywords when is_list(keywords) ->
        if Keyword.has_key?(keywords, :do), do: {:ok, keywords[:do]}

      _ ->
        nil
    end)
  end

  defp module_name(:defimpl, [protocol | rest], parent) do
    for_alias =
      Enum.find_value(rest, fn
        kw when is_list(kw) -> Keyword.get(kw, :for)
        _ -> nil
      end)

    target = if for_alias, do: alias_name(for_alias, nil), else: parent
    "#{alias_name(protocol, parent)}.#{target}"
  end

  defp module_name(_kind, [alias_ast | _], nil), do: alias_name(alias_ast, nil)

  defp module_name(_kind, [{:__aliases__, _, [{:__MODULE__, _, _} | _]} = alias_ast | _], parent),
    do: alias_name(alias_ast, parent)

  defp module_name(_kind, [alias_ast | _], parent),
    do: "#{parent}.#{alias_name(alias_ast, parent)}"

  defp alias_name({:__aliases__, _, parts}, parent) do
    parts
    |> Enum.map(fn
      {:__MODULE__, _, _} -> parent || "__MODULE__"
      part when is_atom(part) -> Atom.to_string(part)
      other -> Macro.to_string(other)
    end)
    |> Enum.join(".")
  end

  defp alias_name({:__MODULE__, _, _}, parent), do: parent || "__MODULE__"
  defp alias_name(atom, _parent) when is_atom(atom), do: inspect(atom)
  defp alias_name(other, _parent), do: Macro.to_string(other)

  # Walks a module body in order: attributes attach to the next definition.
  defp module_body(exprs, name) do
    initial = %{
      info: %{
        "moduledoc" => nil,
        "moduledoc_span" => nil,
        "behaviours" => [],
        "uses" => [],
        "doctests" => []
      },
      functions: [],
      specs: %{},
      doc: nil,
      doc_line: nil,
      impl: nil,
      nested: []
    }

    state = Enum.reduce(exprs, initial, &body_expression(&1, &2, name))

    functions =
      state.functions
      |> Enum.reverse()
      |> Enum.map(fn function ->
        Map.put(
          function,
          "specs",
          Map.get(state.specs, {function["name"], function["arity"]}, [])
        )
      end)

    info = %{
      state.info
      | "behaviours" => Enum.reverse(state.info["behaviours"]),
        "uses" => Enum.reverse(state.info["uses"])
    }

    {Map.put(info, "functions", functions), state.nested}
  end

  defp body_expression({:@, meta, [{:moduledoc, _, [value]}]} = node, state, _name) do
    case doc_value(value) do
      :keep ->
        state

      doc ->
        span = [meta[:line], end_line(node)]

        %{
          state
          | info: %{
              state.info
              | "moduledoc" => doc,
                "moduledoc_span" => span,
                "doctests" => doctests(doc)
            }
        }
    end
  end

  defp body_expression({:@, meta, [{:doc, _, [value]}]}, state, _name) do
    case doc_value(value) do
      :keep -> state
      doc -> %{state | doc: doc, doc_line: meta[:line]}
    end
  end

  defp body_expression({:@, _, [{:impl, _, [value]}]}, state, _name) do
    impl = if is_boolean(value), do: value, else: alias_name(value, nil)
    %{state | impl: impl}
  end

  defp body_expression({:@, _, [{:behaviour, _, [value]}]}, state, name),
    do: put_in(state.info["behaviours"], [alias_name(value, name) | state.info["behaviours"]])

  defp body_expression({:@, meta, [{:spec, _, [spec]}]} = node, state, _name) do
    case spec_key(spec) do
      nil ->
        state

      key ->
        span = [meta[:line], end_line(node)]
        %{state | specs: Map.update(state.specs, key, [span], &(&1 ++ [span]))}
    end
  end

  defp body_expression({:use, _, [module | _]}, state, name),
    do: put_in(state.info["uses"], [alias_name(module, name) | state.info["uses"]])

  defp body_expression({kind, _, args} = node, state, name)
       when kind in [:defmodule, :defprotocol, :defimpl, :if, :unless] and is_list(args),
       do: %{state | nested: state.nested ++ modules(node, name)}

  defp body_expression({kind, meta, [head | rest]} = node, state, _name)
       when kind in @def_kinds do
    {fun_name, args} = call_of(head)
    arity = length(args)
    kind = Atom.to_string(kind)
    has_body = rest != [] and kind != "defdelegate"
    do_line = if has_body, do: meta[:do][:line]
    clauses = if has_body, do: 1, else: 0

    case state.functions do
      [%{"name" => ^fun_name, "arity" => ^arity, "kind" => ^kind} = last | others] ->
        last = %{
          last
          | "end_line" => end_line(node),
            "has_body" => last["has_body"] or has_body,
            "clauses" => last["clauses"] + clauses,
            "do_line" => last["do_line"] || do_line
        }

        %{state | functions: [last | others], doc: nil, doc_line: nil, impl: nil}

      functions ->
        function = %{
          "name" => fun_name,
          "arity" => arity,
          "kind" => kind,
          "line" => meta[:line],
          "end_line" => end_line(node),
          "signature" => Macro.to_string({String.to_atom(fun_name), [], args}),
          "doc" => state.doc,
          "doc_line" => state.doc_line,
          "impl" => state.impl,
          "has_body" => has_body,
          "clauses" => clauses,
          "do_line" => do_line,
          "doctests" => doctests(state.doc)
        }

        %{state | functions: [function | functions], doc: nil, doc_line: nil, impl: nil}
    end
  end

  defp body_expression(_other, state, _name), do: state

  defp call_of({:when, _, [call | _]}), do: call_of(call)

  defp call_of({name, _, args}) when is_atom(name) and is_list(args),
    do: {Atom.to_string(name), args}

  defp call_of({name, _, _}) when is_atom(name), do: {Atom.to_string(name), []}
  defp call_of(other), do: {Macro.to_string(other), []}

  defp spec_key({:when, _, [spec | _]}), do: spec_key(spec)

  defp spec_key({:"::", _, [{name, _, args} | _]}) when is_atom(name),
    do: {Atom.to_string(name), length(List.wrap(args))}

  defp spec_key(_), do: nil

  # A @doc/@moduledoc value: a string, false, or :keep for metadata-only forms (@doc since: "1.0").
  defp doc_value(value) when is_binary(value), do: value
  defp doc_value(false), do: false

  defp doc_value({sigil, _, [{:<<>>, _, parts}, _]}) when sigil in [:sigil_S, :sigil_s] do
    if Enum.all?(parts, &is_binary/1), do: Enum.join(parts), else: nil
  end

  defp doc_value(value) when is_list(value), do: :keep
  defp doc_value(_), do: nil

  # The last line a node covers: the largest line in its metadata, `end` and `end_of_expression` included.
  defp end_line(node) do
    {_, max_line} =
      Macro.prewalk(node, 0, fn
        {_, meta, _} = n, acc when is_list(meta) -> {n, Enum.max([acc | meta_lines(meta)])}
        n, acc -> {n, acc}
      end)

    max_line
  end

  defp meta_lines(meta) do
    nested =
      for key <- [:end, :closing, :end_of_expression],
          line = get_in(meta, [key, :line]),
          is_integer(line),
          do: line

    case meta[:line] do
      line when is_integer(line) -> [line | nested]
      _ -> nested
    end
  end

  # --- doctests ----------------------------------------------------------------------------------------

  @prompt ~r/^(\s*)iex(?:\(\d+\))?>\s?(.*)$/
  @continuation ~r/^\s*\.\.\.(?:\(\d+\))?>\s?(.*)$/

  def doctests(doc) when is_binary(doc) do
    doc
    |> String.split(["\r\n", "\n"])
    |> Enum.reduce(%{groups: [], steps: [], step: nil, indent: ""}, &doctest_line/2)
    |> close_group()
    |> Map.fetch!(:groups)
    |> Enum.reverse()
  end

  def doctests(_), do: []

  defp doctest_line(line, state) do
    cond do
      match = Regex.run(@prompt, line) ->
        [_, indent, expr] = match
        state = close_step(state)
        %{state | step: %{"expr" => [expr], "expected" => []}, indent: indent}

      state.step != nil and state.step["expected"] == [] and Regex.match?(@continuation, line) ->
        [_, more] = Regex.run(@continuation, line)
        put_in(state.step["expr"], state.step["expr"] ++ [more])

      String.trim(line) == "" or String.starts_with?(String.trim(line), ["```", "~~~"]) ->
        close_group(state)

      state.step != nil and String.starts_with?(line, state.indent) ->
        expected = String.replace_prefix(line, state.indent, "")
        put_in(state.step["expected"], state.step["expected"] ++ [expected])

      true ->
        close_group(state)
    end
  end

  defp close_step(%{step: nil} = state), do: state

  defp close_step(%{step: step} = state) do
    expected = if step["expected"] == [], do: nil, else: Enum.join(step["expected"], "\n")
    expr = Enum.join(step["expr"], "\n")

    step =
      case Code.string_to_quoted(expr, emit_warnings: false) do
        {:ok, ast} ->
          %{
            "expr" => expr,
            "expected" => expected,
            "valid" => valid_expected?(expected),
            "bare_assert" => bare_assert?(expr, ast, expected),
            "calls" => local_calls(ast)
          }

        {:error, _} ->
          %{
            "expr" => expr,
            "expected" => expected,
            "valid" => false,
            "bare_assert" => false,
            "calls" => []
          }
      end

    %{state | steps: [step | state.steps], step: nil}
  end

  @always_imported MapSet.new(
                     Kernel.__info__(:functions) ++
                       Kernel.__info__(:macros) ++ Kernel.SpecialForms.__info__(:macros)
                   )

  # [name, arity] of the calls without a module that Kernel does not provide (they need an import).
  defp local_calls(ast) do
    {_, calls} =
      Macro.prewalk(ast, MapSet.new(), fn
        # `x |> f(y)` calls f/2
        {:|>, meta, [left, {name, call_meta, args}]}, calls when is_atom(name) and is_list(args) ->
          {{:|>, meta, [left, {name, call_meta, [left | args]}]}, calls}

        {name, _, args} = node, calls
        when is_atom(name) and is_list(args) and name not in [:->, :when] ->
          call = {name, length(args)}
          {node, if(call in @always_imported, do: calls, else: MapSet.put(calls, call))}

        node, calls ->
          {node, calls}
      end)

    for {name, arity} <- Enum.sort(calls), do: [Atom.to_string(name), arity]
  end

  # The expected value reads as one Elixir expression; an exception (** (Error) ...) or an opaque value
  # (#PID<...>) is expected as text.
  defp valid_expected?(nil), do: true

  defp valid_expected?(expected) do
    String.starts_with?(expected, ["** (", "#"]) or
      match?(
        {:ok, ast} when not is_tuple(ast) or elem(ast, 0) != :__block__,
        Code.string_to_quoted(expected, emit_warnings: false)
      )
  end

  # Elixir's own parser decides what `EXPR == EXPECTED` means: `x = 1 == 1` binds x to true,
  # `if a, do: 1, else: 2 == 2` compares inside the else, `f() # comment == 1` compares nothing.
  defp bare_assert?(_expr, _ast, nil), do: false

  defp bare_assert?(expr, ast, expected) do
    with {:ok, expected_ast} <- Code.string_to_quoted(expected, emit_warnings: false),
         {:ok, comparison} <-
           Code.string_to_quoted("#{expr} == #{expected}", emit_warnings: false) do
      without_meta(comparison) == without_meta({:==, [], [ast, expected_ast]})
    else
      _ -> false
    end
  end

  defp without_meta(ast), do: Macro.prewalk(ast, &Macro.update_meta(&1, fn _ -> [] end))

  defp close_group(state) do
    state = close_step(state)

    case state.steps do
      [] -> state
      steps -> %{state | groups: [Enum.reverse(steps) | state.groups], steps: []}
    end
  end

  # --- Erlang terms ------------------------------------------------------------------------------------

  # Reads literal Erlang terms (`{<<"name">>, <<"jason">>}.` ...) without evaluating anything.
  def consult(text) do
    with chars when is_list(chars) <- :unicode.characters_to_list(text),
         {:ok, tokens, _} <- :erl_scan.string(chars),
         {:ok, terms} <- parse_terms(tokens, [], []) do
      %{"ok" => true, "terms" => terms}
    else
      {:error, {line, module, reason}, _} ->
        %{"ok" => false, "error" => "line #{line}: #{module.format_error(reason)}"}

      {:error, {line, module, reason}} ->
        %{"ok" => false, "error" => "line #{line}: #{module.format_error(reason)}"}

      _ ->
        %{"ok" => false, "error" => "not valid UTF-8"}
    end
  end

  defp parse_terms([], [], terms), do: {:ok, Enum.reverse(terms)}

  defp parse_terms([], _partial, _terms),
    do: {:error, {:eof, :erl_parse, 'a term is missing its final "."'}}

  defp parse_terms([{:dot, _} = dot | rest], partial, terms) do
    with {:ok, term} <- :erl_parse.parse_term(Enum.reverse([dot | partial])) do
      parse_terms(rest, [], [term | terms])
    end
  end

  defp parse_terms([token | rest], partial, terms),
    do: parse_terms(rest, [token | partial], terms)
end

case System.argv() do
  [] ->
    ElixirWorker.serve(&SourceReader.handle/1)

  paths ->
    for path <- paths do
      case SourceReader.parse(File.read!(path), path) do
        %{"ok" => true, "modules" => modules} ->
          functions = Enum.sum(Enum.map(modules, &length(&1["functions"])))
          IO.puts("#{path}\tok\t#{length(modules)} modules\t#{functions} functions")

        %{"error" => error} ->
          IO.puts("#{path}\terror\t#{error}")
      end
    end
end
