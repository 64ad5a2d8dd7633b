"""Secrets and personal data: planted in a realistic Phoenix application (fixtures/phoenix_secrets), found by
kind, redacted in every record (or the file dropped), counted in the manifest; ordinary code is left alone."""

import json
import shutil

from conftest import FIXTURES

from data_pipeline.run import run
from data_pipeline.secret_filter import scan

PLANTED = {  # value -> the kind it is counted as
    "sM5dDFTtkwfwnCBdZLGeFEj7JGaHwmk/LYjiKB9YTZc9p285JRG5aoxQT5+4vSi6": "secret_key_base",  # config.exs
    "SIx4Ei1P": "salt",  # live_view: [signing_salt: ...]
    "kT7q2VbN": "salt",  # the endpoint's @session_options
    "jane.roe@acme-mail.io": "email",  # the mailer's sender (config.exs) and the maintainer (mix.exs)
    "369Uf99c5giz1z46_ut8UV-1CjXV7UXT": "secret",  # Guardian's secret_key
    "AKIAZ3Q7T6P2LXW4N5BV": "aws_access_key",  # detect-secrets' AWS detector
    "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": "secret",  # secret_access_key
    "Wq3-vLp2rT9z": "password",  # the Repo's password in runtime.exs
    "q8ZpL2xW9vN4mB7kR1tY6uE3": "secret",  # config :joken, default_signer: ...
    "Yh6Tg2Rf8Ed4Ws1Qa9Zx3Cv7": "secret",  # Joken.Signer.create("HS256", ...)
    "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu": "private_key",  # a PEM block's body
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9": "json_web_token",
}
NOT_SECRETS = ('password: "postgres"', "System.get_env(\"SECRET_KEY_BASE\")", "user@example.com", "dev@example.com",
               "git@github.com:acme/shop.git", 'key: "_shop_key"', "test_secret_key_base_for_dev_only")


def test_planted_secrets_are_redacted_and_counted_and_ordinary_code_is_kept(tmp_path, data_config):
    tree = shutil.copytree(FIXTURES / "phoenix_secrets", tmp_path / "shop")
    (tree / "lib" / "plug").mkdir()
    shutil.copy(FIXTURES / "real" / "plug_session_cookie.ex", tree / "lib" / "plug" / "session_cookie.ex")
    data_config.sources.local.paths = (str(tree),)
    data_config.instruct.fim_rate = 0.0
    manifest = run(data_config)

    assert manifest["secrets"]["found"] == {"aws_access_key": 1, "basic_auth_credentials": 1, "email": 2,
                                            "json_web_token": 1, "password": 1, "private_key": 1, "salt": 2,
                                            "secret": 4, "secret_key_base": 2}  # the dropped file's too
    assert manifest["secrets"]["dropped_files"] == 1
    skipped = {f["path"]: f["reason"] for f in manifest["skipped_files"]}
    assert skipped == {"config/prod.secret.exs": "secrets: a *.secret.exs file holds deployment secrets"}
    noted = {f["path"]: f["kinds"] for f in manifest["secrets"]["files"]}
    assert noted["config/runtime.exs"] == {"password": 1, "secret": 1} and "lib/plug/session_cookie.ex" not in noted
    assert noted["config/prod.secret.exs"] == {"basic_auth_credentials": 1, "secret_key_base": 1}
    assert "Kp4nZ8wQ2mXv" not in json.dumps(manifest)  # kinds and lines, never the values

    out = tmp_path / "out" / "jsonl"
    text = (out / "train.jsonl").read_text() + (out / "validation.jsonl").read_text()
    records = map(json.loads, text.splitlines())
    files = {r["source"]["path"]: r["text"] for r in records if r["task"] in ("file", "test_file")}  # whole files
    assert set(files) >= {"config/config.exs", "config/runtime.exs", "test/support/keys.ex", "mix.exs"}  # parsed
    for value in [*PLANTED, "Kp4nZ8wQ2mXv"]:
        assert value not in text, value
    assert 'secret_key_base: "<SECRET_KEY_BASE>"' in files["config/config.exs"]
    assert 'live_view: [signing_salt: "<SALT>"]' in files["config/config.exs"]
    assert '{"authorization", "Bearer <JSON_WEB_TOKEN>"}' in files["test/support/keys.ex"]
    pem = "-----BEGIN RSA PRIVATE KEY-----\n<PRIVATE_KEY>\n-----END RSA PRIVATE KEY-----"
    assert pem in files["test/support/keys.ex"]
    for ordinary in NOT_SECRETS:
        assert any(ordinary in file for file in files.values()), ordinary
    assert files["lib/plug/session_cookie.ex"] == (FIXTURES / "real" / "plug_session_cookie.ex").read_text()


def test_each_planted_value_is_found_as_its_kind():
    found = {}
    for path in (FIXTURES / "phoenix_secrets").rglob("*.ex*"):
        text = path.read_text()
        result = scan(str(path.relative_to(FIXTURES / "phoenix_secrets")), text)
        lines = text.split("\n")
        for secret in result.found:
            for value, kind in PLANTED.items():
                if value in lines[secret.line - 1]:
                    found[value] = secret.kind
    assert found == PLANTED
