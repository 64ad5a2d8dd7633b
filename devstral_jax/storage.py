"""Paths that are local or URLs (`gs://bucket/run`, or any scheme etils.epath opens): workdirs, checkpoints and
data may live in a bucket. A URL is kept as given (making it "absolute" would turn it into a local folder); an
object store has no rename, no append and no empty directories, which the few helpers here account for."""

from __future__ import annotations

import os
import shutil

import xxhash
from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute; a URL as it is."""
    return os.fspath(path) if is_remote(path) else os.path.abspath(os.fspath(path))


def file_hash(path: str | os.PathLike) -> str:
    """The xxh3-128 hex digest of a file's bytes, read in 16 MiB pieces."""
    digest = xxhash.xxh3_128()
    with epath.Path(path).open("rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def files_under(directory: str | os.PathLike) -> list[str]:
    """The paths, relative to `directory`, of every file under it at any depth (hidden ones included), sorted."""
    base = os.fspath(directory).split("://", 1)[-1]  # how walk() names a bucket's folders: without the scheme
    return sorted(os.path.relpath(os.path.join(folder, name), base)
                  for folder, _, names in epath.Path(directory).walk() for name in names)


def move_tree(source: str, target: str) -> None:
    """Moves the directory `source` to `target` (whose parent need not exist); in a bucket, file by file."""
    if not is_remote(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(source, target)
        return
    for name in files_under(source):
        epath.Path(source, name).copy(epath.Path(target, name))
    epath.Path(source).rmtree()
