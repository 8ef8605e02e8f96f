"""The sentinels' periodic answer about the primary is waited for within a bound.

Commands due for the check wait behind it: sentinels that accept connections and never
answer (a blackholed network) held every command for the socket timeout, once a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from pydantic_toast.backends.redis_sentinel import (
    PRIMARY_CHECK_EVERY,
    PRIMARY_CHECK_RETRY,
    PRIMARY_CHECK_WAIT,
    RedisSentinelBackend,
)
from tests.silent_servers import SilentServer


@pytest.fixture
def silent_sentinel() -> Iterator[int]:
    """A loopback port whose connections open (the kernel's backlog) and are never answered."""
    with SilentServer(accept=False) as server:
        yield server.port


def test_an_unanswered_check_is_bounded_and_backs_off(silent_sentinel: int) -> None:
    """The check gives up after PRIMARY_CHECK_WAIT (not the 10 s socket timeout) and the next
    one comes PRIMARY_CHECK_RETRY later, not at the next command."""
    backend = RedisSentinelBackend(f"redis+sentinel://127.0.0.1:{silent_sentinel}/mymaster/0")

    async def check() -> tuple[float, float]:
        backend._client = backend._open_client()
        backend._primary_checked_at = time.monotonic() - 2 * PRIMARY_CHECK_EVERY
        started = time.monotonic()
        await backend._check_primary()
        waited = time.monotonic() - started
        next_due = backend._primary_checked_at + PRIMARY_CHECK_EVERY - time.monotonic()
        await backend.disconnect()
        return waited, next_due

    waited, next_due = asyncio.run(check())
    assert waited < PRIMARY_CHECK_WAIT + 1.0
    assert next_due > PRIMARY_CHECK_RETRY - 2.0
