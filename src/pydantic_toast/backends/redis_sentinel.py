"""``redis+sentinel://``: the Redis backend on the primary that Redis Sentinel names.

URL: ``redis+sentinel://[[user]:password@]sentinel:26379,sentinel:26379/<service>[/<db>]``.
The hosts are the sentinels (any number; one that answers is enough), ``<service>`` is the
name the sentinels monitor (``sentinel monitor <service> ...``), ``<db>`` the database number
(default 0). The user and password in the URL are the data nodes' (``requirepass``/ACL of
the primary and replicas). Query options: the Redis backend's (``prefix``,
``max_connections``, ``pool_timeout``, ``socket_timeout``, ``socket_connect_timeout``) plus

* ``sentinel_password`` and ``sentinel_username``: the sentinels' own credentials
  (``requirepass`` in the sentinel configuration), when they have any; they may differ from
  the data nodes'. Both are masked wherever the URL is shown.

Records, keys and scripts are the Redis backend's (same layout: a store moved between a plain
primary and a Sentinel-managed one reads the same). Each new connection asks the sentinels
for the current primary; a connection to a primary that was demoted or went away fails, the
boundary drops the pool and retries once, and later connections go to the promoted primary:
a failover needs no app restart. Writes acknowledged by the old primary that had not reached
its replica are lost in a failover (Redis replication is asynchronous). The sentinels are asked
again once a second at most (:data:`PRIMARY_CHECK_EVERY`), and a pooled connection open on
another node than the one they name is reconnected: an old primary back from a pause is a
primary until the sentinels demote it, and drops what it acknowledged meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from pydantic_toast._exceptions import StorageConfigurationError, shorten
from pydantic_toast._url import StorageURL, host_list
from pydantic_toast.backends import redis as single
from pydantic_toast.backends.base import Capability, batch_size_of

__all__ = [
    "PRIMARY_CHECK_EVERY",
    "PRIMARY_CHECK_RETRY",
    "PRIMARY_CHECK_WAIT",
    "RedisSentinelBackend",
]

PRIMARY_CHECK_EVERY: Final = 1.0
"""Seconds between two questions to the sentinels about which node is the primary."""
PRIMARY_CHECK_WAIT: Final = 1.0
"""Seconds the commands due wait at most for the sentinels' answer (redis-py asks them one
after another, each within the socket timeouts): unanswered, the commands go on as they
would, and the sentinels are asked again :data:`PRIMARY_CHECK_RETRY` later, not at once."""
PRIMARY_CHECK_RETRY: Final = 10.0
"""Seconds after an unanswered question before the sentinels are asked again."""
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


class _WaitingSentinelPool(SentinelConnectionPool, single._WaitingPool):
    """A Sentinel pool that waits ``pool_timeout`` for a free connection, as the Redis
    backend's pool does (its checkout and release, first come first served), instead of
    failing at once past ``max_connections``, and that never hands out a connection to a
    node other than the primary the sentinels last named.

    redis-py asks the sentinels only when a connection opens: a connection opened before a
    failover stays on the old primary, which, back from a pause or a partition, goes on
    acknowledging writes until the sentinels demote it (up to 10 s), and a demoted primary
    drops them all.
    """

    def _elsewhere(self, connection: Any) -> bool:
        """Whether ``connection`` is open on a node other than the named primary."""
        named = self.master_address
        return named is not None and (connection.host, connection.port) != named

    async def ensure_connection(self, connection: Any) -> None:
        """Reconnect ``connection`` to the named primary if it is open on another node."""
        if self._elsewhere(connection):
            await connection.disconnect()
        await super().ensure_connection(connection)


class _OrderlySentinel(Sentinel):
    """redis-py's Sentinel, asking for the primary once at a time.

    ``discover_master`` moves the sentinel that answered to the front of ``sentinels`` by the
    index it took before awaiting the answer: two discoveries at once (connections opening
    together, as in a failover under load) can write one client into two places and drop
    another, which is then never asked again, nor closed by ``aclose()`` (its sockets leak).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._discovering = asyncio.Lock()

    async def discover_master(self, service_name: str) -> Any:
        """The primary's address, as redis-py finds it, one discovery at a time."""
        async with self._discovering:
            return await super().discover_master(service_name)


class RedisSentinelBackend(single.RedisBackend):
    """Records on the primary of a Sentinel-monitored Redis, following its failovers."""

    capabilities = frozenset(Capability)

    @classmethod
    def store_identity(cls, url: StorageURL) -> Hashable:
        """The sentinels, the service, the database number and the key prefix."""
        service, database, prefix = _sentinel_options(url)
        return ("redis+sentinel", frozenset(host_list(url.raw)), service, database, prefix)

    def __init__(self, url: str) -> None:
        parsed = StorageURL.parse(url)
        self._service, database, _ = _sentinel_options(parsed)
        super().__init__(single._single_node(url, _SENTINEL_OPTIONS, f"/{database}"))
        self.url = url
        self._database = int(database)
        self._sentinels = [_address(entry, parsed) for entry in host_list(url)]
        self._sentinel_credentials = {
            "username": parsed.query.get("sentinel_username"),
            "password": parsed.query.get("sentinel_password"),
        }
        self._sentinel: Sentinel | None = None
        self._primary_checked_at = time.monotonic()
        self._checking = asyncio.Lock()

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        """Check the service, the options and the sentinel list without connecting."""
        _sentinel_options(url)
        for entry in host_list(url.raw):
            _address(entry, url)
        batch_size_of(url)

    def _open_client(self) -> aioredis.Redis:
        """A client whose connections go to the primary the sentinels name when they open."""
        timeouts = {
            name: self._pool_options[name] for name in ("socket_timeout", "socket_connect_timeout")
        }
        self._sentinel = _OrderlySentinel(
            self._sentinels, sentinel_kwargs={**timeouts, **self._sentinel_credentials}
        )
        pool = _WaitingSentinelPool(  # type: ignore[no-untyped-call]
            self._service,
            self._sentinel,
            db=self._database,
            username=self._parsed.username,
            password=self._parsed.password,
            **self._pool_options,
        )
        return aioredis.Redis(connection_pool=pool)

    async def _call(self, command: Callable[[], Awaitable[Any]]) -> Any:
        """Run one command, after asking the sentinels for the primary if the last answer
        is older than :data:`PRIMARY_CHECK_EVERY` (the pool then leaves any other node)."""
        if time.monotonic() >= self._primary_checked_at + PRIMARY_CHECK_EVERY:
            await self._check_primary()
        return await command()

    async def _check_primary(self) -> None:
        """Ask the sentinels once for every command due to wait for the answer: a command
        going on before it would take a connection to the old primary."""
        async with self._checking:
            due = time.monotonic() >= self._primary_checked_at + PRIMARY_CHECK_EVERY
            if not due or self._client is None:
                return
            pool = self._client.connection_pool
            try:
                async with asyncio.timeout(PRIMARY_CHECK_WAIT):
                    await pool.get_master_address()  # type: ignore[attr-defined]
            except Exception:  # no answer in time: the commands go as they would
                delay = PRIMARY_CHECK_RETRY - PRIMARY_CHECK_EVERY
                self._primary_checked_at = time.monotonic() + delay
                return
            self._primary_checked_at = time.monotonic()

    async def disconnect(self) -> None:
        """Close the pool and the connections to the sentinels."""
        sentinel, self._sentinel = self._sentinel, None
        try:
            await super().disconnect()
        finally:
            if sentinel is not None:
                await sentinel.aclose()


def _address(entry: str, url: StorageURL) -> tuple[str, int]:
    host, _, port = entry.rpartition(":")
    if not host or not port.isdigit():
        raise StorageConfigurationError(
            f"{url.masked}: each sentinel must be host:port (got {shorten(entry)!r}), e.g. "
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/0"
        )
    return host.strip("[]"), int(port)


def _sentinel_options(url: StorageURL) -> tuple[str, str, str]:
    """(service, database number, prefix), the shared Redis options checked too."""
    parts = url.path.strip("/").split("/")
    if not parts[0] or len(parts) > 2:
        raise StorageConfigurationError(
            f"{url.masked}: the path must be the service name the sentinels monitor, then "
            "optionally the database number: redis+sentinel://host:26379/mymaster/0"
        )
    database = parts[1] if len(parts) == 2 else "0"
    if not host_list(url.raw):
        raise StorageConfigurationError(f"{url.masked}: name at least one sentinel host:port")
    shared = StorageURL.parse(single._single_node(url.raw, _SENTINEL_OPTIONS, f"/{database}"))
    prefix, _ = single._options(shared)
    return parts[0], database, prefix
