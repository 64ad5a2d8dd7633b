"""devstral_jax.atomic: a target is either the old file or the whole new one, and nothing is left beside it
(atomic_directory: test_hf_export.py)."""

import os
import stat

import pytest

from devstral_jax.atomic import atomic_file, atomic_write
from devstral_jax.errors import OutputExistsError


def test_atomic_write_replaces_whole_files_readable_by_all(tmp_path):
    target = tmp_path / "cache" / "meta.json"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not the private mode of a temporary file
    assert os.listdir(target.parent) == ["meta.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        with atomic_file(target):
            pass
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_file(target, overwrite=True) as temporary:
            with open(temporary, "wb") as file:
                file.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.gguf"]


def test_concurrent_writers_of_one_target_do_not_share_a_temporary(tmp_path):
    target = tmp_path / "unit.json"
    with atomic_file(target, overwrite=True) as first, atomic_file(target, overwrite=True) as second:
        assert first != second
        with open(first, "wb") as a, open(second, "wb") as b:
            a.write(b"first writer")
            b.write(b"second writer")
    assert target.read_bytes() == b"first writer"  # the outer context commits last
    assert os.listdir(tmp_path) == ["unit.json"]

