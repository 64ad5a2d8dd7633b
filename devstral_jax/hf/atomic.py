"""Outputs that appear whole or not at all: written under a temporary name beside the target, then renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator

from devstral_jax.errors import OutputExistsError


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yields a fresh temporary directory; on success it becomes `path`, on any error it is removed.

    The temporary directory is a sibling of `path`, so the final rename stays on one filesystem.
    """
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
    """Yields a temporary file path beside `path`; on success it replaces `path`, on any error it is removed."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(f"{path} already exists; remove it or ask to overwrite it.")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.partial-{os.getpid()}"
    try:
        yield temporary
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    os.replace(temporary, path)
