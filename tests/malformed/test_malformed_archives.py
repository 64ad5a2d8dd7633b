"""Hostile Hex tarballs, metadata.config terms and Elixir sources: each is rejected (or skipped) with its reason,
through the real Erlang parser and the real tar reader, and the worker keeps serving."""

import hashlib
import io
import tarfile

import pytest

from data_pipeline.filters import FilterConfig, decode, rejection
from data_pipeline.sources import UnitRejected
from data_pipeline.sources.hexpm import read_package
from data_pipeline.sources.safe_tar import TarLimits
from devstral_jax.elixir.parse import SourceSyntaxError, parse_source, read_erlang_terms
from devstral_jax.elixir.terms import decode_term, encode_term

MiB = 1 << 20
LIMITS = TarLimits(max_files=50, max_file_bytes=MiB, max_total_bytes=4 * MiB)
GOOD_EX = b"defmodule Good do\n  def one, do: 1\nend\n"
GOOD_METADATA = b'{<<"name">>,<<"good">>}.\n{<<"licenses">>,[<<"MIT">>]}.\n'


def _tar(members, compressed: bool) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if compressed else "w") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return out.getvalue()


def _package(metadata=GOOD_METADATA, contents=None, version=b"3", checksum=None, extra=()) -> bytes:
    contents = _tar([("lib/good.ex", GOOD_EX)], compressed=True) if contents is None else contents
    inner = hashlib.sha256(version + metadata + contents).hexdigest().upper().encode()
    return _tar([("VERSION", version), ("CHECKSUM", checksum or inner), ("metadata.config", metadata),
                 ("contents.tar.gz", contents), *extra], compressed=False)


def _read(tmp_path, pool, data: bytes, expected_checksum=None):
    path = tmp_path / "good-1.0.0.tar"
    path.write_bytes(data)
    return read_package(path, pool, wanted=lambda p: p.endswith(".ex"), limits=LIMITS, max_tarball_bytes=MiB,
                        expected_checksum=expected_checksum)


def _link(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


def _bomb_member() -> tarfile.TarInfo:
    info = tarfile.TarInfo("lib/huge.ex")
    info.size = 64 * MiB
    return info


def _nested(depth: int) -> bytes:
    return b'{<<"links">>,' + b"[" * depth + b"]" * depth + b"}.\n"


@pytest.mark.parametrize("data, message", [
    (b"not a tar at all" * 100, "corrupt archive: good-1.0.0.tar"),
    (_package()[:700], "corrupt archive"),
    (_tar([("VERSION", b"3")], compressed=False), "lacks CHECKSUM, metadata.config, contents.tar.gz"),
    (_package(checksum=b"0" * 64), "checksum mismatch: good-1.0.0.tar declares CHECKSUM"),
    (_package(version=b"2"), "unsupported format: good-1.0.0.tar is Hex tarball version b'2'"),
    (_package(extra=[("../escape", b"x")]), "unsafe archive: good-1.0.0.tar holds an unexpected entry '../escape'"),
    (_package(contents=_tar([("../../etc/cron.d/x.ex", GOOD_EX)], compressed=True)), "a path leaving its root"),
    (_package(contents=_tar([_link("lib/link.ex")], compressed=True)), "holds a link 'lib/link.ex'"),
    (_package(contents=_tar([_bomb_member()], compressed=True)), "unpacks to more than 4194304 bytes"),
    (_package(contents=b"\x1f\x8b\x08\x00" + b"\x00" * 50), "corrupt archive: good-1.0.0.tar contents.tar.gz"),
    (_package(metadata=_nested(3000)), r"bad metadata: good-1.0.0.tar: Erlang term nested deeper than 100 levels"),
    (_package(metadata=b"{<<\"name\">>, <<\"unterminated"), "bad metadata: good-1.0.0.tar: not valid Erlang terms"),
    (_package(metadata=b'{<<"m">>, #{[1] => 2}}.\n'), "An Erlang map with a list or map as a key cannot be decoded"),
    (_package(metadata=b"just_an_atom.\n"), "metadata.config is not a list of {Key, Value} terms"),
])
def test_a_hostile_hex_tarball_is_rejected_with_its_reason(tmp_path, pool, data, message):
    with pytest.raises(UnitRejected, match=message):
        _read(tmp_path, pool, data)
    assert _read(tmp_path, pool, _package()).licences == ["MIT"]  # the worker still serves


def test_a_registry_checksum_that_does_not_match_is_rejected(tmp_path, pool):
    with pytest.raises(UnitRejected, match="checksum mismatch: .* the registry says " + "ab" * 32):
        _read(tmp_path, pool, _package(), expected_checksum="AB" * 32)


def test_deep_terms_are_refused_by_the_decoder_itself():
    deep = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested deeper than 100 levels"):
        decode_term(encode_term_iteratively(deep))
    assert decode_term(encode_term([[[1]]]), max_depth=3) == [[[1]]]
    with pytest.raises(ValueError, match="nested deeper than 2 levels"):
        decode_term(encode_term([[[1]]]), max_depth=2)


def encode_term_iteratively(value) -> bytes:
    """`[[...[]...]]` as term_to_binary writes it (encode_term recurses, and 5,000 levels would exhaust it)."""
    depth = 0
    while value:
        value, depth = value[0], depth + 1
    return bytes([131]) + (b"l\x00\x00\x00\x01") * depth + b"j" + b"j" * depth


# --- Elixir sources ---

@pytest.mark.parametrize("source, message", [
    (b"defmodule Broken do\n  def f(, do: 1\nend\n", "syntax error"),
    (b'defmodule S do\n  @doc "never closed\nend\n', "missing terminator"),
    (b"}}} not elixir {{{\n", "unexpected token"),
    (b"defmodule Null do\n  def f, do: \"\x00\"\n" + b"\x00" * 10, "line 3: unexpected token: null byte"),
])
def test_an_elixir_source_that_does_not_parse_is_a_syntax_error(pool, source, message):
    with pytest.raises(SourceSyntaxError, match=message):
        parse_source(pool, "lib/x.ex", source)
    assert parse_source(pool, "lib/good.ex", GOOD_EX).modules[0].name == "Good"


def test_an_elixir_source_nested_thousands_deep_is_parsed_or_refused_never_a_crash(pool):
    deep = b"defmodule Deep do\n  def f, do: " + b"[" * 3000 + b"]" * 3000 + b"\nend\n"
    parsed = parse_source(pool, "lib/deep.ex", deep)
    assert [m.name for m in parsed.modules] == ["Deep"]  # the reply carries facts, not the 3,000-deep tree


def test_a_source_that_is_not_utf8_or_has_endless_lines_is_filtered_with_its_reason():
    assert decode(b"defmodule Latin do\n  @doc \"caf\xe9\"\nend\n") is None
    filters = FilterConfig(min_chars=20, max_chars=1_000_000, max_line_length=1000, max_mean_line_length=100.0,
                           min_alnum_ratio=0.25, excluded_dirs=(), generated_markers=(), generated_marker_lines=5)
    assert rejection("lib/long.ex", "defmodule L do\n  @x \"" + "a" * 5000 + "\"\nend\n", filters).startswith("long line: 5007 characters")
    assert rejection("lib/bin.ex", "\x00\x01\x02" * 100, filters) is not None


def test_erlang_terms_that_do_not_read_are_a_value_error(pool):
    with pytest.raises(ValueError, match="not valid Erlang terms"):
        read_erlang_terms(pool, "{unclosed, <<\"x\">>")
