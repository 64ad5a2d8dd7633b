"""Files written for a newer Elixir than the installed one (Nx's `~VEC[...]`, Elixir 1.15) are reported as such,
counted per version, not as broken files; on a newer Elixir they parse."""

import shutil

from conftest import FIXTURES

from data_pipeline.newer_syntax import installed_elixir, needs_newer
from data_pipeline.run import run

VECTORIZE = (FIXTURES / "real" / "nx_vectorize_test.exs").read_text()
ERROR_ON_LINE_7 = 'syntax error at line 7: invalid sigil delimiter: "E" (column 14, code point U+0045).'


def test_a_multi_letter_sigil_needs_elixir_1_15():
    assert needs_newer(VECTORIZE, ERROR_ON_LINE_7, "1.14.0") == \
        "needs a newer Elixir: 1.15+ (multi-letter sigil ~VEC), installed 1.14.0"
    assert needs_newer(VECTORIZE, ERROR_ON_LINE_7, "1.15.7") is None  # a newer Elixir reads it: a real error
    assert needs_newer(VECTORIZE, ERROR_ON_LINE_7.replace("line 7", "line 2"), "1.14.0") is None  # elsewhere
    assert needs_newer(VECTORIZE, "unexpected end of file", "1.14.0") is None


def test_the_pipeline_reports_newer_syntax_per_version(tmp_path, data_config):
    tree = tmp_path / "nx"
    (tree / "test" / "nx").mkdir(parents=True)
    shutil.copy(FIXTURES / "real" / "nx_vectorize_test.exs", tree / "test" / "nx" / "vectorize_test.exs")
    shutil.copy(FIXTURES / "elixir_tree" / "lib" / "my_app" / "broken.ex", tree / "broken.ex")
    shutil.copy(FIXTURES / "elixir_tree" / "lib" / "my_app" / "math.ex", tree / "math.ex")
    data_config.sources.local.paths = (str(tree),)
    manifest = run(data_config)
    reasons = {f["path"]: f["reason"] for f in manifest["skipped_files"]}
    assert reasons["broken.ex"].startswith("parse error: ")
    elixir = installed_elixir()
    assert manifest["pipeline"]["elixir_version"] == elixir
    if tuple(map(int, elixir.split(".")[:2])) < (1, 15):
        assert reasons["test/nx/vectorize_test.exs"] == \
            f"needs a newer Elixir: 1.15+ (multi-letter sigil ~VEC), installed {elixir}"
        assert manifest["files"]["needs_newer_elixir"] == {"1.15": 1}
        assert manifest["files"]["skipped_by_reason"] == {"parse error": 1, "needs a newer Elixir": 1}
    else:
        assert "test/nx/vectorize_test.exs" not in reasons and manifest["files"]["needs_newer_elixir"] == {}
