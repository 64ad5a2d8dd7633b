# The floor under any executor that runs programs through Elixir: one warm VM loads each program file as
# `elixir file.exs` does (Code.require_file, then the at_exit hooks, where ExUnit runs the tests) with no
# sandbox, no output capture beyond a sink, and only the cleanup that lets the next program define the same
# modules. Used by benchmarks/exec.py.
#
#     elixir benchmarks/exec_floor.exs REPEATS FILE...
#
# Prints the seconds the timed passes took (a first, untimed pass warms the VM up).

defmodule Floor do
  def run_all(files) do
    {:ok, sink} = StringIO.open("")
    known = MapSet.new(:erlang.loaded())
    for file <- files, do: run_one(file, sink, known)
  end

  defp run_one(file, sink, known) do
    parent = self()

    spawn(fn ->
      Process.group_leader(self(), sink)

      status =
        try do
          Code.require_file(file)
          0
        catch
          _, _ -> 1
        end

      send(parent, {:loaded, status})
    end)

    status = receive do: ({:loaded, status} -> status)
    hooks = :elixir_config.get_and_put(:at_exit, [])

    for hook <- hooks do
      {pid, ref} = spawn_monitor(fn -> Process.group_leader(self(), sink); hook.(status) end)
      receive do: ({:DOWN, ^ref, :process, ^pid, _} -> :ok)
    end

    Application.stop(:ex_unit)
    # ExUnit.start/1 turned autorun off; the next program's ExUnit.start must register its tests again.
    Application.put_env(:ex_unit, :autorun, true)
    # A file whose loading raised stays locked in Elixir's code server until it is unrequired.
    Code.unrequire_files([file | Code.required_files()])

    for module <- :erlang.loaded(), not MapSet.member?(known, module), :code.is_loaded(module) == {:file, []} do
      :code.delete(module)
      :code.purge(module)
    end
  end
end

:logger.set_module_level(:application_controller, :warning)
[repeats | files] = System.argv()
Floor.run_all(files)
{microseconds, _} = :timer.tc(fn -> for _ <- 1..String.to_integer(repeats), do: Floor.run_all(files) end)
IO.puts(microseconds / 1_000_000)
