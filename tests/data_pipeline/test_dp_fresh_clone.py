"""A fresh clone has no ../shared: every default path (decontamination's benchmarks, evaluation's, the demo's
local source) is inside the repository, and `prepare_data.py --config=configs/data_otp_docs.py` runs there."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from data_pipeline.config import base_config
from devstral_jax.eval.benchmarks import HUMANEVAL_EX, load_problems

REPO = Path(__file__).resolve().parents[2]


def config(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_defaults_point_inside_the_repository():
    assert HUMANEVAL_EX.is_relative_to(REPO) and len(load_problems(HUMANEVAL_EX)) == 161
    assert (HUMANEVAL_EX.parent / "HUMANEVAL.md").is_file()  # its source and licence
    paths = [*base_config().decontam.benchmarks, *config("data_otp_docs").sources.local.paths,
             *config("eval_tiny_cpu").eval.benchmarks, *config("eval_devstral_gpu").eval.benchmarks]
    for path in paths:
        assert Path(path).is_absolute() and Path(path).resolve().is_relative_to(REPO) and Path(path).exists(), path


def test_prepare_data_runs_in_a_clone_without_shared(tmp_path):
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    clone = tmp_path / "devstral_jax_clone"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    assert not (clone.parent / "shared").exists()
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "launch/prepare_data.py", "--config=configs/data_otp_docs.py",
                             f"--config.output_dir={out}", "--config.sources.otp_docs.apps=('eex',)",
                             "--config.progress=False"],
                            cwd=clone, env={**os.environ, "PYTHONPATH": str(clone)}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["decontamination"]["benchmarks"] == {"humaneval_ex.jsonl": 161, "otp_elixir.jsonl": 67}
    assert manifest["config"]["decontam"]["benchmarks"] == [str(clone / "devstral_jax" / "eval" / "data" / name)
                                                            for name in ("humaneval_ex.jsonl", "otp_elixir.jsonl")]
    assert {unit["kind"] for unit in manifest["units"]} == {"otp_docs", "local"}
    assert manifest["splits"]["train"]["records"] > 0
