"""The Hex v3 package tarball: an outer tar of VERSION, CHECKSUM, metadata.config and contents.tar.gz.

CHECKSUM is the SHA-256 of VERSION + metadata.config + contents.tar.gz (hex, upper case); the registry's
`checksum` is the SHA-256 of the whole tarball. Both are verified. metadata.config is a list of Erlang
terms (`{<<"name">>,<<"jason">>}.`), read by the real Erlang through the parser worker. Caps follow
Hex's own limits: 16 MiB per tarball, 128 MiB uncompressed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from typing import Any, Callable

from data_pipeline.sources import Fetched, UnitRejected
from data_pipeline.sources.safe_tar import TarLimits, read_tar

_MEMBERS = ("VERSION", "CHECKSUM", "metadata.config", "contents.tar.gz")
_MAX_METADATA_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class HexTarball:
    outer_checksum: str  # SHA-256 of the tarball, lower-case hex (what the Hex API calls `checksum`)
    metadata_text: str
    contents: Fetched


def read_hex_tarball(data: bytes, *, wanted: Callable[[str], bool], limits: TarLimits, max_tarball_bytes: int,
                     expected_checksum: str | None = None, name: str = "tarball") -> HexTarball:
    """Verifies and reads a package tarball held in memory; raises UnitRejected when it is unusable."""
    if len(data) > max_tarball_bytes:
        raise UnitRejected(f"too large: {name} is {len(data)} bytes, over the {max_tarball_bytes}-byte cap")
    outer_checksum = hashlib.sha256(data).hexdigest()
    if expected_checksum and outer_checksum != expected_checksum.lower():
        raise UnitRejected(f"checksum mismatch: {name} has SHA-256 {outer_checksum}, "
                           f"the registry says {expected_checksum.lower()}")
    members = _outer_members(data, name)
    inner = hashlib.sha256(members["VERSION"] + members["metadata.config"] + members["contents.tar.gz"]).hexdigest()
    declared = members["CHECKSUM"].decode("ascii", "replace").strip().lower()
    if declared != inner:
        raise UnitRejected(f"checksum mismatch: {name} declares CHECKSUM {declared[:64]!r}, "
                           f"its contents hash to {inner}")
    if members["VERSION"].strip() != b"3":
        raise UnitRejected(f"unsupported format: {name} is Hex tarball version {members['VERSION'][:10]!r}, not 3")
    if len(members["metadata.config"]) > _MAX_METADATA_BYTES:
        raise UnitRejected(f"too large: {name}'s metadata.config is over {_MAX_METADATA_BYTES} bytes")
    metadata = members["metadata.config"]
    try:
        metadata_text = metadata.decode("utf-8")
    except UnicodeDecodeError:
        metadata_text = metadata.decode("latin-1")  # what hex_core falls back to
    contents = read_tar(io.BytesIO(members["contents.tar.gz"]), compressed=True, wanted=wanted, limits=limits,
                        name=f"{name} contents.tar.gz")
    return HexTarball(outer_checksum, metadata_text, contents)


def _outer_members(data: bytes, name: str) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as outer:
            for member in outer:
                if member.name not in _MEMBERS or not member.isfile() or member.name in members:
                    raise UnitRejected(f"unsafe archive: {name} holds an unexpected entry {member.name!r}")
                members[member.name] = outer.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise UnitRejected(f"corrupt archive: {name}: {error}") from None
    if missing := [m for m in _MEMBERS if m not in members]:
        raise UnitRejected(f"corrupt archive: {name} lacks {', '.join(missing)}")
    return members


def metadata_from_terms(terms: list[Any]) -> dict[str, Any]:
    """metadata.config's `{Key, Value}` terms as a dict; nested key-value lists become dicts too."""
    def convert(value: Any) -> Any:
        if isinstance(value, list) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return {str(k): convert(v) for k, v in value}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    if not all(isinstance(term, tuple) and len(term) == 2 for term in terms):
        raise UnitRejected("bad metadata: metadata.config is not a list of {Key, Value} terms")
    return {str(key): convert(value) for key, value in terms}
