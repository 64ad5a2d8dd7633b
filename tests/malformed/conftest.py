"""The malformed-input suite: every case runs under a deadline, so a hang is a failure, not a stuck test run."""

import signal
import threading

import pytest

from devstral_jax.elixir.parse import parser_pool

CASE_DEADLINE_S = 120


@pytest.fixture(autouse=True)
def deadline():
    """Fails the case if it runs past CASE_DEADLINE_S (SIGALRM interrupts even a blocking read)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"the case ran past {CASE_DEADLINE_S} s: it hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(CASE_DEADLINE_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def pool():
    with parser_pool(1) as workers:
        yield workers
