"""configs/stages.py end to end: CPT -> instructions -> prose as mixtures over the shipped sample, EWC in the later
stages, and the forgetting table printed."""

import subprocess
import sys

import numpy as np

from devstral_jax.train.ewc import ANCHOR_FILE
from devstral_jax.train.metrics_log import read_metrics
from tests.test_train_resume import ENV, ROOT, SMALL


def test_three_stage_run_completes_with_mixtures_and_ewc_and_prints_the_forgetting_table(tmp_path):
    workdir = tmp_path / "curriculum"
    result = subprocess.run([sys.executable, "launch/train.py", "--config=configs/stages.py:8", f"--workdir={workdir}",
                             *SMALL, "--config.optim.warmup_steps=0"], cwd=ROOT, capture_output=True, text=True, timeout=900, env=ENV)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    header = lines.index("| after | general_code | cpt | instructions | prose |")
    rows = [line.split(" | ")[0].strip("| ") for line in lines[header + 2:header + 6]]
    assert rows == ["base", "cpt", "instructions", "prose"]
    assert (workdir / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The stages before an EWC stage left their anchor (the second one accumulated onto the first's) and a plot.
    for stage in ("cpt", "instructions"):
        assert (workdir / stage / ANCHOR_FILE).exists() and (workdir / stage / "fisher_importance.png").exists()
    with np.load(workdir / "cpt" / ANCHOR_FILE) as first, np.load(workdir / "instructions" / ANCHOR_FILE) as second:
        fisher_keys = [k for k in first if k.startswith("fisher")]
        assert fisher_keys and all(np.all(second[k] >= first[k]) for k in fisher_keys)  # gamma = 1: F only grows
    instructions = read_metrics(str(workdir / "instructions" / "metrics.jsonl"))
    trained = [r for r in instructions if "loss" in r]
    assert all("tokens_seen/chat" in r and "tokens_seen/elixir_text" in r for r in trained)
    assert any(r["ewc_penalty"] > 0 for r in trained[1:])  # the adapters moved away from the anchor
    assert "ewc_penalty" not in read_metrics(str(workdir / "cpt" / "metrics.jsonl"))[0]
    # CPT admits its data from easy to hard (the curriculum), and plots it.
    admitted = [r["admitted_difficulty"] for r in read_metrics(str(workdir / "cpt" / "metrics.jsonl")) if "loss" in r]
    assert admitted == sorted(admitted) and admitted[0] < 1.0
    assert (workdir / "cpt" / "curriculum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
