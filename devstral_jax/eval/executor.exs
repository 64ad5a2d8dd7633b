# The execution server: runs one Elixir program per request exactly as `elixir file.exs` would (Elixir 1.14's
# Kernel.CLI: the file in its own process, then the `System.at_exit` hooks, so ExUnit runs the tests and sets the
# exit status), captures its output, and then removes every trace of it from this VM: its processes, modules,
# applications, environment, files. Started by devstral_jax/eval/pool.py through devstral_jax/elixir/worker.py,
# which defines ElixirWorker.serve/1. Argument: the scratch directory (the only place a program may write).
# DevstralEval.TestCache reuses a problem's compiled test module across its samples where that provably runs the
# same program (see its moduledoc).

defmodule DevstralEval.Capture do
  @moduledoc "An IO device that keeps the first `limit` bytes written to it: a program's stdout or stderr."

  def start(limit), do: spawn(fn -> loop(limit, [], 0) end)

  def contents(device), do: ask(device, :contents, "")

  @doc "How many bytes were written to `device` so far (kept or not)."
  def size(device), do: ask(device, :size, nil)

  defp ask(device, question, default) do
    ref = make_ref()
    send(device, {question, self(), ref})

    receive do
      {^ref, answer} -> answer
    after
      1000 -> default
    end
  end

  defp loop(limit, acc, size) do
    receive do
      {:io_request, from, reply_as, request} ->
        {reply, acc, size} = request(request, limit, acc, size)
        send(from, {:io_reply, reply_as, reply})
        loop(limit, acc, size)

      {:contents, from, ref} ->
        send(from, {ref, IO.iodata_to_binary(Enum.reverse(acc))})
        loop(limit, acc, size)

      {:size, from, ref} ->
        send(from, {ref, size})
        loop(limit, acc, size)
    end
  end

  defp request({:put_chars, encoding, chars}, limit, acc, size) do
    case :unicode.characters_to_binary(chars, encoding, :unicode) do
      text when is_binary(text) and size >= limit -> {:ok, acc, size + byte_size(text)}
      text when is_binary(text) -> {:ok, [binary_part(text, 0, min(byte_size(text), limit - size)) | acc], size + byte_size(text)}
      _ -> {{:error, :put_chars}, acc, size}
    end
  end

  defp request({:put_chars, encoding, m, f, a}, limit, acc, size),
    do: request({:put_chars, encoding, apply(m, f, a)}, limit, acc, size)

  defp request({:put_chars, chars}, limit, acc, size), do: request({:put_chars, :latin1, chars}, limit, acc, size)
  defp request({:put_chars, m, f, a}, limit, acc, size), do: request({:put_chars, :latin1, m, f, a}, limit, acc, size)

  defp request({:requests, requests}, limit, acc, size) do
    Enum.reduce(requests, {:ok, acc, size}, fn request, {_, acc, size} -> request(request, limit, acc, size) end)
  end

  defp request(:getopts, _limit, acc, size), do: {[binary: true, encoding: :unicode], acc, size}
  defp request({:setopts, _}, _limit, acc, size), do: {:ok, acc, size}
  defp request({:get_geometry, _}, _limit, acc, size), do: {{:error, :enotsup}, acc, size}
  # Reads: stdin is empty, as for `elixir file.exs < /dev/null`.
  defp request(_read, _limit, acc, size), do: {:eof, acc, size}
end

defmodule DevstralEval.Script do
  @moduledoc """
  Runs a script file as `elixir file.exs` does (Kernel.CLI.run/1 and exec_fun/2 of Elixir 1.14): the file in its
  own process, then every `System.at_exit` hook with the running exit status. An uncaught raise prints
  `** (Error) ...` to stderr and makes the status 1; `exit({:shutdown, n})` makes it n (ExUnit's hook does that
  when a test fails). Returns `{status, error}`: the exit status and the module name of the exception that
  stopped the file from loading, if one did; or `{:abort, reason}` when a reused test module turned out not to
  apply (DevstralEval.TestCache), before any test ran.
  """

  def run(path, plan) do
    case exec(fn _ -> DevstralEval.TestCache.require_file(path, plan) end, {:ok, 0}) do
      {:abort, reason} ->
        {:abort, reason}

      {result, error} ->
        {_, status} = at_exit(result)
        {status, error}
    end
  end

  defp at_exit(result) do
    hooks = :elixir_config.get_and_put(:at_exit, [])
    result = Enum.reduce(hooks, result, fn hook, result -> elem(exec(hook, result), 0) end)
    if hooks == [], do: result, else: at_exit(result)
  end

  defp exec(fun, result) do
    parent = self()

    {pid, ref} =
      spawn_monitor(fn ->
        try do
          fun.(elem(result, 1))
        catch
          :throw, {DevstralEval.TestCache, :abort, reason} ->
            send(parent, {self(), :abort, reason})

          :exit, {:shutdown, int} when is_integer(int) ->
            send(parent, {self(), {:shutdown, int}, nil})
            exit({:shutdown, int})

          :exit, reason when reason in [:normal, :shutdown] or (is_tuple(reason) and elem(reason, 0) == :shutdown) ->
            send(parent, {self(), {:shutdown, 0}, nil})
            exit(reason)

          kind, reason ->
            print_error(kind, reason, __STACKTRACE__)
            send(parent, {self(), {:shutdown, 1}, error_name(kind, reason)})
            exit(to_exit(kind, reason, __STACKTRACE__))
        else
          _ -> send(parent, {self(), result, nil})
        end
      end)

    receive do
      {^pid, result, error} ->
        Process.demonitor(ref, [:flush])
        {result, error}

      {:DOWN, ^ref, _, _, other} ->
        print_error({:EXIT, pid}, other, [])
        {{:shutdown, 1}, "EXIT"}
    end
  end

  defp print_error(kind, reason, stacktrace) do
    {blamed, stacktrace} = Exception.blame(kind, reason, stacktrace)
    IO.write(:stderr, [Exception.format_banner(kind, blamed, stacktrace), ?\n, Exception.format_stacktrace(stacktrace)])
  end

  defp error_name(:error, reason), do: inspect(Exception.normalize(:error, reason).__struct__)
  defp error_name(kind, _reason), do: Atom.to_string(kind)

  defp to_exit(:throw, reason, stack), do: {{:nocatch, reason}, stack}
  defp to_exit(:error, reason, stack), do: {reason, stack}
  defp to_exit(:exit, reason, _stack), do: reason
end

defmodule DevstralEval.TestCache do
  @moduledoc """
  Compiles a problem's test module once per worker and reuses its BEAM for the problem's other samples, where
  that provably runs the same program as `elixir file.exs`. Elixir 1.14 loads a file by parsing it whole,
  compiling its top level into a throw-away module and running it; each `defmodule` there compiles its body
  (another throw-away module, run) and then the module. The tests' `elixir_module:compile/4` is a function of
  its AST, the caller's environment, the global state its expansion reads and the modules it depends on at
  compile time; we reuse its result only where all four are the same:

    * AST: the program's parse (the one Code.require_file makes) ends with the tests' own forms parsed alone at
      the line where they start, metadata included: `ExUnit.start()` and the test module, whose body uses only
      ExUnit's declarations (no `@after_compile`, `@on_load`, `unquote`, `doctest` or non-literal attribute:
      nothing runs at compile time beyond ExUnit's macros). The candidate's forms before them are root
      `defmodule`s of new modules (no top-level code, import, alias or variable can reach the tests).
    * Environment: at the test module it is a function of those forms: the candidate modules' names are in the
      key the reusable module is kept under.
    * Global state: compiler options, working directory, code path, OS and application environment, the
      compiling process's flags and compiler keys, recorded where the module was compiled and compared where it
      is reused; the lexical tracker must hold no unused import or alias (the tests' imports would decide
      their warnings) and the test module must not be defined.
    * Compile-time dependencies: the lexical tracker's compile and export references of the test module (what
      Mix recompiles on) must all be the test module itself or modules shipped with Elixir/OTP (a program that
      redefines one is run again whole); runtime references (the candidate's functions) do not change it.

  The reusable module comes from a neutral run (`compile_neutral/2`: the candidate's root modules empty, then
  the tests), checked to print nothing and change no global state. A reuse (`require_file/2` with a `{:reuse,
  ...}` plan) compiles the candidate's modules the way Elixir compiles a file of `defmodule`s only (without the
  throw-away top-level module: stack frames below `elixir_module:compile/5` are the only difference, so an
  exception whose printed frames reach them aborts), runs `ExUnit.start()`, and then does what
  `elixir_module:compile/4` does for the tests besides compiling: the checker of their calls (with the
  recorded module map, so its warnings are the ones this candidate earns), loading, ExUnit.Case's
  `@after_compile` registration. Where a check fails the attempt is aborted (`{:abort, reason}`) before any
  test ran, and the program is run again whole.
  """

  # The compiler internals this relies on (elixir_compiler:quoted/3 and fast_compile, the lexical tracker's
  # state, the checker, ExUnit.Case's callbacks) were read in Elixir 1.14's source; elsewhere every program is
  # compiled whole.
  @verified_versions ~r/^1\.14\./
  @max_artifacts 64
  # The modules of a file's top level and of this one: a stack reaching them was raised outside a module.
  @top_level [:elixir_compiler, :elixir_lexical, Module.ParallelChecker, __MODULE__]
  # Erlang's default backtrace depth: a stack trace shows at most this many frames.
  @depth 8

  def enabled?, do: Regex.match?(@verified_versions, System.version())

  @doc """
  Code.require_file/2 of Elixir 1.14 (read, acquire, parse, compile inside the checker), compiling the parsed
  forms as `plan` says: `:whole`, or `{:reuse, test_forms, artifact}` (see the moduledoc).
  """
  def require_file(path, plan) do
    path = Path.expand(path)
    chars = String.to_charlist(File.read!(path))

    case :elixir_code_server.call({:acquire, path}) do
      :required ->
        nil

      :proceed ->
        loaded =
          Module.ParallelChecker.verify(fn ->
            forms = :elixir.string_to_quoted!(chars, 1, 1, path, :elixir_config.get(:parser_options))

            case plan do
              :whole -> :elixir_compiler.quoted(forms, path, fn _, _ -> :ok end)
              {:reuse, test_forms, artifact} -> reuse(forms, path, test_forms, artifact)
            end
          end)

        :elixir_code_server.cast({:required, path})
        loaded
    end
  end

  defp reuse({:__block__, meta, forms}, path, test_forms, artifact) do
    {candidate, tests} = Enum.split(forms, -2)
    if tests != test_forms, do: abort("the program parses differently from its plan")

    loaded =
      guard(fn ->
        :elixir_compiler.quoted({:__block__, meta, candidate}, path, fn _, tracker ->
          # The whole file's tracker would have seen the tests' imports before warning about unused ones.
          if not clean_tracker?(tracker), do: abort("the completion has an unused import or alias")
        end)
      end)

    guard(fn -> ExUnit.start() end)
    loaded ++ [load(artifact)]
  end

  defp reuse(_forms, _path, _test_forms, _artifact), do: abort("the program parses differently from its plan")

  # Runs `fun` (part of the file); an exception it raises is re-raised if its stack trace prints the same as the
  # whole file's would (it ends before the file's top level), else the attempt is aborted.
  defp guard(fun) do
    fun.()
  catch
    :throw, {__MODULE__, :abort, _} = abort ->
      throw(abort)

    kind, reason ->
      if whole_stack?(__STACKTRACE__),
        do: :erlang.raise(kind, reason, __STACKTRACE__),
        else: abort("the completion raised while its modules were defined")
  end

  # Whether `stack` prints the same as the whole file's: the two differ only below elixir_module:compile/5,
  # where the whole file has its top level (and a stack trace shows at most @depth frames).
  defp whole_stack?(stack) do
    case Enum.split_while(stack, &(not match?({:elixir_module, :compile, 5, _}, &1))) do
      {_above, [_compile]} -> length(stack) == @depth
      {_above, [_compile | _below]} -> false
      # Cut off above it, or raised in another process (a module's Erlang compilation): its own stack.
      {_, []} -> not Enum.any?(stack, &(elem(&1, 0) in @top_level))
    end
  end

  defp ex_unit_start, do: {{:., [], [{:__aliases__, [], [:ExUnit]}, :start]}, [], []}

  # What elixir_module:compile/4 does for the test module besides compiling it, in its order.
  defp load(%{module: module, binary: binary} = artifact) do
    cond do
      fingerprint() != artifact.fingerprint -> abort("the global state differs")
      Process.whereis(ExUnit.Server) == nil -> abort("ExUnit is not running")
      :elixir_module.is_open(module) -> abort("#{inspect(module)} is being defined")
      match?({:module, _}, :code.ensure_loaded(module)) -> abort("#{inspect(module)} is defined")
      true -> :ok
    end

    if Process.get(:elixir_checker_info) != nil do
      Module.ParallelChecker.spawn(Module.ParallelChecker.get(), module, artifact.module_map)
    end

    {:module, ^module} = :code.load_binary(module, ~c"", binary)
    # ExUnit.Case.__after_compile__/2 (it reads the open module's attribute; its persisted copy is the same).
    case Keyword.fetch(artifact.module_map.attributes, :ex_unit_async) do
      {:ok, true} -> ExUnit.Server.add_async_module(module)
      {:ok, false} -> ExUnit.Server.add_sync_module(module)
      :error -> :ok
    end

    send(artifact.server, {__MODULE__, :reused})
    {module, binary}
  end

  defp abort(reason), do: throw({__MODULE__, :abort, reason})

  # The tests' imports would mark an unused import of the same module as used: none may be pending.
  defp clean_tracker?(tracker) do
    %{imports: imports, aliases: aliases} = :sys.get_state(tracker)
    aliases == %{} and Enum.all?(imports, fn {_, pending} -> pending == %{} end)
  end

  # What a module's expansion and compilation may read besides its AST and environment.
  defp fingerprint do
    apps = for {app, _, _} <- Application.loaded_applications(), do: {app, Enum.sort(Application.get_all_env(app))}
    keys = [:elixir_compiler_dest, :elixir_compiler_info, :elixir_compiler_modules, :elixir_code_diagnostics]

    {Code.compiler_options(), File.cwd!(), :code.get_path(), System.get_env(), Enum.sort(apps),
     Process.info(self(), [:error_handler, :trap_exit]), Enum.map(keys, &Process.get/1)}
  end

  ## Planning (in the server, before the program runs)

  @doc """
  Whether `source` (a program ending with `tests`, written at `path`) can reuse a test module:
  `{:reuse, key, info}` or `{:whole, reason}`. Parses silently: the program's own run prints the warnings.
  `taken?` tells module names that exist already (loaded or on the code path): the neutral run must not
  redefine them.
  """
  def plan(source, tests, path, taken?) do
    with true <- enabled?() or {:whole, "Elixir #{System.version()} is not verified"},
         true <- String.ends_with?(source, tests) or {:whole, "the program does not end with the tests"},
         prefix = binary_part(source, 0, byte_size(source) - byte_size(tests)),
         line = length(:binary.matches(prefix, "\n")) + 1,
         {:ok, forms} <- parse(source, 1, path),
         {:ok, test_forms} <- parse_tests(tests, line, path),
         {:ok, candidate} <- tail(forms, test_forms),
         {:ok, modules} <- root_modules(candidate, taken?),
         {:ok, name} <- test_module(test_forms),
         :ok <- not_defined(name, candidate) do
      key = :erlang.md5(:erlang.term_to_binary({tests, line, path, Enum.map(modules, &elem(&1, 0))}))
      {:reuse, key, %{modules: modules, test_forms: test_forms, module: name}}
    end
  end

  defp parse(text, line, path) do
    options = [emit_warnings: false] ++ :elixir_config.get(:parser_options)

    with {:ok, tokens} <- :elixir.string_to_tokens(String.to_charlist(text), line, 1, path, options),
         {:ok, forms} <- :elixir.tokens_to_quoted(tokens, path, options) do
      {:ok, forms}
    else
      _ -> {:whole, "the program does not parse"}
    end
  end

  # The tests parsed alone, once per (tests, line) in this worker.
  defp parse_tests(tests, line, path) do
    key = {:erlang.md5(tests), line, path}
    parsed = Process.get({__MODULE__, :tests}, %{})

    case parsed do
      %{^key => forms} ->
        forms

      %{} ->
        forms = with {:ok, forms} <- parse(tests, line, path), do: {:ok, block(forms)}
        parsed = if map_size(parsed) >= @max_artifacts, do: %{}, else: parsed
        Process.put({__MODULE__, :tests}, Map.put(parsed, key, forms))
        forms
    end
  end

  defp block({:__block__, _, forms}), do: forms
  defp block(form), do: [form]

  defp tail(forms, test_forms) do
    forms = block(forms)
    split = length(forms) - length(test_forms)

    if split >= 0 and Enum.drop(forms, split) == test_forms,
      do: {:ok, Enum.take(forms, split)},
      else: {:whole, "the completion changes how the tests parse"}
  end

  # The candidate's forms must all be root `defmodule Alias do ... end` of new modules:
  # {alias atoms, defmodule meta, alias meta}.
  defp root_modules(forms, taken?) do
    modules =
      for {:defmodule, meta, [{:__aliases__, alias_meta, [head | _] = atoms}, [do: _]]} <- forms,
          head != :Elixir and Enum.all?(atoms, &is_atom/1),
          do: {atoms, meta, alias_meta}

    cond do
      length(modules) != length(forms) or forms == [] -> {:whole, "the completion has top-level code"}
      Enum.any?(modules, &taken?.(Module.concat(elem(&1, 0)))) -> {:whole, "the completion redefines a module"}
      true -> {:ok, modules}
    end
  end

  defp test_module([start, {:defmodule, _, [{:__aliases__, _, [head | _] = atoms}, [do: body]]}]) do
    cond do
      strip(start) != ex_unit_start() -> {:whole, "the tests do not start with ExUnit.start()"}
      head == :Elixir or not Enum.all?(atoms, &is_atom/1) -> {:whole, "the test module's name is not literal"}
      not declarations?(body) -> {:whole, "the test module runs code at compile time"}
      true -> {:ok, Module.concat(atoms)}
    end
  end

  defp test_module(_), do: {:whole, "the tests are not ExUnit.start() and one module"}

  defp strip(ast), do: Macro.prewalk(ast, &Macro.update_meta(&1, fn _ -> [] end))

  # ExUnit's declarations only: nothing in the body runs code at compile time but ExUnit's own macros.
  defp declarations?({:__block__, _, forms}), do: Enum.all?(forms, &declarations?/1)
  defp declarations?({:use, _, [{:__aliases__, _, [:ExUnit, :Case]} | options]}), do: Macro.quoted_literal?(options)
  defp declarations?({:describe, _, [name, [do: body]]}), do: Macro.quoted_literal?(name) and declarations?(body)

  defp declarations?({kind, _, [_ | _] = args}) when kind in [:test, :setup, :setup_all, :def, :defp],
    do: not any_node?(args, &match?({name, _, _} when name in [:unquote, :unquote_splicing], &1))

  # Literal attributes: ExUnit's tags, documentation, and the module's own (not Elixir's other reserved ones).
  defp declarations?({:@, _, [{name, _, [value]}]}) when is_atom(name) do
    (name in [:doc, :moduledoc] or not Map.has_key?(Module.reserved_attributes(), name)) and
      Macro.quoted_literal?(value)
  end

  defp declarations?({directive, _, [{:__aliases__, _, atoms} | options]})
       when directive in [:import, :alias, :require],
       do: Enum.all?(atoms, &is_atom/1) and Macro.quoted_literal?(options)

  defp declarations?(_), do: false

  defp any_node?(ast, found?) do
    {_, found} = Macro.prewalk(ast, false, &{&1, &2 or found?.(&1)})
    found
  end

  defp not_defined(name, candidate) do
    defines? = fn
      {:defmodule, _, [{:__aliases__, _, atoms} | _]} -> Enum.all?(atoms, &is_atom/1) and Module.concat(atoms) == name
      _ -> false
    end

    if any_node?(candidate, defines?), do: {:whole, "the completion defines #{inspect(name)}"}, else: :ok
  end

  ## The neutral run that makes a reusable test module

  @doc """
  Evaluates the neutral program of `info` as the top level of a file at `path` (elixir_compiler:quoted/3 without
  the throw-away module: nothing here needs its stack frames): for each candidate module the `alias` its
  `defmodule` expands to (so the tests' environment names it as defined, as in the program), then the tests,
  with `mark/1` called just before the test module is defined. No checker: it would only warn that the
  candidate is missing. Returns what `artifact/4` needs, or nil if the tests did not compile.
  """
  def compile_neutral(path, %{modules: modules, test_forms: [start, {:defmodule, meta, _} = last]}) do
    defined =
      for {atoms, _meta, alias_meta} <- modules, module = Module.concat(atoms),
          do: {:alias, [defined: module, context: nil] ++ alias_meta, [module, [as: nil, warn: false]]}

    line = Keyword.take(meta, [:line])
    mark = {{:., line, [__MODULE__, :mark]}, line, [{:__ENV__, line, nil}]}
    env = %{:elixir_env.new() | line: 1, file: path, tracers: :elixir_config.get(:tracers)}
    Process.put(:elixir_module_binaries, [])

    :elixir_lexical.run(
      env,
      fn env -> :elixir.eval_forms({:__block__, [], defined ++ [start, mark, last]}, [], env) end,
      fn %{lexical_tracker: tracker} ->
        Process.put({__MODULE__, :after}, %{references: Kernel.LexicalTracker.references(tracker),
                                            fingerprint: fingerprint()})
      end
    )

    %{loaded: Process.get(:elixir_module_binaries), mark: Process.get({__MODULE__, :mark}),
      after: Process.get({__MODULE__, :after})}
  rescue
    _ -> nil
  end

  @doc "Called in the neutral run just before the test module is defined: what a reuse must find again."
  def mark(env) do
    tracker = env.lexical_tracker
    clean = clean_tracker?(tracker)
    # From here on the tracker's references are the test module's own.
    :sys.replace_state(tracker, &%{&1 | references: %{}, exports: %{}, compile_env: :ordsets.new()})
    Process.put({__MODULE__, :mark}, %{fingerprint: fingerprint(), clean: clean})
  end

  @doc """
  The reusable artifact from a neutral run's `result` (`compile_neutral/2`) and the bytes it printed, or
  `{:none, reason}`. `shipped?` tells modules loaded from Elixir's/OTP's code path.
  """
  def artifact(%{module: module}, result, printed, shipped?) do
    with %{loaded: loaded, mark: %{} = mark, after: %{} = later} <- result,
         true <- printed == 0 or {:none, "the tests print while compiling"},
         true <- mark.clean or {:none, "the lexical tracker was not clean"},
         true <- mark.fingerprint == later.fingerprint or {:none, "the tests change global state while compiling"},
         true <- reusable_options?(mark.fingerprint) or {:none, "compiler options"},
         {compile, exports, _runtime, _env} = later.references,
         [] <- Enum.reject(compile ++ exports, &(&1 == module or shipped?.(&1))),
         {:ok, binary} <- Keyword.fetch(loaded, module),
         {:ok, map} <- module_map(binary),
         true <- map.after_verify == [] and not Keyword.has_key?(map.attributes, :on_load) or {:none, "callbacks"} do
      %{module: module, binary: binary, module_map: map, fingerprint: mark.fingerprint}
    else
      {:none, reason} -> {:none, reason}
      [_ | _] = modules -> {:none, "the tests depend at compile time on #{Enum.map_join(modules, ", ", &inspect/1)}"}
      _ -> {:none, "the tests did not compile"}
    end
  end

  defp reusable_options?({options, _cwd, _path, _os_env, _apps, _flags, _keys}) do
    options[:debug_info] == true and options[:ignore_module_conflict] == false and options[:tracers] == []
  end

  defp module_map(binary) do
    case :beam_lib.chunks(binary, [:debug_info]) do
      {:ok, {_, [debug_info: {:debug_info_v1, :elixir_erl, {:elixir_v1, map, _specs}}]}} -> {:ok, map}
      _ -> {:none, "no debug info"}
    end
  end

  @doc "Keeps `artifact` (or why there is none) for `key` in this worker: a few problems' worth."
  def remember(key, artifact) do
    kept = Process.get({__MODULE__, :artifacts}, %{})
    kept = if map_size(kept) >= @max_artifacts, do: %{}, else: kept
    Process.put({__MODULE__, :artifacts}, Map.put(kept, key, artifact))
  end

  def recall(key), do: Map.get(Process.get({__MODULE__, :artifacts}, %{}), key)
end

defmodule DevstralEval.Cleanup do
  @moduledoc """
  What a program may change in this VM, recorded before it runs and put back after it ran: processes (killed),
  applications (stopped and unloaded), modules it defined (purged), application and OS environment, working
  directory, code path, compiler options, required files, persistent terms, logger level, at_exit hooks.
  Anything that cannot be put back is returned as a reason to retire the worker.
  """

  def snapshot do
    loaded = for {app, _, _} <- Application.loaded_applications(), do: app

    %{
      processes: MapSet.new(Process.list()),
      started: for({app, _, _} <- Application.started_applications(), do: app),
      loaded: loaded,
      app_env: Map.new(loaded, &{&1, Application.get_all_env(&1)}),
      os_env: System.get_env(),
      cwd: File.cwd!(),
      code_path: :code.get_path(),
      compiler_options: Code.compiler_options(),
      required: Code.required_files(),
      persistent_terms: :persistent_term.get(),
      logger: :logger.get_primary_config(),
      max_heap_size: :erlang.system_info(:max_heap_size)
    }
  end

  @doc "Puts back what `snap` recorded; `leaders` are the program's IO devices (its processes' group leaders)."
  def restore(snap, leaders) do
    :elixir_config.put(:at_exit, [])
    started = for {app, _, _} <- Application.started_applications(), do: app
    for app <- started -- snap.started, do: Application.stop(app)
    # Whatever is still new and is not an OTP service started on demand (e.g. the timer server) goes.
    converged =
      kill_until_gone(fn -> for pid <- new_processes(snap), not system_service?(pid, snap, leaders), do: pid end)
    for {app, _, _} <- Application.loaded_applications(), app not in snap.loaded, do: Application.unload(app)
    for {app, env} <- snap.app_env, do: restore_app_env(app, env)
    restore_os_env(snap.os_env)
    File.cd!(snap.cwd)
    if :code.get_path() != snap.code_path, do: :code.set_path(snap.code_path)
    if Code.compiler_options() != snap.compiler_options, do: Code.compiler_options(snap.compiler_options)
    Code.unrequire_files(Code.required_files() -- snap.required)
    restore_persistent_terms(snap.persistent_terms)
    if :logger.get_primary_config() != snap.logger, do: :logger.set_primary_config(snap.logger)
    :erlang.system_flag(:max_heap_size, snap.max_heap_size)
    if converged, do: nil, else: "processes kept respawning"
  end

  @doc """
  The modules the server may keep: every module loaded now, with its md5 (a redefinition changes it), kept in
  the server's dictionary and grown by `purge_modules/1` as modules load on demand from `dirs`; `dirs` are the
  code path's absolute directories (read-only in the sandbox; "." and the scratch directory are not among them);
  `on_path` names every module those directories hold.
  """
  def record_boot_modules(scratch_root) do
    dirs = for dir <- :code.get_path(), dir = List.to_string(dir), Path.type(dir) == :absolute, dir = Path.expand(dir),
               not String.starts_with?(dir, Path.expand(scratch_root)), into: MapSet.new(), do: dir

    Process.put(:known_modules, Map.new(:erlang.loaded(), &{&1, &1.module_info(:md5)}))

    %{
      dirs: dirs,
      on_path: for(dir <- dirs, {:ok, files} = File.ls(dir), file <- files,
                   Path.extname(file) == ".beam", into: MapSet.new(), do: Path.rootname(file))
    }
  end

  @doc """
  Purges the modules a program defined (loaded since the last program and not from the code path) and names
  the known modules it redefined or removed, and the modules of the code path it shadowed: its result can't be
  trusted then.
  """
  def purge_modules(boot) do
    known = Process.get(:known_modules)
    new = Enum.reject(:erlang.loaded(), &is_map_key(known, &1))
    {from_path, defined} = Enum.split_with(new, &from_path?(&1, boot))
    Process.put(:known_modules, Map.merge(known, Map.new(from_path, &{&1, &1.module_info(:md5)})))
    shadowed = for module <- defined, MapSet.member?(boot.on_path, Atom.to_string(module)), do: inspect(module)

    for module <- defined do
      # delete makes the current code old (it fails if old code is left from a redefinition: purge that first).
      unless :code.delete(module) do
        :code.purge(module)
        :code.delete(module)
      end

      :code.purge(module)
    end

    changed = for {module, md5} <- known, md5_of(module) != md5, do: inspect(module)
    shadowed ++ changed
  end

  @doc "Whether `module` was loaded from the code path's directories (`record_boot_modules/1`): shipped code."
  def from_path?(module, boot) do
    case :code.is_loaded(module) do
      {:file, :preloaded} ->
        true

      {:file, path} when is_list(path) and path != [] ->
        MapSet.member?(boot.dirs, path |> List.to_string() |> Path.dirname() |> Path.expand())

      _ ->
        false
    end
  end

  # A module the program deleted may be reloaded from disk here (and then matches); one that can't be is gone.
  defp md5_of(module) do
    module.module_info(:md5)
  rescue
    UndefinedFunctionError -> :gone
  end

  defp new_processes(snap), do: Enum.reject(Process.list(), &MapSet.member?(snap.processes, &1))

  # An OTP service started on demand under a pre-existing supervisor (its first ancestor existed before), and
  # not writing to the program's output.
  defp system_service?(pid, snap, leaders) do
    case Process.info(pid, [:group_leader, :dictionary]) do
      [group_leader: leader, dictionary: dictionary] ->
        ancestor =
          case Keyword.get(dictionary, :"$ancestors") do
            [name | _] when is_atom(name) -> Process.whereis(name)
            [pid | _] when is_pid(pid) -> pid
            _ -> nil
          end

        leader not in leaders and MapSet.member?(snap.processes, leader) and ancestor != nil and
          MapSet.member?(snap.processes, ancestor)

      nil ->
        true
    end
  end

  # Kills what `find` returns, waits until they are gone, and looks again (they may have spawned more).
  defp kill_until_gone(find, rounds \\ 50)
  defp kill_until_gone(_find, 0), do: false

  defp kill_until_gone(find, rounds) do
    case find.() do
      [] ->
        true

      pids ->
        refs = Map.new(pids, &{Process.monitor(&1), true})
        Enum.each(pids, &Process.exit(&1, :kill))
        await_down(refs)
        kill_until_gone(find, rounds - 1)
    end
  end

  defp await_down(refs) when map_size(refs) == 0, do: :ok

  defp await_down(refs) do
    receive do
      {:DOWN, ref, :process, _, _} when is_map_key(refs, ref) -> await_down(Map.delete(refs, ref))
    after
      1000 -> :ok
    end
  end

  @doc "Drops messages a program's processes may still have sent the server (late replies, monitors)."
  def flush_mailbox do
    receive do
      {:report, _, _} -> flush_mailbox()
      {:finished, _, _} -> flush_mailbox()
      {DevstralEval.TestCache, :reused} -> flush_mailbox()
      {:DOWN, _, _, _, _} -> flush_mailbox()
      {ref, _} when is_reference(ref) -> flush_mailbox()
    after
      0 -> :ok
    end
  end

  defp restore_app_env(app, env) do
    current = Application.get_all_env(app)
    for {key, _} <- current, not Keyword.has_key?(env, key), do: Application.delete_env(app, key)
    for {key, value} <- env, Keyword.get(current, key) !== value, do: Application.put_env(app, key, value)
  end

  defp restore_os_env(env) do
    current = System.get_env()
    for {key, _} <- current, not Map.has_key?(env, key), do: System.delete_env(key)
    for {key, value} <- env, Map.get(current, key) != value, do: System.put_env(key, value)
  end

  defp restore_persistent_terms(terms) do
    before = Map.new(terms)

    for {key, value} <- :persistent_term.get(), not Map.has_key?(before, key) or Map.fetch!(before, key) !== value do
      if Map.has_key?(before, key), do: :persistent_term.put(key, Map.fetch!(before, key)), else: :persistent_term.erase(key)
    end
  end
end

defmodule DevstralEval.OsProcesses do
  @moduledoc """
  OS processes a program left behind (System.cmd, ports, `sh -c '... &'`). Only inside the sandbox's PID
  namespace, where this VM is PID 1 and /proc lists nothing but the sandbox, can they be seen reliably; the
  worker is then retired, and its namespace's end kills them all.
  """

  def isolated?, do: :os.getpid() == ~c"1" and File.dir?("/proc/1")

  def list do
    for entry <- File.ls!("/proc"), match?({_, ""}, Integer.parse(entry)), alive?(entry), do: entry
  end

  defp alive?(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} -> stat |> String.split(") ") |> List.last() |> String.first() != "Z"
      _ -> false
    end
  end
end

defmodule DevstralEval.Server do
  @moduledoc """
  Answers `run` requests: writes the program in the scratch directory, runs it with limits, cleans up. With
  `reuse_tests`, a problem's test module is compiled once (a neutral run) and reused where that provably runs
  the same program (DevstralEval.TestCache); a reuse that turns out not to apply runs the program again whole.
  """

  alias DevstralEval.{Capture, Cleanup, OsProcesses, Script, TestCache}

  @output_limit 65_536
  @memory_limit 1_500_000_000

  def start([scratch_root]) do
    Process.flag(:priority, :high)
    # One directory per VM: unconfined workers share the host's scratch root.
    scratch = Path.join(scratch_root, "worker-#{:os.getpid()}")
    File.mkdir_p!(scratch)
    File.cd!(scratch)
    :logger.set_module_level(:application_controller, :warning)
    # Loaded once here rather than by each program's ExUnit.start (its environment is restored after each).
    Application.load(:ex_unit)
    boot_modules = Cleanup.record_boot_modules(scratch_root)
    os_processes = if OsProcesses.isolated?(), do: OsProcesses.list(), else: nil
    context = %{scratch: scratch, boot_modules: boot_modules, os_processes: os_processes}
    ElixirWorker.serve(fn request -> handle(request, context) end)
  end

  defp handle(%{"op" => "run"} = request, context) do
    dir = Path.join(context.scratch, "program")
    path = Path.join(dir, request["file"])
    {plan, cache, why, prepared} = plan(request, path, dir, context)

    reply =
      case plan do
        # Never expected (the neutral run defines only new modules and ExUnit's tests): the pool retires this
        # worker and runs the program whole in a fresh one.
        {:unfit, reason} -> %{"aborted" => reason, "retire" => reason}
        plan -> attempt(request, plan, path, dir, context)
      end

    reused? = reply["reused"] == true

    reply =
      cond do
        # A reuse that found the program differs: nothing ran past the candidate's compilation.
        reply["aborted"] != nil and reply["retire"] == nil ->
          fallback = attempt(request, :whole, path, dir, context)
          Map.merge(fallback, %{"cache" => "fallback", "cache_reason" => reply["aborted"]})

        # The worker must go (or the program redefined a module the tests' compilation may read): the pool runs
        # the program again, whole, in a fresh worker.
        reply["aborted"] != nil or (reused? and reply["redefined"] != []) ->
          Map.merge(reply, %{"cache" => "fallback", "cache_reason" => reply["aborted"] || "redefined", "retry" => true})

        plan != :whole and not reused? ->
          Map.merge(reply, %{"cache" => "skip", "cache_reason" => "the program stopped before its tests"})

        true ->
          Map.merge(reply, %{"cache" => cache, "cache_reason" => why})
      end

    Map.merge(reply, %{"nonce" => request["nonce"], "prepared" => prepared})
  end

  # {plan for Script.run/2, what the cache did ("off", "skip", "hit"), why not, whether a neutral run was made}.
  # A neutral run is made only for a program whose test module another one will reuse (`reuse_expected`).
  defp plan(request, path, dir, context) do
    with true <- request["reuse_tests"] == true and is_binary(request["tests"]) or {:off},
         {:reuse, key, info} <- TestCache.plan(request["source"], request["tests"], path, &taken?(&1, context)),
         {artifact, prepared} when artifact != nil <- recall_or_prepare(key, info, request, path, dir, context) do
      case artifact do
        {:unfit, reason} -> {{:unfit, reason}, "fallback", reason, prepared}
        {:none, reason} -> {:whole, "skip", reason, prepared}
        %{} -> {{:reuse, info.test_forms, Map.put(artifact, :server, self())}, "hit", nil, prepared}
      end
    else
      {:off} -> {:whole, "off", nil, false}
      {:whole, reason} -> {:whole, "skip", reason, false}
      {nil, false} -> {:whole, "skip", "no other program shares its test module", false}
    end
  end

  defp recall_or_prepare(key, info, request, path, dir, context) do
    case {TestCache.recall(key), request["reuse_expected"]} do
      {nil, true} ->
        artifact = prepare(info, request, path, dir, context)
        if not match?({:unfit, _}, artifact), do: TestCache.remember(key, artifact)
        {artifact, true}

      {artifact, _} ->
        {artifact, false}
    end
  end

  # The neutral run: the candidate's root modules empty, then the tests, in a fresh process like a program's.
  defp prepare(info, request, path, dir, context) do
    body = fn _report -> %{"prepared" => TestCache.compile_neutral(path, info)} end
    run = isolated(body, request, dir, context)
    shipped? = &Cleanup.from_path?(&1, context.boot_modules)
    printed = byte_size(run.stdout) + byte_size(run.stderr)

    cond do
      run.retire != nil -> {:unfit, "the neutral run left the worker unfit: #{run.retire}"}
      not is_map(run.outcome["prepared"]) -> {:none, "the tests did not compile"}
      true -> TestCache.artifact(info, run.outcome["prepared"], printed, shipped?)
    end
  end

  defp taken?(module, context) do
    :code.is_loaded(module) != false or MapSet.member?(context.boot_modules.on_path, Atom.to_string(module))
  end

  defp attempt(request, plan, path, dir, context) do
    File.mkdir_p!(dir)
    File.write!(path, request["source"])

    body = fn report ->
      report.(%{"formatted" => formatted?(request["solution"], request["completion"])})

      case Script.run(path, plan) do
        {:abort, reason} -> %{"aborted" => reason}
        {status, error} -> %{"exit_code" => status, "load_error" => error}
      end
    end

    run = isolated(body, request, dir, context, path)

    Map.merge(run.outcome, %{
      "stdout" => run.stdout,
      "stderr" => run.stderr,
      "elapsed_ms" => run.elapsed_ms,
      "redefined" => run.redefined,
      "retire" => run.retire
    })
  end

  # Runs `body` in a fresh process in `dir` with the program limits and its output captured, then removes every
  # trace of it from this VM. The outcome is what `body` reported and returned, or how it was stopped.
  defp isolated(body, request, dir, context, path \\ nil) do
    {out, err} = {Capture.start(@output_limit), Capture.start(@output_limit)}
    snap = Cleanup.snapshot()
    standard_error = Process.whereis(:standard_error)
    Process.unregister(:standard_error)
    Process.register(err, :standard_error)
    File.mkdir_p!(dir)
    File.cd!(dir)
    started = System.monotonic_time(:microsecond)

    outcome =
      try do
        run(body, request, out)
      after
        Process.unregister(:standard_error)
        Process.register(standard_error, :standard_error)
      end

    elapsed_ms = (System.monotonic_time(:microsecond) - started) / 1000
    # A file whose loading raised stays locked in Elixir's code server; unrequiring it releases it.
    if path, do: Code.unrequire_files([path])
    # Every process the program started is gone after this, so its output is complete.
    stuck = Cleanup.restore(snap, [out, err])
    {stdout, stderr} = {Capture.contents(out), Capture.contents(err)}
    Enum.each([out, err], &Process.exit(&1, :kill))
    shadowed = Cleanup.purge_modules(context.boot_modules)
    Cleanup.flush_mailbox()
    Enum.each(File.ls!(context.scratch), &File.rm_rf!(Path.join(context.scratch, &1)))
    os_left = if context.os_processes, do: length(OsProcesses.list() -- context.os_processes), else: 0

    retire =
      cond do
        shadowed != [] -> "the program redefined #{Enum.join(shadowed, ", ")}"
        stuck -> stuck
        os_left > 0 -> "the program left #{os_left} OS processes running"
        Node.alive?() -> "the program started distribution"
        :erlang.memory(:total) > @memory_limit -> "the VM holds #{:erlang.memory(:total)} bytes after cleanup"
        true -> nil
      end

    %{outcome: outcome, stdout: stdout, stderr: stderr, elapsed_ms: elapsed_ms, redefined: shadowed, retire: retire}
  end

  defp run(body, request, out) do
    server = self()
    heap = %{size: request["heap_words"], kill: true, error_logger: false}
    # Every process the program spawns gets the same heap limit (Cleanup.restore puts the default back).
    :erlang.system_flag(:max_heap_size, heap)

    {runner, ref} =
      :erlang.spawn_opt(
        fn ->
          Process.group_leader(self(), out)
          runner = self()
          send(server, {:finished, runner, body.(&send(server, {:report, runner, &1}))})
        end,
        [:monitor, max_heap_size: heap]
      )

    deadline = System.monotonic_time(:millisecond) + request["timeout_ms"]
    wait(runner, ref, deadline, %{})
  end

  defp wait(runner, ref, deadline, outcome) do
    remaining = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:report, ^runner, report} ->
        wait(runner, ref, deadline, Map.merge(outcome, report))

      {TestCache, :reused} ->
        wait(runner, ref, deadline, Map.put(outcome, "reused", true))

      {:finished, ^runner, result} ->
        Process.demonitor(ref, [:flush])
        Map.merge(outcome, Map.merge(%{"timed_out" => false, "killed" => nil}, result))

      {:DOWN, ^ref, :process, ^runner, reason} ->
        Map.merge(outcome, %{"exit_code" => 1, "load_error" => nil, "timed_out" => false, "killed" => inspect(reason)})
    after
      remaining ->
        Process.exit(runner, :kill)
        Map.merge(outcome, %{"exit_code" => nil, "load_error" => nil, "timed_out" => true, "killed" => nil})
    end
  end

  # Whether formatting the solution (prompt + completion) with `Code.format_string!/1` leaves the completion
  # unchanged (up to trailing whitespace): prompts need not be formatted, completions are judged. nil: not asked.
  defp formatted?(solution, completion) when is_binary(solution) and is_binary(completion) do
    solution |> Code.format_string!() |> IO.iodata_to_binary() |> String.ends_with?(String.trim_trailing(completion))
  rescue
    _ -> false
  end

  defp formatted?(_solution, _completion), do: nil
end

DevstralEval.Server.start(System.argv())
