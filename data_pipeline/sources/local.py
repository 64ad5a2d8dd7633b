"""Local Elixir code: a directory tree or a git repository (its tracked files), e.g. a company's own codebase.

The files are cut into batches of `batch_files`, one unit each. A tree's version is a hash of its file
list and their sizes and modification times, so editing the tree makes a resumed run redo it. The
licence is detected from the tree (licence_detect.py: LICENSE files, mix.exs, README), unless the config
declares one for all local code (`sources.local.licence`, e.g. LicenseRef-own-code for code you own).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import AsyncIterator, Callable

from data_pipeline import PipelineError
from data_pipeline.licence_detect import Declared, declared_licence
from data_pipeline.sources import Fetched, Skipped, SourceFile, Unit, existing_directories

_SKIPPED_DIRS = {"_build", "deps", "node_modules"}  # build output and vendored dependencies


class LocalSource:
    def __init__(self, paths: tuple[str, ...], licence: str, batch_files: int, wanted: Callable[[str], bool],
                 max_file_bytes: int):
        self.roots = existing_directories(paths, "sources.local.paths")
        if len({root.name for root in self.roots}) != len(self.roots):
            raise PipelineError("sources.local.paths: two paths share a folder name; each names its package.")
        self.licence = licence  # "" to detect each tree's own
        self.batch_files = batch_files
        self.wanted = wanted  # which files (by relative path) are read: code and prose
        self.max_file_bytes = max_file_bytes

    async def units(self) -> AsyncIterator[Unit]:
        for root in self.roots:
            paths = await asyncio.to_thread(self._list, root)
            version = tree_version(root, paths)
            declared = (Declared(self.licence, "config sources.local.licence") if self.licence
                        else await asyncio.to_thread(declared_licence, root))
            for index in range(0, len(paths), self.batch_files):
                batch = paths[index:index + self.batch_files]
                yield Unit(id=f"local/{root.name}/{version}/{index // self.batch_files:05d}", kind="local",
                           package=root.name, version=version, url=root.as_uri(),
                           licences=(declared.licence,) if declared.licence else (), licence_source=declared.source,
                           fetch=lambda root=root, batch=batch: asyncio.to_thread(self._read, root, batch))

    def _list(self, root: Path) -> list[str]:
        """Relative paths of the wanted files: git's tracked files in a repository, else a walk."""
        if (root / ".git").exists() and shutil.which("git"):
            listing = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True)
            paths = [p for p in listing.stdout.decode("utf-8", "replace").split("\0") if p]
        else:
            paths = []
            for directory, subdirectories, names in os.walk(root):
                subdirectories[:] = sorted(d for d in subdirectories
                                           if not d.startswith(".") and d not in _SKIPPED_DIRS)
                relative = Path(directory).relative_to(root)
                paths.extend(str(relative / name) for name in names)
        return sorted(p for p in paths if self.wanted(p))

    def _read(self, root: Path, paths: list[str]) -> Fetched:
        fetched = Fetched(files=[])
        for relative in paths:
            path = root / relative
            if path.is_symlink():
                fetched.skipped.append(Skipped(relative, "symlink: not followed"))
            elif not path.is_file():
                fetched.skipped.append(Skipped(relative, "missing: listed but not a file"))
            elif (size := path.stat().st_size) > self.max_file_bytes:
                fetched.skipped.append(Skipped(relative, f"too large: {size} bytes, over the "
                                                         f"{self.max_file_bytes}-byte cap per file"))
            else:
                fetched.files.append(SourceFile(relative, path.read_bytes()))
        return fetched


def tree_version(root: Path, paths: list[str]) -> str:
    digest = hashlib.sha256()
    for relative in paths:
        try:
            stat = (root / relative).lstat()
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except FileNotFoundError:  # tracked by git but deleted
            digest.update(f"{relative}\0missing\n".encode())
    return "tree-" + digest.hexdigest()[:12]
