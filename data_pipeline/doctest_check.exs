# Runs a package's generated doctest modules against its own code, in the execution pool (see doctest_check.py,
# which puts two bindings before this text: `files`, [{relative path, source}] of the package's lib/**/*.ex, and
# `tests`, [{id, test module source}]). It compiles the files (none for the installed Elixir's own modules),
# runs every test module under ExUnit with the output of the tests themselves discarded, and prints one line per
# test module:  "doctest-check ID passed" | "doctest-check ID failed REASON" | "doctest-check ID missing WHAT"
# (a test needed a module or a file that is not here: code built from non-Elixir sources, a test fixture), or,
# when the package does not compile on its own,  "doctest-check not-compiled REASON".

defmodule DoctestCheck.Listener do
  @moduledoc "An ExUnit formatter that tells the program each test's module and how it went."
  use GenServer

  def init(opts), do: {:ok, opts}

  def handle_cast({:test_finished, %ExUnit.Test{module: module, state: state}}, opts) do
    send(:doctest_check, {:test, module, failure(state)})
    {:noreply, opts}
  end

  def handle_cast(_event, opts), do: {:noreply, opts}

  defp failure(nil), do: nil

  defp failure({:failed, [{kind, reason, stack} | _]}) do
    text = describe(kind, reason, stack)

    cond do
      match = Regex.run(~r/module (\S+) is not available/, text) -> {:missing, Enum.at(match, 1)}
      text =~ ~r/\benoent\b|no such file or directory/ -> {:missing, "a file: #{text}"}
      true -> {:failed, text}
    end
  end

  defp failure(other), do: {:failed, inspect(other)}

  defp describe(:error, %ExUnit.AssertionError{} = error, _stack),
    do: "#{error.message}: #{Macro.to_string(error.expr)} (got #{inspect(error.left)})"

  defp describe(kind, reason, stack), do: Exception.format_banner(kind, reason, stack)
end

defmodule DoctestCheck do
  @moduledoc "Compiles the package, then runs the test modules and prints a verdict for each."

  def run(files, tests) do
    Process.register(self(), :doctest_check)

    case compile(files) do
      :ok -> Enum.each(run_tests(tests), &IO.puts/1)
      {:error, reason} -> IO.puts("doctest-check not-compiled #{one_line(reason)}")
    end
  end

  defp compile([]), do: :ok

  defp compile(files) do
    Code.compiler_options(docs: false, debug_info: false)

    paths =
      for {path, source} <- files do
        File.mkdir_p!(Path.dirname(path))
        File.write!(path, source)
        path
      end

    case Kernel.ParallelCompiler.compile(paths) do
      {:ok, _modules, _warnings} -> :ok
      {:error, [error | _], _warnings} -> {:error, error_message(error)}
    end
  end

  defp error_message({file, position, message}), do: "#{Path.relative_to_cwd(file)}:#{inspect(position)}: #{message}"
  defp error_message(%{file: file, position: position, message: message}), do: error_message({file, position, message})

  defp run_tests(tests) do
    ExUnit.start(autorun: false, formatters: [DoctestCheck.Listener], seed: 0, timeout: 10_000)

    {modules, unloadable} =
      Enum.reduce(tests, {%{}, []}, fn {id, source}, {modules, unloadable} ->
        try do
          [{module, _} | _] = Code.compile_string(source, "doctest_#{id}.exs")
          {Map.put(modules, module, id), unloadable}
        rescue
          error ->
            verdict = "doctest-check #{id} failed does not compile: #{one_line(Exception.message(error))}"
            {modules, [verdict | unloadable]}
        end
      end)

    leader = Process.group_leader()
    {:ok, sink} = StringIO.open("")
    Process.group_leader(self(), sink)
    ExUnit.run()
    Process.group_leader(self(), leader)
    failures = collect(%{})

    verdicts =
      for {module, id} <- modules do
        case Map.fetch(failures, module) do
          {:ok, nil} -> "doctest-check #{id} passed"
          {:ok, {outcome, what}} -> "doctest-check #{id} #{outcome} #{one_line(what)}"
          :error -> "doctest-check #{id} failed no test ran"
        end
      end

    Enum.reverse(unloadable) ++ verdicts
  end

  # The worst outcome of each test module's tests: a failure, else something missing, else nil (all passed).
  defp collect(failures) do
    receive do
      {:test, module, failure} -> collect(Map.update(failures, module, failure, &worse(&1, failure)))
    after
      0 -> failures
    end
  end

  defp worse({:failed, _} = failed, _), do: failed
  defp worse(_, {:failed, _} = failed), do: failed
  defp worse(nil, other), do: other
  defp worse(missing, _), do: missing

  defp one_line(text), do: text |> String.replace(~r/\s+/, " ") |> String.slice(0, 300)
end

DoctestCheck.run(files, tests)
