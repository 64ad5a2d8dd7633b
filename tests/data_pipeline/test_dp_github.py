"""GitHub through a real HTTP server on 127.0.0.1: date-split search past the result cap, licences, tarballs."""

import datetime as dt
import json

import pytest
from dp_fakes import FakeHub, Repo, elixir_files

from data_pipeline import PipelineError
from data_pipeline.run import run


def github_hub() -> FakeHub:
    hub = FakeHub(search_cap=3)  # GitHub stops at 1,000 results a search; this one at 3
    start = dt.date(2020, 1, 1)
    for i in range(8):
        created = (start + dt.timedelta(days=40 * i)).isoformat()
        licence = {5: "GPL-3.0", 6: None}.get(i, "MIT")
        hub.repos.append(Repo(f"owner{i}", f"repo{i}", f"{i:040x}", created, licence, elixir_files(f"gh{i}")))
    return hub


def configure(data_config, hub, monkeypatch):
    monkeypatch.setenv("DP_TEST_GITHUB_TOKEN", hub.token)
    data_config.sources.github.update(
        enabled=True, api_url=f"{hub.url}/github", token_env="DP_TEST_GITHUB_TOKEN", created_from="2020-01-01",
        created_until="2020-12-31", page_size=2, search_cap=3)


def test_search_splits_dates_past_the_cap_and_fetches_allowed_repositories(data_config, monkeypatch, tmp_path):
    with github_hub() as hub:
        configure(data_config, hub, monkeypatch)
        manifest = run(data_config)
        queries = [path for _, path, _ in hub.log if path == "/github/graphql"]
        tarballs = [path for _, path, status in hub.log if path.startswith("/codeload/") and status == 200]

    units = {u["package"]: u for u in manifest["units"]}
    assert sorted(units) == [f"owner{i}/repo{i}" for i in range(8)]  # all 8, though one search returns 3
    assert len(queries) > 3
    assert units["owner5/repo5"]["reason"] == "licence: GPL-3.0 is not on the allowlist"
    assert units["owner6/repo6"]["reason"] == "licence: no licence declared"
    done = [name for name, unit in units.items() if unit["status"] == "done"]
    assert len(done) == 6 and len(tarballs) == 6  # rejected repositories are never downloaded
    assert units["owner0/repo0"]["version"] == "0" * 12 and units["owner0/repo0"]["files_kept"] == 2

    records = [json.loads(line) for name in ("train", "validation")
               for line in (tmp_path / "out" / "jsonl" / f"{name}.jsonl").read_text().splitlines()]
    texts = {r["source"]["path"] for r in records if r["task"] == "file" and r["source"]["package"] == "owner1/repo1"}
    assert texts == {"lib/gh1/part0.ex", "lib/gh1/part1.ex"}  # the tarball's top folder is stripped


def test_token_is_required_and_checked(data_config, monkeypatch):
    with github_hub() as hub:
        configure(data_config, hub, monkeypatch)
        monkeypatch.delenv("DP_TEST_GITHUB_TOKEN")
        with pytest.raises(PipelineError, match="needs a token: export DP_TEST_GITHUB_TOKEN"):
            run(data_config)
        monkeypatch.setenv("DP_TEST_GITHUB_TOKEN", "wrong")
        manifest = run(data_config)
    assert manifest["units"] == []
    assert "check the API key or token" in manifest["failed_units"][0]["reason"]
