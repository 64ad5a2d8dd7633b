"""launch/generate.py end to end: config file -> tiny model -> greedy tokens -> Tekken text; and its errors."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generate(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/generate.py", "--config=configs/tiny_cpu.py", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_generates_and_decodes_tokens():
    result = _generate("--config.generate.max_new_tokens=5", "--config.model.num_layers=1")
    assert result.returncode == 0, result.stderr
    assert "model: " in result.stdout and "(1 layers" in result.stdout
    assert "generated 5 tokens" in result.stdout
    assert "decoded: '" in result.stdout


def test_config_mistakes_are_one_line_errors_not_tracebacks():
    for flag, message in [("--config.model.num_layerz=3", 'Did you mean "num_layers"'),
                          ("--config.model.num_layers=x", "invalid literal for int()"),
                          ("--config.model.num_heads=3", "num_kv_heads=2 must divide num_heads=3")]:
        result = _generate(flag)
        assert result.returncode != 0, flag
        assert message in result.stderr, (flag, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, flag
