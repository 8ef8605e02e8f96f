"""Redis commands packed once (RESP) and run on one connection of a redis-py asyncio pool.

redis-py's generic path (``Redis.execute_command``, a registered script's ``__call__``)
encodes every argument through its ``Encoder``, wraps each call in its retry and
observability machinery and looks a response callback up: about as many instructions as the
socket round trip itself. The Redis backend's saves and loads pack their commands here
instead (bytes in, constant parts encoded once) and run them on the pool's own connections:
the checkout (and its errors, marked as connecting by the backend's pool), the connection's
socket timeouts, its disconnect on any error or cancellation and its reply parsing stay
redis-py's.
"""

from __future__ import annotations

import hashlib
from typing import Any

from redis.asyncio.connection import ConnectionPool
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["Script", "command", "run"]


class Script:
    """A Lua script called by its SHA1 (``EVALSHA``), loaded where the server lacks it."""

    __slots__ = ("head", "text")

    def __init__(self, text: str) -> None:
        self.text = text.encode()
        sha = hashlib.sha1(self.text, usedforsecurity=False).hexdigest().encode()
        self.head = b"$7\r\nEVALSHA\r\n$40\r\n" + sha + b"\r\n"

    def call(self, keys: list[bytes], arguments: list[bytes]) -> bytes:
        """The packed ``EVALSHA`` of this script on ``keys`` and ``arguments``."""
        parts = [b"%d" % len(keys), *keys, *arguments]
        return b"".join(
            [b"*%d\r\n" % (len(parts) + 2), self.head]
            + [b"$%d\r\n%b\r\n" % (len(part), part) for part in parts]
        )


def command(*parts: bytes) -> bytes:
    """The packed command made of ``parts`` (the name first)."""
    return b"".join(
        [b"*%d\r\n" % len(parts)] + [b"$%d\r\n%b\r\n" % (len(part), part) for part in parts]
    )


async def run(
    pool: ConnectionPool,
    last: bytes,
    *,
    before: bytes = b"",
    replies_before: int = 0,
    script: Script | None = None,
) -> list[Any]:
    """Send the packed commands ``before`` (``replies_before`` of them) and ``last`` in one
    write on one pooled connection; return each command's reply.

    An error reply is returned as its :class:`~redis.exceptions.ResponseError` (every reply
    is read, so the connection stays in step). When ``last`` is an ``EVALSHA`` of ``script``
    and finds the server without it (a restart, ``SCRIPT FLUSH``), the script is loaded and
    ``last`` sent again on the same connection: ``NOSCRIPT`` means it never ran. A connection
    error, a timeout or a cancellation disconnects the connection (redis-py's behaviour) and
    propagates.
    """
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.send_packed_command([before, last] if before else last)
        results = [await _reply(connection) for _ in range(replies_before + 1)]
        if script is not None and isinstance(results[-1], NoScriptError):
            await connection.send_packed_command(command(b"SCRIPT", b"LOAD", script.text) + last)
            loaded = await _reply(connection)
            results[-1] = await _reply(connection)
            if isinstance(loaded, ResponseError):
                raise loaded
        return results
    finally:
        await pool.release(connection)


async def _reply(connection: Any) -> Any:
    try:
        return await connection.read_response()
    except ResponseError as error:  # read whole: the next reply is the next command's
        return error
