# Answer tables for benchmarks/exec_samples.py: for a HumanEval-Elixir test module, the map from each
# `assert expected == HumanEval.candidate(args)` case's arguments to its expected value, as the Base64 of its
# external term format (a completion that decodes it passes, and compiles like a one-line function).
# Served through devstral_jax/elixir/worker.py: request %{"tests" => source, "wrong_last" => boolean}.

defmodule AnswerTable do
  def encode(%{"tests" => tests, "wrong_last" => wrong_last}) do
    cases =
      tests
      |> Code.string_to_quoted!()
      |> Macro.prewalk([], fn
        {:assert, _, [{:==, _, [expected, {{:., _, [{:__aliases__, _, [:HumanEval]}, :candidate]}, _, args}]}]} = node,
        found ->
          {node, [{key(args), value(expected)} | found]}

        node, found ->
          {node, found}
      end)
      |> elem(1)

    cases = if wrong_last, do: [{elem(hd(cases), 0), {:wrong, elem(hd(cases), 1)}} | tl(cases)], else: cases
    # The last assertion counts for arguments asserted twice.
    cases |> Enum.reverse() |> Map.new() |> :erlang.term_to_binary() |> Base.encode64()
  end

  # The call's arguments as the completion looks them up: the one argument, or a tuple of them.
  defp key([arg]), do: value(arg)
  defp key(args), do: args |> Enum.map(&value/1) |> List.to_tuple()

  defp value(ast), do: ast |> Code.eval_quoted() |> elem(0)
end

ElixirWorker.serve(&AnswerTable.encode/1)
