"""The installed Elixir's own modules, rebuilt as documented source from their docs chunks (offline).

One unit per OTP application (elixir, eex, ex_unit, iex, logger, mix). `otp_docs.exs`, beside this file, turns
each module's docs and specs into a file of @moduledoc/@doc/@spec and function heads; the parser then reads
it like any other file, so docs become explanation records and doctests become test-writing and
"what does this return" records. Elixir is Apache-2.0.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

from data_pipeline.sources import Fetched, SourceFile, Unit, UnitRejected
from devstral_jax.elixir.worker import ElixirPool, WorkerError

OTP_DOCS_SCRIPT = Path(__file__).with_name("otp_docs.exs")
ELIXIR_LICENCE = "Apache-2.0"


def otp_docs_worker() -> ElixirPool:
    return ElixirPool(OTP_DOCS_SCRIPT, size=1, timeout=300)


class OtpDocsSource:
    def __init__(self, apps: tuple[str, ...], worker: ElixirPool):
        self.apps = apps
        self.worker = worker  # runs otp_docs.exs (see otp_docs_worker)

    async def units(self) -> AsyncIterator[Unit]:
        version = await asyncio.to_thread(self.worker.call, {"op": "version"})
        for app in self.apps:
            yield Unit(id=f"otp_docs/{app}/{version}", kind="otp_docs", package=app, version=version,
                       url=f"https://github.com/elixir-lang/elixir/tree/v{version}/lib/{app}",
                       licences=(ELIXIR_LICENCE,), fetch=lambda app=app: self.fetch(app))

    async def fetch(self, app: str) -> Fetched:
        try:
            sources = await asyncio.to_thread(self.worker.call, {"op": "app", "app": app})
        except WorkerError as error:
            raise UnitRejected(f"not installed: {error.args[0].splitlines()[0]}") from None
        return Fetched([SourceFile(s["path"], s["source"].encode()) for s in sources])
