"""Reading untrusted tar archives (Hex package contents, GitHub repository tarballs) into memory, safely.

Nothing is ever extracted to disk: the wanted members are read into memory, within caps. An archive with
a member that could escape a target directory (an absolute path, `..`, a link, a device) is hostile and
rejected whole; so is one over the file-count or total-size cap (a decompression bomb stops at the cap,
judged from the member headers before any data is inflated). A single member over the per-file cap is
skipped with its reason.
"""

from __future__ import annotations

import dataclasses
import posixpath
import tarfile
import zlib
from typing import IO, Callable

from data_pipeline.sources import Fetched, Skipped, SourceFile, UnitRejected


@dataclasses.dataclass(frozen=True)
class TarLimits:
    max_files: int
    max_file_bytes: int
    max_total_bytes: int  # uncompressed, all members


def read_tar(stream: IO[bytes], *, compressed: bool, wanted: Callable[[str], bool], limits: TarLimits,
             strip_components: int = 0, name: str = "archive") -> Fetched:
    """Reads the wanted regular files of a tar stream; raises UnitRejected for a hostile or corrupt one."""
    files, skipped = [], []
    count = total = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|gz" if compressed else "r|") as archive:
            for member in archive:
                path = _checked_path(member, name)
                if member.isdir():
                    continue
                count += 1
                total += member.size
                if count > limits.max_files:
                    raise UnitRejected(f"too many files: {name} has more than {limits.max_files}")
                if total > limits.max_total_bytes:
                    raise UnitRejected(f"too large: {name} unpacks to more than {limits.max_total_bytes} bytes")
                path = "/".join(path.split("/")[strip_components:])
                if not path or not wanted(path):
                    continue
                if member.size > limits.max_file_bytes:
                    skipped.append(Skipped(path, f"too large: {member.size} bytes, over the "
                                                 f"{limits.max_file_bytes}-byte cap per file"))
                    continue
                data = archive.extractfile(member).read()
                if len(data) != member.size:
                    raise UnitRejected(f"corrupt archive: {name} is truncated inside {path}")
                files.append(SourceFile(path, data))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise UnitRejected(f"corrupt archive: {name}: {error}") from None
    return Fetched(files, skipped)


def _checked_path(member: tarfile.TarInfo, name: str) -> str:
    path = member.name
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise UnitRejected(f"unsafe archive: {name} holds a {kind} {path!r}")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":") or "\\" in path:
        raise UnitRejected(f"unsafe archive: {name} holds an absolute path {path!r}")
    normalized = posixpath.normpath(path)
    if normalized == ".." or normalized.startswith("../") or ".." in path.split("/"):
        raise UnitRejected(f"unsafe archive: {name} holds a path leaving its root {path!r}")
    return normalized.removeprefix("./")
