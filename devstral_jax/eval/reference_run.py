"""MultiPL-E's way of running one program: a fresh `elixir file.exs` process (evaluation/src/eval_elixir.py).

The yardstick for the pool: its verdicts must equal these, and benchmarks/exec.py times both.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from devstral_jax.eval.verdict import Program, multipl_e_status


def run_elixir_file(program: Program, timeout: float = 5.0) -> tuple[str, int | None, str]:
    """(MultiPL-E status, exit code or None on timeout, output) of `elixir file.exs`, as eval_elixir.py does
    it: `subprocess.run(["elixir", path], capture_output=True, timeout=...)`, classified on its output."""
    with tempfile.TemporaryDirectory(prefix="multiple-") as directory:
        path = Path(directory) / program.file_name
        path.write_text(program.source, encoding="utf-8")
        try:
            result = subprocess.run(["elixir", str(path)], capture_output=True, timeout=timeout, cwd=directory)
        except subprocess.TimeoutExpired as expired:
            output = (expired.stdout or b"") + (expired.stderr or b"")
            return "Timeout", None, output.decode("utf-8", "replace")
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    return multipl_e_status(result.returncode, str(result)), result.returncode, output
