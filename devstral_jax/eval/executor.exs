# The execution server: runs one Elixir program per request exactly as `elixir file.exs` would (Elixir 1.14's
# Kernel.CLI: the file in its own process, then the `System.at_exit` hooks, so ExUnit runs the tests and sets the
# exit status), captures its output, and then removes every trace of it from this VM: its processes, modules,
# applications, environment, files. Started by devstral_jax/eval/pool.py through devstral_jax/elixir/worker.py,
# which defines ElixirWorker.serve/1. Argument: the scratch directory (the only place a program may write).

defmodule DevstralEval.Capture do
  @moduledoc "An IO device that keeps the first `limit` bytes written to it: a program's stdout or stderr."

  def start(limit), do: spawn(fn -> loop(limit, [], 0) end)

  def contents(device) do
    ref = make_ref()
    send(device, {:contents, self(), ref})

    receive do
      {^ref, text} -> text
    after
      1000 -> ""
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
  stopped the file from loading, if one did.
  """

  def run(path) do
    {result, error} = exec(fn _ -> Code.require_file(path) end, {:ok, 0})
    {_, status} = at_exit(result)
    {status, error}
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

  defp from_path?(module, boot) do
    case :code.is_loaded(module) do
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
      {:formatted, _, _} -> flush_mailbox()
      {:finished, _, _, _} -> flush_mailbox()
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
  @moduledoc "Answers `run` requests: writes the program in the scratch directory, runs it with limits, cleans up."

  alias DevstralEval.{Capture, Cleanup, OsProcesses, Script}

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
    ElixirWorker.serve(fn request -> handle(request, scratch, boot_modules, os_processes) end)
  end

  defp handle(%{"op" => "run"} = request, scratch, boot_modules, os_processes) do
    dir = Path.join(scratch, "program")
    File.mkdir_p!(dir)
    path = Path.join(dir, request["file"])
    File.write!(path, request["source"])
    {out, err} = {Capture.start(@output_limit), Capture.start(@output_limit)}
    snap = Cleanup.snapshot()
    standard_error = Process.whereis(:standard_error)
    Process.unregister(:standard_error)
    Process.register(err, :standard_error)
    File.cd!(dir)
    started = System.monotonic_time(:microsecond)

    outcome =
      try do
        run(path, request, out)
      after
        Process.unregister(:standard_error)
        Process.register(standard_error, :standard_error)
      end

    elapsed_ms = (System.monotonic_time(:microsecond) - started) / 1000
    # A file whose loading raised stays locked in Elixir's code server; unrequiring it releases it.
    Code.unrequire_files([path])
    # Every process the program started is gone after this, so its output is complete.
    stuck = Cleanup.restore(snap, [out, err])
    {stdout, stderr} = {Capture.contents(out), Capture.contents(err)}
    Enum.each([out, err], &Process.exit(&1, :kill))
    shadowed = Cleanup.purge_modules(boot_modules)
    Cleanup.flush_mailbox()
    Enum.each(File.ls!(scratch), &File.rm_rf!(Path.join(scratch, &1)))
    os_left = if os_processes, do: length(OsProcesses.list() -- os_processes), else: 0

    retire =
      cond do
        shadowed != [] -> "the program redefined #{Enum.join(shadowed, ", ")}"
        stuck -> stuck
        os_left > 0 -> "the program left #{os_left} OS processes running"
        Node.alive?() -> "the program started distribution"
        :erlang.memory(:total) > @memory_limit -> "the VM holds #{:erlang.memory(:total)} bytes after cleanup"
        true -> nil
      end

    Map.merge(outcome, %{
      "nonce" => request["nonce"],
      "stdout" => stdout,
      "stderr" => stderr,
      "elapsed_ms" => elapsed_ms,
      "redefined" => shadowed,
      "retire" => retire
    })
  end

  defp run(path, request, out) do
    server = self()
    heap = %{size: request["heap_words"], kill: true, error_logger: false}
    # Every process the program spawns gets the same heap limit (Cleanup.restore puts the default back).
    :erlang.system_flag(:max_heap_size, heap)

    {runner, ref} =
      :erlang.spawn_opt(
        fn ->
          Process.group_leader(self(), out)
          send(server, {:formatted, self(), formatted?(request["solution"], request["completion"])})
          {status, error} = Script.run(path)
          send(server, {:finished, self(), status, error})
        end,
        [:monitor, max_heap_size: heap]
      )

    deadline = System.monotonic_time(:millisecond) + request["timeout_ms"]
    wait(runner, ref, deadline, %{"formatted" => nil})
  end

  defp wait(runner, ref, deadline, outcome) do
    remaining = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:formatted, ^runner, formatted} ->
        wait(runner, ref, deadline, Map.put(outcome, "formatted", formatted))

      {:finished, ^runner, status, error} ->
        Process.demonitor(ref, [:flush])
        Map.merge(outcome, %{"exit_code" => status, "load_error" => error, "timed_out" => false, "killed" => nil})

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
