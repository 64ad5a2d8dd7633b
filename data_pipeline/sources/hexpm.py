"""Hex.pm: packages listed by the API (paged, most downloaded first), tarballs from repo.hex.pm.

    GET {api_url}/packages?page=N&sort=total_downloads       100 packages a page, [] past the end
    GET {api_url}/packages/NAME/releases/VERSION             release metadata; `checksum` = tarball SHA-256
    GET {repo_url}/tarballs/NAME-VERSION.tar                 the v3 tarball (hex_tarball.py)

One unit per package: its latest stable release. The licence comes with the listing, so a package whose
licence is not allowed is never downloaded. Anonymous clients get 100 API requests a minute; an API key
in the environment (`HEX_API_KEY` by default) raises that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import AsyncIterator, Callable

from data_pipeline.sources import BadAnswer, Fetched, Unit, UnitRejected, expect
from data_pipeline.sources.hex_tarball import metadata_from_terms, read_hex_tarball
from data_pipeline.sources.http import HttpClient
from data_pipeline.sources.safe_tar import TarLimits
from devstral_jax.elixir.parse import read_erlang_terms
from devstral_jax.elixir.worker import ElixirPool, WorkerCrashed, WorkerError, WorkerTimeout

log = logging.getLogger(__name__)
_NAME = re.compile(r"[a-z][a-z0-9_]*")  # Hex's rule for package names
_VERSION = re.compile(r"[0-9][0-9A-Za-z.+\-]*")


@dataclasses.dataclass(frozen=True)
class HexConfig:
    api_url: str
    repo_url: str
    sort: str
    max_packages: int  # 0: all
    api_key_env: str
    max_tarball_bytes: int
    max_uncompressed_bytes: int


class HexSource:
    def __init__(self, config: HexConfig, http: HttpClient, pool: ElixirPool, cache_dir: Path,
                 wanted: Callable[[str], bool], limits: TarLimits):
        self.config = config
        self.http = http
        self.pool = pool
        self.cache_dir = cache_dir
        self.wanted = wanted
        self.limits = dataclasses.replace(limits, max_total_bytes=config.max_uncompressed_bytes)
        key = os.environ.get(config.api_key_env)
        self.headers = {"authorization": key} if key else {}

    async def units(self) -> AsyncIterator[Unit]:
        listed = 0
        page = 1
        while True:
            packages = expect(await self.http.get_json(f"{self.config.api_url}/packages",
                                                       params={"page": page, "sort": self.config.sort},
                                                       headers=self.headers), list, f"Hex package listing page {page}")
            if not packages:
                return
            for package in packages:
                try:
                    name, version, licences = _listed(package)
                except BadAnswer as error:
                    log.warning("Skipping a Hex package on listing page %d: %s.", page, error)
                    continue
                yield Unit(id=f"hex/{name}/{version}", kind="hex", package=name, version=version,
                           url=f"https://hex.pm/packages/{name}/{version}", licences=licences,
                           fetch=lambda name=name, version=version: self.fetch(name, version))
                listed += 1
                if listed == self.config.max_packages:
                    return
            page += 1

    async def fetch(self, name: str, version: str) -> Fetched:
        release = expect(await self.http.get_json(f"{self.config.api_url}/packages/{name}/releases/{version}",
                                                  headers=self.headers), dict, f"the release {name} {version}")
        checksum = expect(release.get("checksum"), (str, type(None)), f"the checksum of release {name} {version}")
        tarball = await self.http.download(f"{self.config.repo_url}/tarballs/{name}-{version}.tar",
                                           self.cache_dir / f"{name}-{version}.tar",
                                           max_bytes=self.config.max_tarball_bytes)
        return await asyncio.to_thread(read_package, tarball, self.pool, wanted=self.wanted, limits=self.limits,
                                       max_tarball_bytes=self.config.max_tarball_bytes,
                                       expected_checksum=checksum)


def _listed(package: object) -> tuple[str, str, tuple[str, ...]]:
    """(name, latest version, declared licences) of one entry of the listing, checked before any is used."""
    package = expect(package, dict, "a listed package")
    name = expect(package.get("name"), str, "its name")
    version = package.get("latest_stable_version") or package.get("latest_version")
    if not (_NAME.fullmatch(name) and isinstance(version, str) and _VERSION.fullmatch(version)):
        raise BadAnswer(f"{name[:60]!r} version {str(version)[:30]!r} is not a valid name")  # they name cache files
    meta = expect(package.get("meta") or {}, dict, f"the meta of {name}")
    licences = expect(meta.get("licenses") or [], list, f"the licences of {name}")
    return name, version, tuple(expect(licence, str, f"a licence of {name}") for licence in licences)


def read_package(path: Path, pool: ElixirPool, *, wanted: Callable[[str], bool], limits: TarLimits,
                 max_tarball_bytes: int, expected_checksum: str | None = None) -> Fetched:
    """A package tarball's Elixir files, with the licences its metadata declares."""
    if path.stat().st_size > max_tarball_bytes:
        raise UnitRejected(f"too large: {path.name} is over the {max_tarball_bytes}-byte cap")
    tarball = read_hex_tarball(path.read_bytes(), wanted=wanted, limits=limits, max_tarball_bytes=max_tarball_bytes,
                               expected_checksum=expected_checksum, name=path.name)
    try:
        metadata = metadata_from_terms(read_erlang_terms(pool, tarball.metadata_text))
    except (ValueError, WorkerError, WorkerCrashed, WorkerTimeout) as error:
        raise UnitRejected(f"bad metadata: {path.name}: {str(error).splitlines()[0]}") from None
    licences = metadata.get("licenses") or []
    tarball.contents.licences = [str(l) for l in licences] if isinstance(licences, list) else []
    return tarball.contents
