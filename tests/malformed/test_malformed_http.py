"""Hostile answers from a real server on 127.0.0.1: each is a clear error for its unit (BadAnswer, FetchFailed or
UnitRejected), within its bounds of time and memory, never a crash of the whole run nor a hang."""

import asyncio
import json
import tracemalloc

import pytest

from data_pipeline.sources import BadAnswer, FetchFailed, UnitRejected
from data_pipeline.sources.github import GitHubConfig, GitHubSource
from data_pipeline.sources.hexpm import HexConfig, HexSource
from data_pipeline.sources.http import HttpClient, HttpConfig
from data_pipeline.sources.safe_tar import TarLimits
from tests.malformed.hostile_server import (HostileServer, body, gzip_bomb, gzipped, json_body, redirect_to, reset,
                                            trickle)

MiB = 1 << 20
LIMITS = TarLimits(max_files=100, max_file_bytes=MiB, max_total_bytes=8 * MiB)


def _client(tmp_path, **overrides) -> HttpClient:
    settings = dict(user_agent="malformed-suite", timeout_s=5.0, retries=1, backoff_s=0.01, backoff_max_s=0.02,
                    max_rate_limit_wait_s=5, max_connections=4, deadline_s=10.0, max_json_bytes=MiB)
    return HttpClient(HttpConfig(**{**settings, **overrides}), tmp_path / "http")


def _run(coroutine_function, tmp_path, **overrides):
    """Runs `coroutine_function(client)` against a fresh client, closing it after."""
    async def main():
        client = _client(tmp_path, **overrides)
        try:
            return await coroutine_function(client)
        finally:
            await client.aclose()
    return asyncio.run(main())


def _hex(server, client, tmp_path) -> HexSource:
    config = HexConfig(api_url=f"{server.url}/api", repo_url=f"{server.url}/repo", sort="total_downloads",
                       max_packages=0, api_key_env="MALFORMED_NO_KEY", max_tarball_bytes=MiB,
                       max_uncompressed_bytes=8 * MiB)
    return HexSource(config, client, None, tmp_path / "hex", lambda path: path.endswith(".ex"), LIMITS)


async def _listed(source) -> list[str]:
    return [unit.id async for unit in source.units()]


# --- Hex.pm answers of the wrong shape ---

@pytest.mark.parametrize("listing, message", [
    ({"packages": []}, "Hex package listing page 1 is dict"),
    ("not a list", "Hex package listing page 1 is str"),
    (None, "Hex package listing page 1 is NoneType"),
])
def test_a_package_listing_that_is_not_a_list_is_a_bad_answer(tmp_path, listing, message):
    with HostileServer() as server:
        server.answers["/api/packages"] = json_body(listing)
        with pytest.raises(BadAnswer, match=message):
            _run(lambda client: _listed(_hex(server, client, tmp_path)), tmp_path)


def test_listed_packages_of_the_wrong_shape_are_skipped_and_the_good_one_kept(tmp_path, caplog):
    good = {"name": "good", "latest_stable_version": "1.0.0", "meta": {"licenses": ["MIT"]}}
    page = [1, "text", None, {"name": 7}, {"name": "../evil", "latest_version": "1.0"},
            {"name": "licences", "latest_version": "1.0.0", "meta": {"licenses": "MIT"}},
            {"name": "metas", "latest_version": "1.0.0", "meta": ["MIT"]},
            {"name": "noversion", "latest_stable_version": None, "latest_version": None}, good]
    with HostileServer() as server:
        pages = iter([json_body(page), json_body([])])
        server.answers["/api/packages"] = lambda request: next(pages)(request)
        assert _run(lambda client: _listed(_hex(server, client, tmp_path)), tmp_path) == ["hex/good/1.0.0"]
    assert caplog.text.count("Skipping a Hex package on listing page 1") == len(page) - 1
    assert "the licences of licences is str" in caplog.text and "a listed package is int" in caplog.text


@pytest.mark.parametrize("release, message", [
    (None, r"the release good 1.0.0 is NoneType"),
    ([], r"the release good 1.0.0 is list"),
    ({"checksum": 12345}, r"the checksum of release good 1.0.0 is int"),
])
def test_a_release_answer_of_the_wrong_shape_is_a_bad_answer(tmp_path, release, message):
    with HostileServer() as server:
        server.answers["/api/packages/good/releases/1.0.0"] = json_body(release)
        with pytest.raises(BadAnswer, match=message):
            _run(lambda client: _hex(server, client, tmp_path).fetch("good", "1.0.0"), tmp_path)
        assert "/repo/tarballs/good-1.0.0.tar" not in server.hits  # nothing downloaded on a bad answer


# --- GitHub GraphQL answers of the wrong shape ---

@pytest.mark.parametrize("answer, error, message", [
    ({"data": None}, BadAnswer, "its data is NoneType"),
    ([], BadAnswer, "GitHub's search answer is list"),
    ({"data": {"search": None}}, BadAnswer, "its search is NoneType"),
    ({"data": {"search": {"repositoryCount": "9", "nodes": [], "pageInfo": {"hasNextPage": False}}}}, BadAnswer,
     "search.repositoryCount is str"),
    ({"data": {"search": {"repositoryCount": 1, "nodes": {}, "pageInfo": {"hasNextPage": False}}}}, BadAnswer,
     "search.nodes is dict"),
    ({"data": {"search": {"repositoryCount": 1, "nodes": [], "pageInfo": {"hasNextPage": True}}}}, BadAnswer,
     "pageInfo.endCursor is NoneType"),
    ({"data": {"rateLimit": {"cost": 1, "remaining": 0, "resetAt": "soon"}}}, BadAnswer, "resetAt 'soon' is not a"),
    ({"errors": [{"message": "Something went wrong"}], "data": None}, FetchFailed, "Something went wrong"),
])
def test_a_graphql_answer_of_the_wrong_shape_is_a_clear_error(tmp_path, monkeypatch, answer, error, message):
    monkeypatch.setenv("MALFORMED_TOKEN", "t")
    config = GitHubConfig(api_url="", token_env="MALFORMED_TOKEN", min_stars=1, pushed_since="2020-01-01",
                          created_from="2020-01-01", created_until="2020-01-02", page_size=10, search_cap=1000,
                          max_repos=0, max_tarball_bytes=MiB, max_uncompressed_bytes=MiB)
    with HostileServer() as server:
        server.answers["/graphql"] = json_body(answer)
        config = GitHubConfig(**{**config.__dict__, "api_url": server.url})
        with pytest.raises(error, match=message):
            _run(lambda client: _listed(GitHubSource(config, client, tmp_path, str.islower, LIMITS)), tmp_path)


# --- transport-level hostility ---

def test_an_answer_that_is_not_json_is_a_bad_answer(tmp_path):
    with HostileServer() as server:
        server.answers["/x"] = body(b"<html>Service Unavailable</html>")
        with pytest.raises(BadAnswer, match=r"/x: the answer is not JSON \(b'<html>"):
            _run(lambda client: client.get_json(f"{server.url}/x"), tmp_path)


def test_json_nested_far_too_deep_is_a_bad_answer(tmp_path):
    with HostileServer() as server:
        server.answers["/deep"] = body(b"[" * 200_000 + b"]" * 200_000)
        with pytest.raises(BadAnswer, match="nested too deeply"):
            _run(lambda client: client.get_json(f"{server.url}/deep"), tmp_path)


def test_a_redirect_loop_stops_after_max_redirects(tmp_path):
    with HostileServer() as server:
        server.answers["/a"] = redirect_to("/b")
        server.answers["/b"] = redirect_to("/a")
        with pytest.raises(BadAnswer, match=r"/a: more than 3 redirects \(a redirect loop\?\)"):
            _run(lambda client: client.get_json(f"{server.url}/a"), tmp_path, max_redirects=3)
        assert server.hits["/a"] + server.hits["/b"] == 4


def test_a_body_trickled_a_byte_at_a_time_hits_the_overall_deadline(tmp_path):
    with HostileServer() as server:
        server.answers["/slow"] = trickle(json.dumps(list(range(1000))).encode(), every_s=0.05)
        with pytest.raises(BadAnswer, match=r"/slow: no complete answer within http.deadline_s=1 s"):
            _run(lambda client: client.get_json(f"{server.url}/slow"), tmp_path, deadline_s=1.0)
        assert server.hits["/slow"] == 1  # a stalling server is not asked again


def test_a_gzip_bomb_answer_stops_at_the_cap_without_inflating_in_memory(tmp_path):
    with HostileServer() as server:
        server.answers["/bomb"] = gzip_bomb(300 * MiB, prefix=b'{"a": "')  # ~300 KB on the wire
        tracemalloc.start()
        try:
            with pytest.raises(BadAnswer, match=r"too large: .*/bomb is over the 1048576-byte cap once inflated"):
                _run(lambda client: client.get_json(f"{server.url}/bomb"), tmp_path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 16 * MiB, peak


def test_a_gzip_bomb_download_is_rejected_and_nothing_kept(tmp_path):
    with HostileServer() as server:
        server.answers["/repo/tarballs/x-1.0.0.tar"] = gzip_bomb(64 * MiB)
        dest = tmp_path / "x-1.0.0.tar"
        with pytest.raises(UnitRejected, match=r"too large: .* over the 2097152-byte cap once inflated"):
            _run(lambda client: client.download(f"{server.url}/repo/tarballs/x-1.0.0.tar", dest, max_bytes=2 * MiB),
                 tmp_path)
        assert not dest.exists() and not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("answer, message", [
    (body(b"\x1f\x8b\x08\x00garbage-not-deflate", headers={"content-encoding": "gzip"}), "the gzip body is corrupt"),
    (body(gzipped(b'{"a": 1}'), headers={"content-encoding": "br"}), "unsupported content-encoding 'br'"),
])
def test_a_body_that_cannot_be_decoded_is_a_bad_answer(tmp_path, answer, message):
    with HostileServer() as server:
        server.answers["/enc"] = answer
        with pytest.raises(BadAnswer, match=message):
            _run(lambda client: client.get_json(f"{server.url}/enc"), tmp_path)


def test_a_gzipped_answer_within_the_cap_is_read(tmp_path):
    with HostileServer() as server:
        server.answers["/ok"] = body(gzipped(json.dumps({"a": [1, 2]}).encode()), headers={"content-encoding": "gzip"})
        assert _run(lambda client: client.get_json(f"{server.url}/ok"), tmp_path) == {"a": [1, 2]}


def test_connection_resets_are_retried_then_fail_the_unit(tmp_path):
    with HostileServer() as server:
        server.answers["/reset"] = reset
        with pytest.raises(FetchFailed, match=r"/reset: gave up after 3 attempts"):
            _run(lambda client: client.get_json(f"{server.url}/reset"), tmp_path, retries=2)
        assert server.hits["/reset"] == 3


def test_a_missing_package_is_rejected_not_retried(tmp_path):
    with HostileServer() as server:
        with pytest.raises(UnitRejected, match="answered 404"):
            _run(lambda client: client.get_json(f"{server.url}/api/packages/gone/releases/1.0.0"), tmp_path)
        assert server.hits["/api/packages/gone/releases/1.0.0"] == 1
