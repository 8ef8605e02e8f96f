"""A redis-py connection closed under a command by another task counts as a lost connection."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection

from pydantic_toast import StorageConnectionError, StorageOperationError
from pydantic_toast._url import StorageURL
from pydantic_toast.runtime.errors import Failure, translate

FAILURE = Failure("RedisCluster", StorageURL.parse("redis+cluster://127.0.0.1:7000/"), "save")


def test_a_connection_closed_under_a_command_is_lost_and_retried() -> None:
    """redis-py fails with an AttributeError on the stream another task closed (seen under a
    cluster failover): translated as a lost connection, which the boundary retries once."""
    connection = Connection()  # not connected: no stream, as after a concurrent disconnect

    with pytest.raises(AttributeError) as raised:
        asyncio.run(connection._send_packed_command([b"PING\r\n"]))
    error, retryable = translate(raised.value, FAILURE)
    assert isinstance(error, StorageConnectionError)
    assert "lost" in str(error)
    assert retryable


def test_other_attribute_errors_are_not_connection_errors() -> None:
    """The same kind of error raised elsewhere stays an unexpected failure, not retried."""
    with pytest.raises(AttributeError) as raised:
        None.writelines([])  # type: ignore[attr-defined]
    error, retryable = translate(raised.value, FAILURE)
    assert isinstance(error, StorageOperationError)
    assert not retryable
