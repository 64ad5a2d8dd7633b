"""Outputs that appear whole or not at all: written under a temporary name beside the target, then renamed.

The one place for it: exports (hf/) write whole directories and files through it, the data pipeline its
checkpoints, caches and manifests. The temporary sits beside the target, so the rename stays on one filesystem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from devstral_jax.errors import OutputExistsError


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yields a fresh temporary directory; on success it becomes `path`, on any error it is removed."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(f"{path} already exists; remove it or ask to overwrite it.")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.partial-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if os.path.exists(path):
        old = f"{path}.old-{os.getpid()}"
        os.rename(path, old)
        os.rename(temporary, path)
        shutil.rmtree(old)
    else:
        os.rename(temporary, path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yields a fresh temporary file path beside `path` (a hidden name, unique even between threads); on success
    it replaces `path`, on any error it is removed."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(f"{path} already exists; remove it or ask to overwrite it.")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.",
                                             suffix=".partial")
    os.close(descriptor)
    try:
        yield temporary
        os.chmod(temporary, 0o644)  # mkstemp makes it private
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path`, replacing it, so that a reader sees the old file or the whole new one, even
    after a crash (the data reaches the disk before the rename)."""
    with atomic_file(path, overwrite=True) as temporary, open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
