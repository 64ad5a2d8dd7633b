# Runs a package's verification jobs in the execution pool (see verify.py, which puts one binding before this
# text: `input`, the Base64 of an Erlang term %{"lib" => [{path, source}], "tests" => [{id, path, source}],
# "helper" => source | nil, "test_timeout_ms" => ms, "jobs" => [job]}).
#
# It writes the test files and lib/**/*.ex to disk, compiles the lib as a package (to _build/ebin, with docs,
# so that `doctest Mod` works), evaluates test_helper.exs, then runs each job and prints one line per result:
# "kinds-check " <> Base64(zlib(term_to_binary(result))). Where the package does not compile as a whole, each
# file is compiled on its own instead ("alone"). Jobs that run tests come first (verify.py orders them): a
# compile-error mutant may leave an in-memory module behind, which `doctest` could not read.
#
#   {"compile", id, code}     compile a module (a snippet) here -> passed | failed | missing
#   {"file", id, path}        the lib file compiles (with the package, or alone) -> passed | failed | missing
#   {"parse", id, code}       the code reads as Elixir -> passed | failed
#   {"test", id, test_id}     the test file passes against the package -> passed | failed | missing | no tests
#                             | not compiled (the test file) | not run (the package does not compile)
#   {"mutate", id, path, mode, count, seed, test_ids}
#       up to `count` mutants of functions of `path`, one per function: mode "compile" (misspelt variable,
#       wrong arity, missing `end`: the original must compile, the mutant must not) or "test" (swapped
#       operator, dropped clause: the mutant must compile and fail one of the tests `test_ids` that pass
#       against the original). Each mutant's result has the function, the edit (lines replaced), its status
#       and the compiler's or ExUnit's output.

defmodule KindsCheck.Listener do
  @moduledoc "An ExUnit formatter that tells the program how each test went, failures formatted as ExUnit prints them."
  use GenServer

  def init(opts), do: {:ok, opts}

  def handle_cast({:test_finished, %ExUnit.Test{state: state} = test}, opts) do
    send(:kinds_check, {:test, outcome(test, state)})
    {:noreply, opts}
  end

  def handle_cast(_event, opts), do: {:noreply, opts}

  defp outcome(_test, nil), do: :passed
  defp outcome(_test, {kind, _}) when kind in [:excluded, :skipped, :invalid], do: kind

  defp outcome(test, {:failed, [{_kind, reason, _stack} | _] = failures}) do
    text = ExUnit.Formatter.format_test_failure(test, failures, 1, 100, fn _key, message -> message end)

    cond do
      missing?(inspect(reason) <> text) -> {:missing, text}
      true -> {:failed, text}
    end
  end

  @missing [
    ~r/module \S+ is not available|is not loaded and could not be found|__struct__\/[01] is undefined/,
    ~r/\benoent\b|no such file or directory|could not read file/,
    # a compile-time `Mix.Project.config()`: there is no Mix project here
    ~r/Mix.ProjectStack/
  ]

  def missing?(text), do: Enum.any?(@missing, &(text =~ &1))
end

defmodule KindsCheck do
  @moduledoc "Compiles the package, runs the jobs, prints a result per job."
  alias KindsCheck.{Listener, Mutants}

  @output_chars 1500
  @ebin "_build/ebin"

  def run(input) do
    Process.register(self(), :kinds_check)
    Code.compiler_options(ignore_module_conflict: true, docs: true, debug_info: false)
    ExUnit.start(autorun: false, formatters: [Listener], seed: 0)

    for {path, source} <- input["lib"] ++ for({_id, path, source} <- input["tests"], do: {path, source}) do
      File.mkdir_p!(Path.dirname(path))
      File.write!(path, source)
    end

    context = %{
      lib: Map.new(input["lib"]),
      tests: Map.new(input["tests"], fn {id, path, source} -> {id, {path, source}} end),
      package: compile_package(input["lib"]),
      alone: %{},
      baseline: %{}
    }

    context = Map.put(context, :helper, helper(context, input["helper"]))
    ExUnit.configure(formatters: [Listener], autorun: false, seed: 0, timeout: input["test_timeout_ms"])
    report(%{"id" => "package", "status" => package_status(context.package)})
    Enum.reduce(input["jobs"], context, &job/2)
  end

  defp report(result),
    do: IO.puts("kinds-check " <> Base.encode64(:zlib.compress(:erlang.term_to_binary(result))))

  defp package_status(:compiled), do: "compiled"
  defp package_status({:not_compiled, reason}), do: "not compiled: " <> one_line(reason)

  defp compile_package(lib) do
    paths = for {path, _} <- lib, String.ends_with?(path, ".ex"), do: path
    File.mkdir_p!(@ebin)
    Code.prepend_path(@ebin)
    {result, _warnings} = quiet(fn -> Kernel.ParallelCompiler.compile_to_path(paths, @ebin) end)

    case result do
      {:ok, _, _} -> :compiled
      {:error, [{file, _, message} | _], _} -> {:not_compiled, "#{Path.relative_to_cwd(file)}: #{message}"}
      {:raised, message} -> {:not_compiled, message}
    end
  end

  defp helper(%{package: :compiled}, source) when is_binary(source) do
    {result, _} = quiet(fn -> Code.eval_string(source, [], file: "test/test_helper.exs") end)

    case result do
      {:raised, message} -> {:failed, "test_helper.exs: " <> message}
      _ -> :ok
    end
  end

  defp helper(_context, _source), do: :ok

  # --- jobs -------------------------------------------------------------------------------------------

  defp job({"compile", id, code}, context) do
    {result, warnings} = quiet(fn -> Code.compile_string(code, "snippet.ex") end)

    status =
      case result do
        {:raised, message} ->
          if Listener.missing?(message), do: "missing", else: "failed"

        _ ->
          if warnings =~ "undefined module attribute", do: "failed", else: "passed"
      end

    report(with_output(%{"id" => id, "status" => status}, error_text(result, warnings)))
    context
  end

  defp job({"file", id, path}, context) do
    {status, output, context} = original_compiles(context, path)
    report(with_output(%{"id" => id, "status" => status}, output))
    context
  end

  defp job({"parse", id, code}, context) do
    status = if match?({:ok, _}, Code.string_to_quoted(code)), do: "passed", else: "failed"
    report(%{"id" => id, "status" => status})
    context
  end

  defp job({"test", id, test_id}, context) do
    result = run_test(context, test_id)
    report(Map.merge(%{"id" => id}, result))
    context
  end

  defp job({"mutate", id, path, mode, count, seed, test_ids}, context) do
    source = Map.fetch!(context.lib, path)
    {status, output, context} = original_compiles(context, path)

    cond do
      mode == "test" and context.package != :compiled ->
        report(%{"id" => id, "status" => "package does not compile on its own"})
        context

      status != "passed" ->
        report(%{"id" => id, "status" => "original does not compile here", "output" => clip(output)})
        context

      true ->
        context = if mode == "test", do: baseline(context, test_ids), else: context
        passing = Enum.filter(test_ids, &(context.baseline[&1] == "passed"))

        if mode == "test" and passing == [] do
          report(%{"id" => id, "status" => "no test that passes exercises the file"})
        else
          mutants = Mutants.choose(path, source, mode, count, seed)
          report(%{"id" => id, "status" => "mutated", "mutants" => length(mutants)})
          known = if mode == "compile", do: warning_blocks(elem(quiet(fn -> Code.compile_string(source, path) end), 1))

          for {mutant, index} <- Enum.with_index(mutants) do
            result = check_mutant(context, path, source, mode, mutant, passing, known)
            report(Map.merge(Map.put(mutant, "id", "#{id}:#{index}"), result))
          end
        end

        context
    end
  end

  # How the tests go against the original package, run once per program (a mutant's package is restored).
  defp baseline(context, test_ids) do
    Enum.reduce(test_ids, context, fn test_id, context ->
      if Map.has_key?(context.baseline, test_id),
        do: context,
        else: put_in(context.baseline[test_id], run_test(context, test_id)["status"])
    end)
  end

  defp with_output(%{"status" => "passed"} = result, _output), do: result
  defp with_output(result, output), do: Map.put(result, "output", clip(output))

  # Whether `path` compiles: with the package, or else on its own (remembered per file).
  defp original_compiles(%{package: :compiled} = context, _path), do: {"passed", "", context}

  defp original_compiles(context, path) do
    case context.alone do
      %{^path => {status, output}} ->
        {status, output, context}

      _ ->
        {result, warnings} = quiet(fn -> Code.compile_string(Map.fetch!(context.lib, path), path) end)

        {status, output} =
          case result do
            {:raised, message} -> {if(Listener.missing?(message), do: "missing", else: "failed"), message}
            _ -> {"passed", warnings}
          end

        {status, output, put_in(context.alone[path], {status, output})}
    end
  end

  defp check_mutant(context, path, source, "compile", mutant, _passing, known) do
    mutated = Mutants.apply_edit(source, mutant["edit"])

    case quiet(fn -> Code.compile_string(mutated, path) end) do
      {{:raised, message}, warnings} ->
        new_warnings = Enum.reject(warning_blocks(warnings), &(&1 in known))
        %{"status" => "verified", "output" => clip(compile_error(path, message, new_warnings))}

      _compiled ->
        restore(context, path, source)
        %{"status" => "mutant compiles"}
    end
  end

  # The mutant replaces the file's modules in _build/ebin (their docs stay readable), and the original after.
  defp check_mutant(context, path, source, "test", mutant, passing, _known) do
    File.write!(path, Mutants.apply_edit(source, mutant["edit"]))

    outcome =
      case quiet(fn -> Kernel.ParallelCompiler.compile_to_path([path], @ebin) end) do
        {{:ok, _, _}, _} ->
          failure =
            Enum.find_value(passing, fn test_id ->
              result = run_test(context, test_id)
              if result["status"] == "failed", do: result["output"]
            end)

          if failure, do: %{"status" => "verified", "output" => clip(failure)}, else: %{"status" => "tests still pass"}

        {other, _} ->
          %{"status" => "mutant does not compile", "output" => clip(inspect(other))}
      end

    restore(context, path, source)
    outcome
  end

  defp restore(%{package: :compiled}, path, source) do
    File.write!(path, source)
    quiet(fn -> Kernel.ParallelCompiler.compile_to_path([path], @ebin) end)
  end

  defp restore(_context, path, source), do: quiet(fn -> Code.compile_string(source, path) end)

  # What `mix compile` shows: the warnings (here those the original does not have), then the error.
  defp compile_error(path, message, warnings) do
    Enum.join(warnings ++ ["== Compilation error in file #{path} ==\n" <> message], "\n\n")
  end

  defp warning_blocks(text), do: text |> String.split(~r/\n\s*\n/, trim: true) |> Enum.map(&String.trim/1)

  defp error_text({:raised, message}, warnings), do: String.trim(warnings <> "\n" <> message)
  defp error_text(_result, warnings), do: warnings

  # --- tests ------------------------------------------------------------------------------------------

  defp run_test(%{package: {:not_compiled, _}}, _test_id),
    do: %{"status" => "not run", "output" => "the package does not compile on its own"}

  defp run_test(%{helper: {:failed, reason}}, _test_id), do: %{"status" => "not run", "output" => clip(reason)}

  defp run_test(context, test_id) do
    {path, source} = Map.fetch!(context.tests, test_id)
    {compiled, _warnings} = quiet(fn -> Code.compile_string(source, path) end)

    case compiled do
      {:raised, message} ->
        status = if Listener.missing?(message), do: "missing", else: "not compiled"
        %{"status" => status, "output" => clip("the test file does not compile: " <> message)}

      _ ->
        leader = Process.group_leader()
        {:ok, sink} = StringIO.open("")
        Process.group_leader(self(), sink)
        ExUnit.run()
        Process.group_leader(self(), leader)
        summarize(collect([]))
    end
  end

  defp collect(outcomes) do
    receive do
      {:test, outcome} -> collect([outcome | outcomes])
    after
      0 -> Enum.reverse(outcomes)
    end
  end

  defp summarize(outcomes) do
    ran = Enum.reject(outcomes, &(&1 in [:excluded, :skipped, :invalid]))
    failed = for {:failed, text} <- ran, do: text
    missing = for {:missing, text} <- ran, do: text

    cond do
      ran == [] -> %{"status" => "no tests"}
      failed != [] -> %{"status" => "failed", "output" => hd(failed), "tests" => length(ran)}
      missing != [] -> %{"status" => "missing", "output" => hd(missing), "tests" => length(ran)}
      true -> %{"status" => "passed", "tests" => length(ran)}
    end
  end

  # --- helpers ----------------------------------------------------------------------------------------

  # Runs `fun` with its standard error captured; a raise becomes {:raised, banner}. Returns {result, stderr}.
  defp quiet(fun) do
    parent = self()

    warnings =
      ExUnit.CaptureIO.capture_io(:stderr, fn ->
        result =
          try do
            fun.()
          rescue
            error -> {:raised, Exception.format_banner(:error, error, __STACKTRACE__)}
          catch
            kind, reason -> {:raised, Exception.format_banner(kind, reason, __STACKTRACE__)}
          end

        send(parent, {:quiet_result, result})
      end)

    receive do
      {:quiet_result, result} -> {result, warnings}
    end
  end

  defp clip(text) when is_binary(text) do
    text = String.trim_trailing(text)
    if String.length(text) > @output_chars, do: String.slice(text, 0, @output_chars) <> "\n...", else: text
  end

  defp one_line(text), do: text |> String.replace(~r/\s+/, " ") |> String.slice(0, 300)
end

defmodule KindsCheck.Mutants do
  @moduledoc """
  Small, real mistakes in a function, as edits of the source text: whole lines replaced, so the mutant is the
  original with one mistake and nothing reformatted.
  """

  @swaps %{
    :+ => "-",
    :- => "+",
    :* => "+",
    :== => "!=",
    :!= => "==",
    :=== => "!==",
    :!== => "===",
    :< => "<=",
    :<= => "<",
    :> => ">=",
    :>= => ">",
    :and => "or",
    :or => "and",
    :&& => "||",
    :|| => "&&"
  }
  @definitions [:def, :defp, :defmacro, :defmacrop, :defguard, :defguardp, :defdelegate]
  @kinds %{
    "compile" => ["misspelt variable", "wrong arity", "missing end"],
    "test" => ["swapped operator", "dropped clause"]
  }

  @doc """
  Up to `count` mutants of distinct functions of `source`, in an order fixed by `seed`, the kinds of mistake
  taken in turn.
  """
  def choose(path, source, mode, count, seed) do
    lines = String.split(source, "\n")
    {:ok, ast} = Code.string_to_quoted(source, columns: true, token_metadata: true, emit_warnings: false)

    sites =
      for function <- functions(ast),
          kind <- @kinds[mode],
          site <- sites(kind, function, lines),
          do: site

    order = &:erlang.phash2({seed, path, &1["function"], &1["arity"], &1["operator"], &1["edit"]})

    sites
    |> Enum.sort_by(order)
    |> Enum.group_by(&{&1["function"], &1["arity"]})
    |> Enum.sort_by(fn {_function, [first | _]} -> order.(first) end)
    |> Enum.with_index()
    |> Enum.map(fn {{_function, ordered}, index} ->
      preferred = Enum.at(@kinds[mode], rem(index, length(@kinds[mode])))
      Enum.find(ordered, hd(ordered), &(&1["operator"] == preferred))
    end)
    |> Enum.take(count)
  end

  def apply_edit(source, [first, last, replacement]) do
    lines = String.split(source, "\n")
    Enum.join(Enum.take(lines, first - 1) ++ replacement ++ Enum.drop(lines, last), "\n")
  end

  # --- functions: def/defp written as plain clauses, contiguous, in a named module --------------------

  defp functions(ast) do
    ast
    |> module_bodies(nil)
    |> Enum.flat_map(fn {module, exprs} ->
      defined =
        for {kind, _, [head | _]} <- exprs, kind in @definitions, {name, args} = call_of(head), name != nil,
            into: MapSet.new(),
            do: {name, length(args)}

      clauses =
        for {kind, meta, [head | _]} = node <- exprs,
            kind in [:def, :defp],
            {name, args} = call_of(head),
            name != nil,
            do: %{name: name, arity: length(args), node: node, first: meta[:line], last: last_line(node)}

      groups = Enum.chunk_by(clauses, &{&1.name, &1.arity})
      contiguous = groups |> Enum.frequencies_by(fn [clause | _] -> {clause.name, clause.arity} end)

      for [first | _] = group <- groups, contiguous[{first.name, first.arity}] == 1 do
        %{module: module, name: first.name, arity: first.arity, clauses: group, first: first.first,
          last: List.last(group).last, defined: defined}
      end
    end)
  end

  defp module_bodies(ast, parent) do
    for {:defmodule, _, [alias_ast, [{:do, body} | _]]} <- expressions(ast),
        name = module_name(alias_ast, parent),
        result <- [{name, expressions(body)} | module_bodies(body, name)],
        do: result
  end

  defp module_name({:__aliases__, _, parts}, parent) do
    name = Enum.map_join(parts, ".", &if(is_atom(&1), do: Atom.to_string(&1), else: Macro.to_string(&1)))
    if parent, do: parent <> "." <> name, else: name
  end

  defp module_name(other, _parent), do: Macro.to_string(other)

  defp expressions({:__block__, _, exprs}), do: exprs
  defp expressions(nil), do: []
  defp expressions(expr), do: [expr]

  defp call_of({:when, _, [call | _]}), do: call_of(call)
  defp call_of({name, _, args}) when is_atom(name) and is_list(args), do: {Atom.to_string(name), args}
  defp call_of({name, _, context}) when is_atom(name) and is_atom(context), do: {Atom.to_string(name), []}
  defp call_of(_), do: {nil, []}

  defp last_line(node) do
    {_, max} =
      Macro.prewalk(node, 0, fn
        {_, meta, _} = n, acc when is_list(meta) ->
          lines = for key <- [:end, :closing, :end_of_expression], line = get_in(meta, [key, :line]), do: line
          {n, Enum.max([acc, meta[:line] || 0 | lines])}

        n, acc ->
          {n, acc}
      end)

    max
  end

  # --- sites ----------------------------------------------------------------------------------------

  defp site(function, kind, edit) do
    %{"module" => function.module, "function" => function.name, "arity" => function.arity, "operator" => kind,
      "span" => [function.first, function.last], "edit" => edit}
  end

  defp sites("swapped operator", function, lines) do
    for clause <- function.clauses,
        {op, meta, [_, _]} <- nodes(clause.node),
        replacement = @swaps[op],
        edit = replace_at(lines, meta[:line], meta[:column], Atom.to_string(op), replacement),
        do: site(function, "swapped operator", edit)
  end

  defp sites("dropped clause", %{clauses: [_, _ | _] = clauses} = function, _lines) do
    for clause <- tl(clauses), clause_alone?(clause, clauses) do
      site(function, "dropped clause", [clause.first, clause.last, []])
    end
  end

  defp sites("dropped clause", _function, _lines), do: []

  defp sites("misspelt variable", function, lines) do
    for clause <- function.clauses,
        {name, occurrences} <- variables(clause.node),
        length(occurrences) >= 2,
        misspelt = misspell(name),
        misspelt != nil,
        not Map.has_key?(variables(clause.node), misspelt),
        meta <- tl(occurrences),
        edit = replace_at(lines, meta[:line], meta[:column], Atom.to_string(name), Atom.to_string(misspelt)),
        do: site(function, "misspelt variable", edit)
  end

  defp sites("wrong arity", function, lines) do
    for clause <- function.clauses,
        {_, _, [_head | body]} = clause.node,
        piped = piped_calls(body),
        {name, meta, [_ | _] = args} = call <- nodes(body),
        is_atom(name),
        call not in piped,
        MapSet.member?(function.defined, {Atom.to_string(name), length(args)}),
        edit = drop_last_argument(lines, meta, args),
        do: site(function, "wrong arity", edit)
  end

  defp sites("missing end", function, lines) do
    for clause <- function.clauses,
        {_, meta, _} <- nodes(clause.node),
        is_list(meta),
        line = get_in(meta, [:end, :line]),
        is_integer(line),
        String.trim(Enum.at(lines, line - 1, "")) == "end",
        uniq: true,
        do: site(function, "missing end", [line, line, []])
  end

  defp clause_alone?(clause, clauses) do
    Enum.all?(clauses, fn other -> other == clause or other.last < clause.first or other.first > clause.last end)
  end

  defp nodes(ast) do
    {_, found} =
      Macro.prewalk(ast, [], fn
        {:quote, _, _}, acc -> {nil, acc}
        node, acc -> {node, [node | acc]}
      end)

    Enum.reverse(found)
  end

  defp piped_calls(ast), do: for({:|>, _, [_, call]} <- nodes(ast), do: call)

  defp variables(ast) do
    ast
    |> nodes()
    |> Enum.flat_map(fn
      {name, meta, context} when is_atom(name) and is_atom(context) and is_list(meta) ->
        if meta[:column] && not String.starts_with?(Atom.to_string(name), "_"), do: [{name, meta}], else: []

      _ ->
        []
    end)
    |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
  end

  # A letter doubled: `acc` -> `accc`, `value` -> `vallue` (a plausible slip that names no other variable).
  defp misspell(name) do
    text = Atom.to_string(name)
    half = div(String.length(text), 2)
    if half < 1, do: nil, else: String.to_atom(String.slice(text, 0, half + 1) <> String.slice(text, half..-1//1))
  end

  defp replace_at(lines, line, column, old, new) when is_integer(line) and is_integer(column) do
    text = Enum.at(lines, line - 1, "")
    chars = String.to_charlist(text)
    {before, rest} = Enum.split(chars, column - 1)
    old_chars = String.to_charlist(old)

    if List.starts_with?(rest, old_chars) and not identifier_continues?(rest, old_chars) do
      [line, line, [List.to_string(before ++ String.to_charlist(new) ++ Enum.drop(rest, length(old_chars)))]]
    end
  end

  defp replace_at(_lines, _line, _column, _old, _new), do: nil

  defp identifier_continues?(rest, old_chars) do
    case Enum.drop(rest, length(old_chars)) do
      [char | _] -> List.last(old_chars) in ?a..?z and (char in ?a..?z or char in ?0..?9 or char == ?_)
      [] -> false
    end
  end

  # `f(a, b)` -> `f(a)`: the text from the last comma to the closing parenthesis goes, when all on one line.
  defp drop_last_argument(lines, meta, args) do
    line = meta[:line]
    closing = meta[:closing] || []

    with true <- closing[:line] == line,
         {:ok, start} <- argument_start(List.last(args), line) do
      chars = String.to_charlist(Enum.at(lines, line - 1, ""))
      cut_from = if length(args) == 1, do: start - 1, else: comma_before(chars, start - 1)

      if cut_from do
        [line, line, [List.to_string(Enum.take(chars, cut_from) ++ Enum.drop(chars, closing[:column] - 1))]]
      end
    else
      _ -> nil
    end
  end

  # Where an argument written on `line` starts: the leftmost position in its metadata. Literals, lists and
  # pairs carry none of their own, so they are left alone.
  defp argument_start({_, meta, _} = arg, line) when is_list(meta) do
    positions =
      for {_, meta, _} <- nodes(arg), is_list(meta), meta[:line] == line, column = meta[:column], do: column

    if positions != [] and Enum.all?(nodes(arg), &on_line?(&1, line)), do: {:ok, Enum.min(positions)}, else: :error
  end

  defp argument_start(_arg, _line), do: :error

  defp on_line?({_, meta, _}, line) when is_list(meta), do: meta[:line] in [nil, line]
  defp on_line?(_node, _line), do: true

  # The index of the comma before `index` (0-based), past white space only.
  defp comma_before(chars, index) do
    case chars |> Enum.take(index) |> Enum.reverse() |> Enum.drop_while(&(&1 in [?\s, ?\t])) do
      [?, | rest] -> length(rest)
      _ -> nil
    end
  end
end

KindsCheck.run(:erlang.binary_to_term(Base.decode64!(input)))
