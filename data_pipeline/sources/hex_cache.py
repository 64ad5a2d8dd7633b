"""Hex tarballs already on disk: a local Hex cache (`~/.hex/packages/hexpm/`) or any folder of NAME-VERSION.tar.

Units are named like the Hex.pm source's (`hex/NAME/VERSION`), so a package seen by both is read once.
The licence comes from each tarball's metadata.config.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from data_pipeline.sources import Unit, existing_directories
from data_pipeline.sources.hexpm import read_package
from data_pipeline.sources.safe_tar import TarLimits
from devstral_jax.elixir.worker import ElixirPool


class HexCacheSource:
    def __init__(self, directories: tuple[str, ...], pool: ElixirPool, wanted: Callable[[str], bool],
                 limits: TarLimits, max_tarball_bytes: int):
        self.directories = existing_directories(directories, "sources.hex_cache.dirs")
        self.pool = pool
        self.wanted = wanted
        self.limits = limits
        self.max_tarball_bytes = max_tarball_bytes

    async def units(self) -> AsyncIterator[Unit]:
        for directory in self.directories:
            for path in sorted(directory.glob("*.tar")):
                name, _, version = path.stem.partition("-")  # Hex package names have no "-"
                yield Unit(id=f"hex/{name}/{version}", kind="hex", package=name, version=version,
                           url=f"https://hex.pm/packages/{name}/{version}",
                           fetch=lambda path=path: asyncio.to_thread(
                               read_package, path, self.pool, wanted=self.wanted, limits=self.limits,
                               max_tarball_bytes=self.max_tarball_bytes))
