"""``redis://`` and ``rediss://``: records as JSON documents under predictable keys.

URL: ``redis://[[user]:password@]host:6379/0`` (``rediss://`` for TLS). Query options:

* ``prefix`` (default ``pydantic_toast``): keys are ``<prefix>:<class_name>:<uuid>``;
* ``max_connections`` (default 50) and ``pool_timeout`` (seconds, default 10): the pool waits
  this long for a free connection when all are busy, instead of failing;
* ``socket_timeout`` (default 10) and ``socket_connect_timeout`` (default 5), in seconds;
* ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``
  (``none``/``optional``/``required``) for ``rediss://``.

Each value is one JSON document,
``{"created_at", "revision", "schema_version", "updated_at", "data"}``, ``data`` holding the
model's fields. A save is a server-side script: it checks the revision each record expects
(all of a batch before writing any), keeps ``created_at`` of an existing record (no
read-modify-write race between writers), increments the revision and sets the rest. With a
model ``ttl``, every write sets the expiry afresh (a record expires ``ttl`` seconds after its
last write); without one, a write makes the record permanent. ``<prefix>:<class_name>:index``
is a sorted set of the class's ids by creation time, for listing and counting (a page is one
script call that walks the index from the cursor and reads the documents);
``<prefix>:<class_name>:expiry`` scores the records that expire by their expiry time, so that
``count()`` is the index's size less the expired entries (exact, without reading records).
Reads never write: entries of expired records are swept from both sets by later writes of the
class (at most 100 per write), and listing skips them meanwhile.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any
from uuid import UUID

import redis.asyncio as aioredis

from pydantic_toast._exceptions import (
    ConcurrencyError,
    StorageConfigurationError,
    StorageUsageError,
    StoredDataError,
    shorten,
)
from pydantic_toast._records import PageCursor, RecordKey, StoredRecord
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.base import Capability, RecordBackend

__all__ = ["RedisBackend"]

_NUMBERS = {
    "max_connections": 50,
    "pool_timeout": 10.0,
    "socket_timeout": 10.0,
    "socket_connect_timeout": 5.0,
}
_SSL = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_OPTIONS = {"prefix", *_NUMBERS, *_SSL}

# KEYS: record keys, then the class index keys, then the class expiry keys (same order).
# ARGV: for each record, the document after created_at and revision (starting with ','), its
# created_at, its creation score, its id, its TTL in milliseconds (0: none) and the revision it
# expects ('': any). Every expected revision is checked before anything is written (a script
# runs atomically), so a batch is all or nothing; a document without a revision (written
# before revisions existed) is at revision 1. created_at is cut from the stored text, so the
# data is never decoded and re-encoded by Lua. The expiry set scores each TTL record by when it
# expires (server time, the clock Redis expires keys by), so count() subtracts the expired ones
# without reading a record. Expired entries leave both sets here, a few per write (never on a
# read). Returns {1, new revisions...} or {0, index, current revision (0: none)}.
_SAVE_SCRIPT = """
local n = #KEYS / 3
local olds = {}
local result = {1}
for i = 1, n do
  local expected = ARGV[(i - 1) * 6 + 6]
  local old = redis.call('GET', KEYS[i])
  local current = 0
  if old then
    current = tonumber(string.match(old, '^{"created_at":"[^"]*","revision":(%d+),') or '1')
  end
  if expected ~= '' and tonumber(expected) ~= current then
    return {0, i, current}
  end
  olds[i] = old
  result[i + 1] = current + 1
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
for i = 1, n do
  local base = (i - 1) * 6
  local ttl = tonumber(ARGV[base + 5])
  local created = ARGV[base + 2]
  local id = ARGV[base + 4]
  local old = olds[i]
  if old then
    local kept = string.match(old, '^{"created_at":"([^"]*)"')
    if kept then created = kept end
  else
    redis.call('ZADD', KEYS[n + i], ARGV[base + 3], id)
  end
  local revision = string.format('%d', result[i + 1])
  local document = '{"created_at":"' .. created .. '","revision":' .. revision .. ARGV[base + 1]
  if ttl > 0 then
    redis.call('SET', KEYS[i], document, 'PX', ttl)
    redis.call('ZADD', KEYS[2 * n + i], now + ttl, id)
  else
    redis.call('SET', KEYS[i], document)
    redis.call('ZREM', KEYS[2 * n + i], id)
  end
end
local swept = {}
for i = 1, n do
  local expiry = KEYS[2 * n + i]
  if not swept[expiry] then
    swept[expiry] = true
    local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', '(' .. now, 'LIMIT', 0, 100)
    if #gone > 0 then
      redis.call('ZREM', KEYS[n + i], unpack(gone))
      redis.call('ZREM', expiry, unpack(gone))
    end
  end
end
return result
"""
# KEYS: the class index, its expiry set. The index's size less the entries already expired
# (a key is gone once the server's time passes its expiry): O(log n), and exact.
_COUNT_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
return redis.call('ZCARD', KEYS[1]) - redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. now)
"""
# KEYS: the class index. ARGV: the prefix of the class's record keys, the page size, the
# cursor's score ('' for the first page) and id. A page newest first: entries by score
# descending, then member descending (ZREVRANGEBYSCORE's order for equal scores, and the
# canonical UUID text sorts like the id), from the cursor's score down, skipping the cursor's
# own score at members not below its id; each round reads its entries' documents with one
# MGET and keeps the live ones. An entry whose record has expired is skipped, not removed
# (reads never write). Returns {id, document, id, document, ...}.
_PAGE_SCRIPT = """
local index, prefix, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local top, after = '+inf', ARGV[4]
local cursor = nil
if ARGV[3] ~= '' then
  top = ARGV[3]
  cursor = tonumber(ARGV[3])
end
local found, page, offset = 0, {}, 0
while found < limit do
  local want = math.min(limit - found, 1000)  -- MGET's keys go through unpack: bounded
  local entries = redis.call(
    'ZREVRANGEBYSCORE', index, top, '-inf', 'WITHSCORES', 'LIMIT', offset, want)
  if #entries == 0 then break end
  offset = offset + #entries / 2
  local ids, keys = {}, {}
  for i = 1, #entries, 2 do
    local member = entries[i]
    if cursor == nil or tonumber(entries[i + 1]) < cursor or member < after then
      ids[#ids + 1] = member
      keys[#keys + 1] = prefix .. member
    end
  end
  if #keys > 0 then
    local documents = redis.call('MGET', unpack(keys))
    for i = 1, #keys do
      if documents[i] and found < limit then
        page[#page + 1] = ids[i]
        page[#page + 1] = documents[i]
        found = found + 1
      end
    end
  end
  if #entries / 2 < want then break end
end
return page
"""
_DOCUMENT = re.compile(
    rb'^\{"created_at":"([^"]+)",(?:"revision":(\d+),)?"schema_version":(\d+),'
    rb'"updated_at":"([^"]+)","data":'
)


class RedisBackend(RecordBackend):
    """Records in Redis, one JSON document per key, written atomically by a server script."""

    capabilities = frozenset(Capability)

    @classmethod
    def store_identity(cls, url: StorageURL) -> Hashable:
        """Host, port, database number and key prefix."""
        prefix = _options(url)[0]
        return (
            (url.host or "localhost").lower(),
            url.port or 6379,
            url.path.strip("/") or "0",
            prefix,
        )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._parsed = StorageURL.parse(url)
        self._prefix, self._pool_options = _options(self._parsed)
        self._client: aioredis.Redis | None = None
        self._save_script: Any = None
        self._count_script: Any = None
        self._page_script: Any = None

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        """Check the options without connecting."""
        _options(url)

    def key(self, class_name: str, id: UUID) -> str:
        """The key a record is stored under: ``<prefix>:<class_name>:<uuid>``."""
        return f"{self._prefix}:{class_name}:{id}"

    def index_key(self, class_name: str) -> str:
        """The sorted set of a class's ids by creation time."""
        return f"{self._prefix}:{class_name}:index"

    def expiry_key(self, class_name: str) -> str:
        """The sorted set of a class's records that expire, by expiry time (ms)."""
        return f"{self._prefix}:{class_name}:expiry"

    def _index_key_of(self, record: StoredRecord) -> str:
        """The index key a save of ``record`` adds its id to (one per class here)."""
        return self.index_key(record.class_name)

    def _expiry_key_of(self, record: StoredRecord) -> str:
        """The expiry set a save of ``record`` touches (one per class here)."""
        return self.expiry_key(record.class_name)

    def pool_connections(self) -> tuple[int, int] | None:
        """redis-py's connection pool: connections in use, and idle ones."""
        pool = getattr(self._client, "connection_pool", None)  # a cluster client has none
        in_use = getattr(pool, "_in_use_connections", None)
        idle = getattr(pool, "_available_connections", None)
        if in_use is None or idle is None:
            return None
        return len(in_use), len(idle)

    async def connect(self) -> None:
        """Open the pool and check the server answers (and accepts the credentials)."""
        self._client = self._open_client()
        self._save_script = self._client.register_script(_SAVE_SCRIPT)
        self._count_script = self._client.register_script(_COUNT_SCRIPT)
        self._page_script = self._client.register_script(_PAGE_SCRIPT)
        try:
            # A server that accepts and never answers must fail within the connect timeout,
            # not the (longer) socket timeout: the first reply is part of connecting.
            await asyncio.wait_for(
                self._call(self._client.ping), self._pool_options["socket_connect_timeout"]
            )
        except BaseException:
            await self.disconnect()
            raise

    def _open_client(self) -> aioredis.Redis:
        """A client on a waiting pool (connections open on first use)."""
        pool = aioredis.BlockingConnectionPool.from_url(
            _server_url(self._parsed), **self._pool_options
        )
        return aioredis.Redis(connection_pool=pool)

    async def disconnect(self) -> None:
        """Close the pool."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        """Write the records in one script call (one round trip), keeping ``created_at``.

        The script checks every expected revision first: a conflict writes nothing.
        """
        keys = [self.key(r.class_name, r.id) for r in records]
        keys += [self._index_key_of(r) for r in records]
        keys += [self._expiry_key_of(r) for r in records]
        arguments: list[Any] = []
        for record in records:
            rest = (
                f',"schema_version":{record.schema_version},'
                f'"updated_at":"{record.updated_at.isoformat()}","data":'
            ).encode()
            arguments += [
                rest + record.data + b"}",
                record.created_at.isoformat(),
                record.created_at.timestamp(),
                str(record.id),
                round(record.ttl * 1000) if record.ttl else 0,
                "" if record.revision is None else record.revision,
            ]
        result = await self._call(lambda: self._save_script(keys=keys, args=arguments))
        if result[0] == 0:
            raise _conflict(records[int(result[1]) - 1], int(result[2]))
        return [int(revision) for revision in result[1:]]

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Read the records in one round trip (GET, or MGET for several)."""
        names = [self.key(class_name, id) for class_name, id in keys]
        client = self._connected()
        if len(names) == 1:
            values = [await self._call(partial(client.get, names[0]))]
        else:
            values = await self._call(partial(client.mget, names))
        return [
            None if value is None else self._parse(name, class_name, id, value)
            for name, (class_name, id), value in zip(names, keys, values, strict=True)
        ]

    async def delete(self, id: UUID, class_name: str) -> bool:
        """Delete one record; return whether it existed."""
        client = self._connected()

        async def delete_both() -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(self.key(class_name, id))
                pipe.zrem(self.index_key(class_name), str(id))
                pipe.zrem(self.expiry_key(class_name), str(id))
                return await pipe.execute()

        deleted, _, _ = await self._call(delete_both)
        return bool(deleted)

    async def list_records(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[StoredRecord]:
        """Records newest first (creation time, then id), past ``after``: one script call.

        The script walks the class index from the cursor and reads the documents in the same
        call (one round trip); entries of expired records are skipped, never removed.
        """
        return await self._page(
            self.index_key(class_name), f"{self._prefix}:{class_name}:", class_name, limit, after
        )

    async def _page(
        self, index: str, prefix: str, class_name: str, limit: int, after: PageCursor | None
    ) -> list[StoredRecord]:
        """One run of the page script over ``index``, whose records' keys start with ``prefix``."""
        arguments: list[Any] = [prefix, limit, "", ""]
        if after is not None:
            arguments[2:] = [repr(after.created_at.timestamp()), str(after.id)]
        flat = await self._call(lambda: self._page_script(keys=[index], args=arguments))
        records = []
        for position in range(0, len(flat), 2):
            member = flat[position].decode()
            id = UUID(member)
            records.append(self._parse(prefix + member, class_name, id, flat[position + 1]))
        return records

    async def count(self, class_name: str) -> int:
        """How many live records of ``class_name`` there are: an index lookup, O(log n)."""
        keys = [self.index_key(class_name), self.expiry_key(class_name)]
        return int(await self._call(lambda: self._count_script(keys=keys)))

    def _connected(self) -> aioredis.Redis:
        if self._client is None:
            raise StorageUsageError(f"{self!r} is not connected: call connect() first")
        return self._client

    def _parse(self, key: str, class_name: str, id: UUID, value: bytes) -> StoredRecord:
        match = _DOCUMENT.match(value)
        if match is None or not value.endswith(b"}"):
            raise StoredDataError(
                f"the value under Redis key {key} is not a pydantic-toast record (expected a JSON "
                '{"created_at", "schema_version", "updated_at", "data"} document): it was '
                "written by something else or damaged; it is left untouched",
                class_name=class_name,
                id=id,
            )
        try:
            created, updated = (datetime.fromisoformat(g.decode()) for g in match.group(1, 4))
        except ValueError:
            readable = False
        else:
            readable = True
        if not readable:
            raise StoredDataError(
                f"the value under Redis key {key} has unreadable timestamps",
                class_name=class_name,
                id=id,
            )
        return StoredRecord(
            class_name=class_name,
            id=id,
            data=value[match.end() : -1],
            schema_version=int(match.group(3)),
            created_at=created,
            updated_at=updated,
            revision=int(match.group(2) or 1),
        )

    async def _call(self, command: Callable[[], Awaitable[Any]]) -> Any:
        """Run one Redis command (the boundary translates its errors and retries)."""
        return await command()

    async def discard_connections(self) -> None:
        """Drop the pool's connections after one was lost (a restart, an idle timeout)."""
        if self._client is not None:
            await self._client.connection_pool.disconnect()


def _conflict(record: StoredRecord, current: int) -> ConcurrencyError:
    """The error for ``record`` expecting another revision than ``current`` (0: none)."""
    return ConcurrencyError(
        record.class_name, record.id, expected=record.revision or 0, current=current or None
    )


def _options(url: StorageURL) -> tuple[str, dict[str, Any]]:
    unknown = sorted(set(url.query) - _OPTIONS)
    if unknown:
        raise StorageConfigurationError(
            f"{url.masked}: unknown option(s) {shorten(', '.join(unknown))}; Redis URLs take "
            f"{', '.join(sorted(_OPTIONS))}"
        )
    if url.path.strip("/") and not url.path.strip("/").isdigit():
        raise StorageConfigurationError(
            f"{url.masked}: the path must be a database number, e.g. redis://host:6379/0"
        )
    options: dict[str, Any] = {}
    for name, default in _NUMBERS.items():
        raw = url.query.get(name)
        try:
            value = type(default)(raw) if raw is not None else default
        except ValueError:
            raise StorageConfigurationError(
                f"{url.masked}: {name} must be a number, got {shorten(raw)!r}"
            ) from None
        if value <= 0:
            raise StorageConfigurationError(f"{url.masked}: {name} must be positive")
        options["timeout" if name == "pool_timeout" else name] = value
    for name in _SSL:
        if name in url.query:
            if url.scheme != "rediss":
                raise StorageConfigurationError(f"{url.masked}: {name} needs a rediss:// URL")
            options[name] = url.query[name]
    prefix = url.query.get("prefix", "pydantic_toast")
    if not prefix or ":" in prefix:
        raise StorageConfigurationError(f"{url.masked}: prefix must be non-empty, without ':'")
    return prefix, options


def _server_url(url: StorageURL) -> str:
    """The URL redis-py gets: ours without the options it does not know."""
    return url.raw.split("?", 1)[0]


def _single_node(raw: str, names: Iterable[str], path: str | None = None) -> str:
    """``raw`` as a plain ``redis://`` URL the shared option checks accept.

    The scheme loses its ``+cluster``/``+sentinel`` part, the options in ``names`` (the
    variant's own) are left out, and the path becomes ``path`` when given.
    """
    head, _, query = raw.partition("?")
    scheme, sep, rest = head.partition("://")
    if path is not None:
        slash = rest.find("/", rest.rfind("@") + 1)
        rest = (rest if slash < 0 else rest[:slash]) + path
    head = f"{scheme.split('+', 1)[0]}{sep}{rest}"
    dropped = set(names)
    kept = [part for part in query.split("&") if part and part.split("=", 1)[0] not in dropped]
    return f"{head}?{'&'.join(kept)}" if kept else head
