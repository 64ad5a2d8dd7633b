"""Hex.pm through a real HTTP server on 127.0.0.1: paging, checksums, ETags, rate limits, hostile tarballs."""

import asyncio
import json
import tarfile
import time
from pathlib import Path

import pytest
from dp_fakes import FakeHub, elixir_files, hex_tarball, package_tarball, tar_bytes

from data_pipeline.run import run
from data_pipeline.sources.hexpm import HexConfig, HexSource
from data_pipeline.sources.http import HttpClient, HttpConfig
from data_pipeline.sources.safe_tar import TarLimits

MiB = 1 << 20
LIMITS = TarLimits(max_files=1000, max_file_bytes=4 * MiB, max_total_bytes=128 * MiB)


def hex_config(hub: FakeHub) -> HexConfig:
    return HexConfig(api_url=f"{hub.url}/api", repo_url=f"{hub.url}/repo", sort="total_downloads", max_packages=0,
                     api_key_env="DP_TEST_HEX_KEY", max_tarball_bytes=16 * MiB, max_uncompressed_bytes=128 * MiB)


async def fetch_all(hub: FakeHub, pool, cache: Path, timeout_s: float = 10.0):
    """Lists and fetches every package the way the pipeline does; returns {unit id: Fetched} and the stats."""
    http = HttpClient(HttpConfig(user_agent="dp-test", timeout_s=timeout_s, retries=6, backoff_s=0.01,
                                 backoff_max_s=0.05, max_rate_limit_wait_s=30, max_connections=4), cache / "http")
    source = HexSource(hex_config(hub), http, pool, cache / "hex", lambda p: p.endswith((".ex", ".exs")), LIMITS)
    try:
        fetched = {unit.id: await unit.fetch() async for unit in source.units()}
    finally:
        await http.aclose()
    return fetched, http.stats


def hub_with_packages(count: int) -> FakeHub:
    hub = FakeHub(page_size=2)
    for i in range(count):
        name = f"pkg{i}"
        hub.add_package(name, "1.0.0", package_tarball(name, "1.0.0", licenses=["Apache 2.0"]))
    return hub


def test_pages_downloads_verifies_and_a_rerun_fetches_nothing_new(pool, tmp_path):
    with hub_with_packages(5) as hub:  # pages of 2: 2 + 2 + 1, then an empty page
        fetched, stats = asyncio.run(fetch_all(hub, pool, tmp_path))
        assert sorted(fetched) == [f"hex/pkg{i}/1.0.0" for i in range(5)]
        for i in range(5):
            files = fetched[f"hex/pkg{i}/1.0.0"]
            assert [f.path for f in files.files] == [f"lib/pkg{i}/part0.ex", f"lib/pkg{i}/part1.ex"]
            assert files.licences == ["Apache 2.0"]  # read from metadata.config by Erlang
        assert hub.statuses("/api/packages") == [200] * 9  # 4 listing pages (the last one empty), 5 releases
        assert hub.statuses("/repo/tarballs") == [200] * 5
        assert stats["not_modified"] == 0

        first_run = len(hub.log)
        again, stats = asyncio.run(fetch_all(hub, pool, tmp_path))
        assert again == fetched
        second_run = hub.log[first_run:]
        assert second_run and all(status == 304 for _, _, status in second_run)  # every answer: not modified
        assert stats["not_modified"] == len(second_run) and stats["downloaded_bytes"] == 0


def test_waits_for_the_rate_limit_and_retries_500s_and_timeouts(pool, tmp_path):
    with hub_with_packages(3) as hub:
        hub.faults["/api/packages"] = [429, 500, 500, "timeout"]
        hub.faults["/repo/tarballs/pkg1-1.0.0.tar"] = [500, "timeout"]
        hub.timeout_sleep_s = 1.0
        arrivals = []
        original = hub._serve
        hub._serve = lambda request, method: (arrivals.append(time.time()), original(request, method))
        fetched, stats = asyncio.run(fetch_all(hub, pool, tmp_path, timeout_s=0.4))
        assert sorted(fetched) == [f"hex/pkg{i}/1.0.0" for i in range(3)]
        assert all(len(f.files) == 2 for f in fetched.values())
        listing = [status for _, path, status in hub.log if path == "/api/packages"]
        assert listing[:3] == [429, 500, 500] and listing[-1] == 200
        reset = int(arrivals[0]) + 1  # the 429 said: the budget resets at this second
        assert arrivals[1] >= reset  # the client waited for it
        assert stats["rate_limited"] == 1 and stats["retries"] >= 6


@pytest.fixture(scope="module")
def hostile_packages():
    """name -> tarball bytes (what the server sends), for each way a package can be bad."""
    good = package_tarball("alpha", "1.0.0")
    contents = lambda name, *members: tar_bytes([*elixir_files(name, 1), *members], compressed=True)  # noqa: E731
    symlink = tarfile.TarInfo("lib/link.ex")
    symlink.type, symlink.linkname = tarfile.SYMTYPE, "/etc/passwd"
    bomb = tarfile.TarInfo("lib/zeros.ex")
    bomb.size = 130 * MiB  # gzips to ~130 KB, unpacks over Hex's 128 MiB cap
    big = tarfile.TarInfo("lib/big.ex")
    big.size = 50 * 1000 * 1000
    return {
        "alpha": good,
        "dotdot": hex_tarball("dotdot", "1.0.0", contents("dotdot", ("../evil_dotdot.ex", b"defmodule Evil do end"))),
        "absolute": hex_tarball("absolute", "1.0.0",
                                contents("absolute", ("/tmp/dp_evil_absolute.ex", b"defmodule E do end"))),
        "symlink": hex_tarball("symlink", "1.0.0", contents("symlink", symlink)),
        "badsum": hex_tarball("badsum", "1.0.0", contents("badsum"), checksum="AB" * 32),
        "bomb": hex_tarball("bomb", "1.0.0", contents("bomb", bomb)),
        "truncated": good.rstrip(b"\0")[:-100],  # cut inside contents.tar.gz
        "latin1": hex_tarball("latin1", "1.0.0", contents("latin1", ("lib/cafe.ex", b'defmodule Caf\xe9 do\nend\n'))),
        "bigfile": hex_tarball("bigfile", "1.0.0", contents("bigfile", big)),
    }


def test_hostile_and_broken_tarballs_are_skipped_with_their_reason(pool, tmp_path, data_config, hostile_packages):
    with FakeHub(page_size=4) as hub:
        for name, tarball in hostile_packages.items():
            hub.add_package(name, "1.0.0", tarball)
        hub.add_package("huge", "1.0.0", b"")
        hub.streamed["huge-1.0.0.tar"] = 50 * 1000 * 1000  # streamed without a length, over the 16 MiB cap
        hub.add_package("copyleft", "1.0.0", package_tarball("copyleft", "1.0.0"), licenses=["GPL-3.0"])
        data_config.sources.hex.update(enabled=True, api_url=f"{hub.url}/api", repo_url=f"{hub.url}/repo")
        manifest = run(data_config)

    units = {u["package"]: u for u in manifest["units"]}
    reasons = {name: units[name]["reason"] for name in units if units[name]["status"] == "rejected"}
    assert set(reasons) == {"dotdot", "absolute", "symlink", "badsum", "bomb", "truncated", "huge", "copyleft"}
    assert reasons["dotdot"].startswith("unsafe archive:") and "../evil_dotdot.ex" in reasons["dotdot"]
    assert reasons["absolute"].startswith("unsafe archive:") and "absolute path" in reasons["absolute"]
    assert reasons["symlink"].startswith("unsafe archive:") and "link" in reasons["symlink"]
    assert reasons["badsum"].startswith("checksum mismatch:")
    assert reasons["bomb"].startswith("too large:") and "unpacks to more than" in reasons["bomb"]
    assert reasons["truncated"].startswith("corrupt archive:")
    assert reasons["huge"].startswith("too large:") and "16777216-byte cap" in reasons["huge"]
    assert reasons["copyleft"] == "licence: GPL-3.0 is not on the allowlist"
    assert all(not path.endswith("copyleft-1.0.0.tar") for _, path, _ in hub.log)  # never downloaded

    skipped = {(f["unit"], f["path"]): f["reason"] for f in manifest["skipped_files"]}
    assert skipped[("hex/latin1/1.0.0", "lib/cafe.ex")].startswith("invalid UTF-8")
    assert skipped[("hex/bigfile/1.0.0", "lib/big.ex")].startswith("too large: 50000000 bytes")
    assert {u for u in units if units[u]["status"] == "done"} == {"alpha", "latin1", "bigfile"}
    assert units["latin1"]["files_kept"] == 1 and units["bigfile"]["files_kept"] == 1

    records = [json.loads(line) for line in (tmp_path / "out" / "jsonl" / "train.jsonl").read_text().splitlines()]
    records += [json.loads(line) for line in (tmp_path / "out" / "jsonl" / "validation.jsonl").read_text().splitlines()]
    assert {r["source"]["package"] for r in records} == {"alpha", "latin1", "bigfile"}
    assert all(r["source"]["licence"] == "MIT" for r in records)
    # Nothing escaped the output directory.
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert not Path("/tmp/dp_evil_absolute.ex").exists() and not any(Path("/").glob("evil_dotdot.ex"))
    assert not list(tmp_path.parent.glob("evil_dotdot.ex"))


def test_local_hex_cache_directory(pool, tmp_path, data_config):
    cache = tmp_path / "hexpm"
    cache.mkdir()
    (cache / "beta-2.0.0.tar").write_bytes(package_tarball("beta", "2.0.0", licenses=["MIT License"]))
    (cache / "gamma-1.0.0.tar").write_bytes(package_tarball("gamma", "1.0.0").rstrip(b"\0")[:-100])
    data_config.sources.hex_cache.dirs = (str(cache),)
    manifest = run(data_config)
    units = {u["id"]: u for u in manifest["units"]}
    assert units["hex/beta/2.0.0"]["status"] == "done" and units["hex/beta/2.0.0"]["licence"]["licence"] == "MIT"
    assert units["hex/gamma/1.0.0"]["status"] == "rejected"
    assert units["hex/gamma/1.0.0"]["reason"].startswith("corrupt archive:")


def test_unusual_metadata_values_convert_to_python(pool):
    from dp_fakes import hex_metadata

    from data_pipeline.sources.hex_tarball import metadata_from_terms
    from devstral_jax.elixir.parse import read_erlang_terms

    metadata = metadata_from_terms(read_erlang_terms(pool, hex_metadata("a", "1.0.0", ["MIT", "ISC"]).decode()))
    assert metadata["licenses"] == ["MIT", "ISC"]
    assert metadata["requirements"] == {"jason": {"app": "jason", "optional": False}}
