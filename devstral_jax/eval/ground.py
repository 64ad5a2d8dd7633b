"""What an evaluation stood on: the Elixir and OTP that ran the programs, the sandbox, the time limit, the
sampling settings and the problems themselves. Every summary records it, so that two runs are compared only on
the same ground (launch/compare.py) and a result from another Elixir than MultiPL-E's is never taken for one of
MultiPL-E's.
"""

from __future__ import annotations

import hashlib
import json
from typing import Mapping, Sequence

from devstral_jax.elixir.versions import (
    MULTIPL_E_ELIXIR,
    MULTIPL_E_OTP,
    installed_elixir,
    installed_otp,
    newer_syntax_uses,
)
from devstral_jax.eval.benchmarks import Problem
from devstral_jax.eval.pool import ExecutionPool

SAMPLING = ("num_samples", "temperature", "top_k", "top_p", "max_new_tokens", "batch_size", "steps_per_call")


def problems_digest(problems: Sequence[Problem]) -> str:
    """sha256 over each problem's name, prompt, tests and stop tokens: two runs with the same digest ran the same
    programs for the same completions."""
    return hashlib.sha256(json.dumps([[p.name, p.prompt, p.tests, list(p.stop_tokens)] for p in problems]).encode()
                          ).hexdigest()


def record(settings, seed: int | None, pool: ExecutionPool, benchmarks: Mapping[str, Sequence[Problem]]) -> dict:
    """The ground of a run over `benchmarks` in `pool` with the eval `settings`; `seed` is None when the
    completions were given rather than sampled."""
    elixir, otp = installed_elixir(), installed_otp()
    ground = {
        "elixir": elixir,
        "otp": otp,
        "multipl_e_elixir": MULTIPL_E_ELIXIR,
        "multipl_e_otp": MULTIPL_E_OTP,
        "sandbox": {"mode": settings.sandbox, "isolated": pool.sandbox.isolated},
        "timeout": settings.timeout,
        "workers": pool.size,
        "sampling": None if seed is None else {"seed": seed, **{key: settings[key] for key in SAMPLING}},
        "test_modules": dict(pool.cache_counts),
        "benchmarks": {name: {"problems": len(problems), "digest": problems_digest(problems),
                              "newer_syntax": _newer_syntax(problems, elixir)}
                       for name, problems in benchmarks.items()},
    }
    ground["warnings"] = warnings(ground)
    return ground


def _newer_syntax(problems: Sequence[Problem], elixir: str) -> dict[str, list[str]]:
    """Problems whose prompt or tests use syntax the installed Elixir cannot parse (every sample then fails)."""
    found = {}
    for problem in problems:
        uses = [f"prompt {use}" for use in newer_syntax_uses(problem.prompt, elixir)]
        uses += [f"tests {use}" for use in newer_syntax_uses(problem.tests, elixir)]
        if uses:
            found[problem.name] = uses
    return found


def warnings(ground: dict) -> list[str]:
    """What a reader of the results must know about their ground."""
    said = []
    if ground["elixir"] != ground["multipl_e_elixir"]:
        said.append(f"Elixir {ground['elixir']} (OTP {ground['otp']}) ran these programs; MultiPL-E's evaluation "
                    f"container runs Elixir {ground['multipl_e_elixir']} (OTP {ground['multipl_e_otp']}): compare "
                    "with MultiPL-E's published results only knowing that verdicts may differ between the two.")
    if not ground["sandbox"]["isolated"]:
        said.append(f"The programs ran without the OS sandbox (mode {ground['sandbox']['mode']}).")
    for name, benchmark in ground["benchmarks"].items():
        if benchmark["newer_syntax"]:
            listed = "; ".join(f"{problem} ({uses[0]})" for problem, uses in benchmark["newer_syntax"].items())
            said.append(f"{name}: {len(benchmark['newer_syntax'])} problem(s) use syntax Elixir {ground['elixir']} "
                        f"cannot parse, so every sample of them fails: {listed}.")
    return said
