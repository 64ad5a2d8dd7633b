"""A whole corpus build against hostile answers: a bad unit fails alone, is recorded with its reason, is skipped by
reruns unless retry_failed is set, and the run always finishes; a file removed from a local tree leaves the corpus."""

import json
import shutil
from pathlib import Path

from conftest import FIXTURES
from dp_fakes import FakeHub, package_tarball

from data_pipeline.run import run


def _hex_config(data_config, hub):
    data_config.sources.hex.enabled = True
    data_config.sources.hex.api_url = f"{hub.url}/api"
    data_config.sources.hex.repo_url = f"{hub.url}/repo"
    data_config.http.retries = 1
    return data_config


def _failed(manifest):
    return {f["unit"]["id"]: f["reason"] for f in manifest["failed_units"]}


def test_a_hostile_release_answer_fails_its_unit_alone_and_reruns_skip_it_until_asked(data_config):
    with FakeHub(page_size=10) as hub:
        for name in ("alpha", "beta"):
            hub.add_package(name, "1.0.0", package_tarball(name, "1.0.0"))
        release, hostile = "/api/packages/beta/releases/1.0.0", {"json": None}
        original = hub._route

        def route(request, method, path):  # the release endpoint of beta answers `null`
            if path == release and hostile["json"] is None:
                return hub._send_json(request, None)
            return original(request, method, path)
        hub._route = route
        config = _hex_config(data_config, hub)
        manifest = run(config)
        assert _failed(manifest) == {"hex/beta/1.0.0": "the release beta 1.0.0 is NoneType 'None', expected dict"}
        units = {u["id"]: u["status"] for u in manifest["units"]}
        assert units == {"hex/alpha/1.0.0": "done", "hex/beta/1.0.0": "failed"}
        assert manifest["splits"]["train"]["records"] + manifest["splits"]["validation"]["records"] > 0  # alpha's

        asked = hub.statuses(release)
        again = run(config)  # skipped, still reported
        assert hub.statuses(release) == asked and _failed(again) == _failed(manifest)

        hostile["json"] = "fixed"
        config.retry_failed = True
        retried = run(config)
        assert retried["failed_units"] == [] and len(hub.statuses(release)) == len(asked) + 1
        assert {u["id"]: u["status"] for u in retried["units"]}["hex/beta/1.0.0"] == "done"


def test_a_listing_that_is_an_object_is_recorded_and_the_other_sources_still_build(data_config):
    with FakeHub() as hub:
        hub._route = lambda request, method, path: hub._send_json(request, {"error": "maintenance"})
        config = _hex_config(data_config, hub)
        config.sources.local.paths = (str(FIXTURES / "elixir_tree"),)
        manifest = run(config)
    assert _failed(manifest) == {"listing of HexSource": "Hex package listing page 1 is dict "
                                                         "\"{'error': 'maintenance'}\", expected list"}
    assert {u["kind"] for u in manifest["units"]} == {"local"} and manifest["files"]["kept"] > 0


def test_a_file_deleted_from_a_local_tree_leaves_the_corpus_on_rebuild(data_config, tmp_path):
    tree = tmp_path / "app"
    shutil.copytree(FIXTURES / "elixir_tree", tree)
    data_config.sources.local.paths = (str(tree),)
    out = Path(data_config.output_dir)

    def paths() -> set[str]:
        return {json.loads(line)["source"]["path"] for split in ("train", "validation")
                for line in (out / "jsonl" / f"{split}.jsonl").read_text().splitlines()}

    run(data_config)
    before = paths()
    gone = sorted(before)[0]
    (tree / gone).unlink()
    run(data_config)
    assert paths() == before - {gone}
