"""Evaluation: run what the model writes (a sandboxed Elixir execution pool), pass@k and text metrics,
benchmarks (MultiPL-E HumanEval/MBPP-Elixir, doctests from held-out packages), reports."""
