"""One parser worker shared by the toolkit's tests (starting a VM is the slow part)."""

import pytest

from devstral_jax.elixir.parse import parser_pool


@pytest.fixture(scope="session")
def parser():
    with parser_pool(1) as pool:
        yield pool
