"""``redis+cluster://``: the Redis backend's records on a Redis Cluster, spread over slots.

URL: ``redis+cluster://[[user]:password@]host:port[,host:port...]/`` (``rediss+cluster://``
for TLS): the hosts are seeds, any node of the cluster will do; the client learns the
topology from them and follows MOVED/ASK redirections and failovers by itself. Query options
are the Redis backend's (``prefix``, pool and socket timeouts, TLS files) plus:

* ``buckets`` (default 16, 1 to 16384): how many slots each class is spread over. Part of
  the key layout: changing it on existing data hides the records (they are looked up in
  another bucket), so choose it once per prefix;
* ``wait_replicas`` (default 0: off) and ``wait_timeout`` (milliseconds, default 100): after
  each write, ``WAIT wait_replicas wait_timeout`` on the same connection, so a save returns
  once that many replicas have the write. When fewer confirm in time the save raises
  :class:`~pydantic_toast.StorageOperationError` (the write is on the primary, maybe not on
  a replica: a failover now could lose it). A failover demoting the primary while it waits
  (``UNBLOCKED``) is a reply lost after sending: the save is settled by reading back.

Key layout (``b`` = the record id's 128-bit integer modulo ``buckets``)::

    {<prefix>:<class_name>:<b>}:<uuid>     the record (the Redis backend's JSON document)
    {<prefix>:<class_name>:<b>}:index      sorted set of that bucket's ids by creation time
    {<prefix>:<class_name>:<b>}:expiry     sorted set of that bucket's expiring ids
    {<prefix>:<class_name>:<b>}:lock:<uuid>  held for a few seconds by a batch writing it

The braces are a hash tag: a record and its bucket's index share one slot, so a save stays
one atomic script (record and index together), and a class's records spread over
``buckets`` slots instead of one hot slot. A page is one page script call per bucket (sent
concurrently; the results merged newest first); a count one count script call per bucket,
added up: ``buckets`` server calls each, 16 (at most ``max_connections``) in flight at a
time, so up to 16 buckets cost one round of network latency. A batch is split by bucket,
and every server call takes ``batch_size`` records at most (each bucket's in several calls
when it has more). A batch of up to ``batch_size`` records and 1 MiB of documents within
one bucket is one atomic script (beyond, it is written as on a single node). A batch
spanning several buckets is written in two phases: every bucket's expected revisions are
checked and its records locked (concurrently), and only when all buckets agreed are they
written (concurrently): a stale record anywhere writes nothing. A save or delete of a
record locked by a batch in progress is refused (``StorageBusyError``). A node failing
between the two phases can leave the batch written on some buckets only.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from contextvars import ContextVar
from datetime import datetime
from functools import partial
from typing import Any
from uuid import UUID, uuid4

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)

from pydantic_toast._exceptions import (
    ConcurrencyError,
    StorageBusyError,
    StorageConfigurationError,
    StorageOperationError,
    StoredDataError,
)
from pydantic_toast._records import PageCursor, RecordKey, StoredRecord
from pydantic_toast._url import StorageURL, host_list
from pydantic_toast.backends import _resp
from pydantic_toast.backends import redis as single
from pydantic_toast.backends.base import Capability, batch_size_of
from pydantic_toast.runtime.backoff import Backoff

__all__ = ["RedisClusterBackend"]

_CLUSTER_OPTIONS = {"buckets": 16, "wait_replicas": 0, "wait_timeout": 100}

# A batch spanning several slots is written in two phases, with a lock key per record in the
# record's slot, ``{<prefix>:<class_name>:<b>}:lock:<uuid>``, holding the batch's token:
# 1. _PREPARE_SCRIPT, per slot: refuse a record locked by another batch, check each expected
#    revision, then lock the slot's records (PX _LOCK_MS). Any refusal releases every lock
#    and the batch writes nothing.
# 2. _SAVE_SCRIPT, per slot: the shared save script, after checking the locks, then releasing
#    them. Single-slot saves run it too, with no token: a record locked by a batch in progress
#    is refused (busy) rather than written between the batch's two phases.
_LOCK_MS = 5000
# Commands sent by the backend itself (saves, pages, reads following their record) follow
# this many MOVED/ASK redirections (as redis-py does).
_REDIRECTS = 16
# Server calls one operation (a page, a count, a batch) keeps in flight, one per bucket.
_IN_FLIGHT = 16
# A save or a page meeting a slot being migrated is sent again until the migration ends,
# for this long at most (then StorageBusyError: retry): until then, a save's keys (the lock
# and expiry keys are usually absent) are on neither side whole (TRYAGAIN).
_MIGRATION_SECONDS = 10.0
# KEYS: record keys, then their lock keys. ARGV: the token, the lock's milliseconds, then for
# each record its expected revision ('': any) and its created_at (an existing record must have
# both, as in the save script). Returns {1}, {0, index, current revision} or {2, index}.
_PREPARE_SCRIPT = (
    single._HEAD
    + """
local n = #KEYS / 2
for i = 1, n do
  local holder = redis.call('GET', KEYS[n + i])
  if holder and holder ~= ARGV[1] then
    return {2, i}
  end
  local expected = ARGV[1 + 2 * i]
  if expected ~= '' then
    local found, stored = stored_head(KEYS[i])
    local current = found or 0
    if tonumber(expected) ~= current
        or (current > 0 and stored and not same_instant(stored, ARGV[2 + 2 * i])) then
      return {0, i, current}
    end
  end
end
for i = 1, n do
  redis.call('SET', KEYS[n + i], ARGV[1], 'PX', ARGV[2])
end
return {1}
"""
)
# KEYS: the shared save script's keys, then one lock key per record. ARGV: the shared script's
# arguments, then the batch token ('': not part of a two-phase batch). The lock keys and the
# token are taken off KEYS and ARGV, so the shared script runs on exactly its own arguments.
_SAVE_SCRIPT = (
    """
local token = table.remove(ARGV)
local n = #KEYS / 5
local locks = {}
for i = 1, n do
  locks[i] = table.remove(KEYS, 4 * n + 1)
end
for i = 1, n do
  local holder = redis.call('GET', locks[i])
  if holder and holder ~= token then
    return {2, i}
  end
end
local function save()
"""
    + single._SAVE_SCRIPT
    + """
end
local result = save()
if token ~= '' then
  for i = 1, n do
    if redis.call('GET', locks[i]) == token then
      redis.call('DEL', locks[i])
    end
  end
end
return result
"""
)
# KEYS: lock keys. ARGV: the token. Drops the locks this token holds.
_RELEASE_SCRIPT = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""
# All keys share the bucket's hash tag (one slot): delete the record and its index entry,
# unless a batch in progress holds the record's lock (-1).
_DELETE_SCRIPT = """
if redis.call('EXISTS', KEYS[4]) == 1 then
  return -1
end
local deleted = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return deleted
"""

# The single-node script behind the same lock check (ARGV[2], ARGV[3]: the revision and the
# created_at the caller read). Returns -1 (locked), or the single-node script's reply.
_DELETE_CHECKED_SCRIPT = (
    """
if redis.call('EXISTS', KEYS[4]) == 1 then
  return -1
end"""
    + single._DELETE_CHECKED_SCRIPT
)


class _Cluster(RedisCluster):
    """redis-py's cluster client, except that its own recovery does not close connections.

    On CLUSTERDOWN (a failover under way), an uncovered slot or a failed pipeline, redis-py
    closes every connection to every node (``aclose``), those other tasks are using too:
    their commands fail and are sent again (a save script twice: a ``ConcurrencyError`` for
    a new record, or an ``AttributeError`` from a connection closed under it). Here that
    only makes the next command relearn the topology, which reopens each connection once
    its command is done. :meth:`close_connections` closes them all.
    """

    async def aclose(self) -> None:
        """Relearn the topology before the next command (called by redis-py on errors)."""
        self._initialize = True

    async def close_connections(self) -> None:
        """Close every connection to every node."""
        self._initialize = False  # RedisCluster.aclose closes only an initialized client
        await super().aclose()


class RedisClusterBackend(single.RedisBackend):
    """Records on a Redis Cluster: one hash tag per class bucket, the index sharded alike."""

    capabilities = frozenset(Capability)
    # A document up to 1 MiB travels in the script's arguments (no staging SET: the script
    # and WAIT share one connection per slot already). A larger one is staged in pieces, as
    # on a single node, on its slot's primary under a key of the record's hash tag, so that
    # the script still moves it into place atomically with the record's index entry.
    _stage_above = single._PIECE
    # Every save runs the save script: it checks the record's batch lock, and WAIT follows it.
    _inserts_directly = False

    @classmethod
    def store_identity(cls, url: StorageURL) -> Hashable:
        """The seed nodes and key prefix (any seed reaches the same cluster)."""
        prefix = _cluster_options(url)[1]
        return ("redis+cluster", frozenset(host_list(url.raw)), prefix)

    def __init__(self, url: str) -> None:
        parsed = StorageURL.parse(url)
        self._buckets, _, self._wait_replicas, self._wait_timeout = _cluster_options(parsed)
        super().__init__(single._single_node(url, _CLUSTER_OPTIONS))
        self.url = url
        self._masked = StorageURL.parse(url).masked
        self._seeds = [_node(entry, parsed) for entry in host_list(url)]
        self._cluster: _Cluster | None = None
        self._delete_script: Any = None
        self._delete_checked_cluster_script: Any = None

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        """Check the options and the host list without connecting."""
        _cluster_options(url)
        for entry in host_list(url.raw):
            _node(entry, url)
        batch_size_of(url)

    def bucket(self, id: UUID) -> int:
        """The bucket of a record id: its integer value modulo ``buckets``."""
        return id.int % self._buckets

    def _tag(self, class_name: str, bucket: int) -> str:
        """``{<prefix>:<class_name>:<bucket>}``: the hash tag every key of a bucket starts
        with (one slot)."""
        return f"{{{self._prefix}:{class_name}:{bucket}}}"

    def key(self, class_name: str, id: UUID) -> str:
        """``{<prefix>:<class_name>:<bucket>}:<uuid>``."""
        return f"{self._tag(class_name, self.bucket(id))}:{id}"

    def index_key(self, class_name: str, bucket: int = 0) -> str:
        """``{<prefix>:<class_name>:<bucket>}:index``: one bucket's ids by creation time."""
        return f"{self._tag(class_name, bucket)}:index"

    def expiry_key(self, class_name: str, bucket: int = 0) -> str:
        """``{<prefix>:<class_name>:<bucket>}:expiry``: the bucket's expiring ids."""
        return f"{self._tag(class_name, bucket)}:expiry"

    def _index_key_of(self, record: StoredRecord) -> str:
        return self.index_key(record.class_name, self.bucket(record.id))

    def _expiry_key_of(self, record: StoredRecord) -> str:
        return self.expiry_key(record.class_name, self.bucket(record.id))

    async def connect(self) -> None:
        """Discover the cluster from the seeds and check every primary answers."""
        options = dict(self._pool_options)
        # The cluster client has no waiting pool: past max_connections per node it fails
        # at once (a busy error), so pool_timeout does not apply here.
        options.pop("timeout")
        options.pop("max_connections")
        self._cluster = _Cluster(
            startup_nodes=self._seeds,
            username=self._parsed.username,
            password=self._parsed.password,
            ssl=self._parsed.scheme.startswith("rediss"),
            max_connections=int(self._pool_options["max_connections"]),
            # Not 5 (redis-py's default): every 5th MOVED reply closed every node's
            # connections, those other tasks were using too; their commands failed and were
            # sent again (a save script twice: a ConcurrencyError for a new record, or a
            # AttributeError from a connection closed under it). A MOVED reply
            # updates its slot's owner; a lost connection still relearns the whole topology.
            reinitialize_steps=0,
            **options,
        )
        self._client = self._cluster  # type: ignore[assignment]  # the shared code's client
        self._delete_script = self._cluster.register_script(_DELETE_SCRIPT)
        self._delete_checked_cluster_script = self._cluster.register_script(_DELETE_CHECKED_SCRIPT)
        self._script = self._cluster.register_script(_SAVE_SCRIPT)
        self._prepare_script = self._cluster.register_script(_PREPARE_SCRIPT)
        self._release_script = self._cluster.register_script(_RELEASE_SCRIPT)
        self._check_script = self._cluster.register_script(single._CHECK_SCRIPT)
        self._count_script = self._cluster.register_script(single._COUNT_SCRIPT)
        self._page_script = self._cluster.register_script(single._PAGE_SCRIPT)
        try:
            # A node that accepts and never answers must fail within the connect timeout, not
            # the (longer) socket timeout: learning the topology is part of connecting.
            await asyncio.wait_for(self._discover(), self._pool_options["socket_connect_timeout"])
        except BaseException:
            await self.disconnect()
            raise

    async def _discover(self) -> None:
        """Learn the topology from the seeds and check every primary answers."""
        cluster = self._connected_cluster()
        await cluster.initialize()
        await cluster.ping(target_nodes=RedisCluster.PRIMARIES)

    async def disconnect(self) -> None:
        """Close every node's connections."""
        cluster, self._cluster, self._client = self._cluster, None, None
        if cluster is not None:
            await cluster.close_connections()

    async def discard_connections(self) -> None:
        """Relearn the topology after a connection was lost (a failover, a restart).

        Connections in use finish their command and are reopened when released, free ones
        on their next use: closing them all here (``aclose``) would break the commands
        other tasks have in flight.
        """
        if self._cluster is not None:
            await self._cluster.nodes_manager.initialize()

    def lock_key(self, class_name: str, id: UUID) -> str:
        """``{<prefix>:<class_name>:<bucket>}:lock:<uuid>``: held while a batch writes it."""
        return f"{self._tag(class_name, self.bucket(id))}:lock:{id}"

    def _delete_keys(self, class_name: str, id: UUID) -> list[str]:
        """The delete scripts' keys: the record, its bucket's index and expiry set, its lock."""
        bucket = self.bucket(id)
        return [
            self.key(class_name, id),
            self.index_key(class_name, bucket),
            self.expiry_key(class_name, bucket),
            self.lock_key(class_name, id),
        ]

    async def save_records(self, records: Sequence[StoredRecord]) -> Any:
        """Write the records: one script call per bucket, the buckets concurrently.

        A batch spanning several buckets checks and locks every bucket's records first
        (phase 1) and writes only when all are ready (phase 2): a conflict anywhere writes
        nothing. Each server call of either phase takes ``batch_size`` records at most (a
        bucket's records in several calls, as on a single node).
        """
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for position, record in enumerate(records):
            groups[record.class_name, self.bucket(record.id)].append(position)
        if len(groups) == 1:
            return await super().save_records(records)
        parts = [[records[i] for i in positions] for positions in groups.values()]
        size = self._batch_size
        chunks = [
            part[start : start + size] for part in parts for start in range(0, len(part), size)
        ]
        token = uuid4().hex
        await self._prepare_all(chunks, token)
        reset = _batch_token.set(token)
        try:
            write = super().save_records
            results = await self._gather([partial(write, part) for part in parts])
        except BaseException:
            await self._release_all(chunks, token)
            raise
        finally:
            _batch_token.reset(reset)
        if all(result is None for result in results):
            return None
        merged: list[Any] = [None] * len(records)
        for positions, result in zip(groups.values(), results, strict=True):
            assert result is not None  # every bucket's save gives its records' results
            for position, value in zip(positions, result, strict=True):
                merged[position] = value
        return merged

    async def _prepare_all(self, parts: list[list[StoredRecord]], token: str) -> None:
        """Phase 1: check and lock the records, one script call per part (each of one
        bucket); on any refusal, release all."""
        outcomes = await self._gather(
            [partial(self._prepare, part, token) for part in parts], return_exceptions=True
        )
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            await self._release_all(parts, token)
            raise next((f for f in failures if isinstance(f, ConcurrencyError)), failures[0])

    async def _prepare(self, part: list[StoredRecord], token: str) -> None:
        keys = [self.key(r.class_name, r.id) for r in part]
        keys += [self.lock_key(r.class_name, r.id) for r in part]
        expected = single.expectations(part)
        result = await self._prepare_script(keys=keys, args=[token, _LOCK_MS, *expected])
        if result[0] == 0:
            raise single._conflict(part[int(result[1]) - 1], int(result[2]))
        if result[0] == 2:
            raise _locked(keys[int(result[1]) - 1], self._masked)

    async def _release_all(self, parts: list[list[StoredRecord]], token: str) -> None:
        """Drop the locks ``token`` holds (best effort: they expire after _LOCK_MS anyway)."""
        await self._gather(
            [
                partial(
                    self._release_script,
                    keys=[self.lock_key(r.class_name, r.id) for r in part],
                    args=[token],
                )
                for part in parts
            ],
            return_exceptions=True,
        )

    async def _run_save(
        self, keys: list[bytes], arguments: list[bytes], stages: list[bytes]
    ) -> Any:
        """Run the save script on one slot's keys (locks checked), then ``WAIT`` when asked
        to, both on one connection to the slot's primary.

        ``stages`` is empty here: a document up to 1 MiB is in ``arguments``, a larger one
        was staged in pieces before (see ``_save_streamed``). The script is sent by
        :meth:`_on_slot`, never through redis-py's cluster client, which resends a command
        by itself after a lost connection: a resent script that had landed would find its
        own write and report a conflict, and telling its own write from another writer's
        identical one (same revision read, same data, same microsecond) cannot be done by
        comparing documents. A lost reply is settled by the boundary instead, by reading
        back (``runtime/outcomes.py``). ``WAIT`` counts the replicas that have the writes of
        its own connection, so it must go with the script; :meth:`_on_slot` follows the
        slot's redirections and waits out a migration (redis-py's client gives up after 16
        ASK, MOVED or TRYAGAIN replies, and its pipeline would send a redirected script
        again alone, elsewhere, with a ``WAIT`` that confirms nothing).
        """
        records = keys[: len(keys) // 4]  # the shared script's keys: 4 per record
        keys = keys + [key.replace(b"}:", b"}:lock:", 1) for key in records]
        args: list[Any] = [*arguments, _batch_token.get()]
        commands: list[tuple[Any, ...]] = [("EVALSHA", self._script.sha, len(keys), *keys, *args)]
        if self._wait_replicas:
            commands.append(("WAIT", self._wait_replicas, self._wait_timeout))
        replies = await self._on_slot(
            keys[0].decode(), partial(_sent, commands), script=_SAVE_SCRIPT
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if self._wait_replicas and int(replies[1]) < self._wait_replicas:
            node = self._connected_cluster().get_node_from_key(keys[0].decode())
            assert node is not None  # initialize() maps every slot (full coverage required)
            raise StorageOperationError(
                f"Redis Cluster node {node.name} confirmed the write on {replies[1]} of "
                f"{self._wait_replicas} replica(s) within {self._wait_timeout} ms: the record "
                "is written on the primary but could be lost if it fails over now; retry, or "
                "raise wait_timeout"
            )
        return _unlocked(replies[0], records, self._masked)

    async def _on_slot(
        self,
        key: str,
        send: Callable[[ClusterNode, bool], Awaitable[list[Any]]],
        *,
        script: str | None = None,
        follow_ask: bool = True,
    ) -> list[Any]:
        """The replies ``send`` gets from the primary of ``key``'s slot, or from the node
        that slot's redirections lead to; the first reply says where to go.

        ``send(node, asking)`` sends the commands on one connection of ``node`` (``ASKING``
        first when ``asking``) and returns their replies, errors included. MOVED updates the
        slot's owner, then they are sent there; ASK sends them to the importing node with
        ``ASKING`` on the same connection (redis-py's cluster client sends ``ASKING`` as a
        command of its own, on whichever connection its pool hands out: with several free,
        the command went out on another one, was answered MOVED back, and so on until
        ``ClusterError: TTL exhausted``), up to ``_REDIRECTS`` redirections. While a slot
        is being migrated, a command on several of its keys is refused until they are all
        on one side (TRYAGAIN; a script reading a key it does not hold is refused too):
        they are sent again after a pause growing from 50 ms to 0.5 s, for up to
        ``_MIGRATION_SECONDS``, then the refusal is raised (StorageBusyError). Without
        ``follow_ask``, ASK is waited out the same way: a script reading keys it was not
        given, run on the importing node, would read a key not migrated yet as missing. A
        refused command never ran, so sending it again cannot write twice. NOSCRIPT loads
        ``script`` on that node first.
        """
        cluster = self._connected_cluster()
        await cluster.initialize()  # a no-op unless a lost connection asked for it
        node = cluster.get_node_from_key(key)
        asking = False
        redirects = 0
        wait_out = Backoff(_MIGRATION_SECONDS)
        while True:
            assert node is not None  # initialize() maps every slot (full coverage required)
            replies = await send(node, asking)
            reply = replies[0]
            if isinstance(reply, NoScriptError) and script is not None:
                await node.execute_command("SCRIPT", "LOAD", script)
                continue
            if isinstance(reply, MovedError) or (isinstance(reply, AskError) and follow_ask):
                redirects += 1
                if redirects > _REDIRECTS:
                    raise reply
            if isinstance(reply, MovedError):
                await cluster.nodes_manager.move_slot(reply)
                node = cluster.get_node_from_key(key)
                asking = False
            elif isinstance(reply, AskError) and follow_ask:
                node = await self._asked_node(reply)
                asking = True
            elif _migrating(reply):  # the same node again, with ASKING if it needed it
                if not await wait_out.wait():
                    raise reply
            else:
                return replies

    async def _asked_node(self, ask: AskError) -> ClusterNode:
        """The importing node an ASK reply names."""
        cluster = self._connected_cluster()
        node = cluster.get_node(host=ask.host, port=ask.port)
        if node is None:  # a node added since the topology was learnt
            await cluster.nodes_manager.initialize()
            node = cluster.get_node(host=ask.host, port=ask.port)
        if node is None:
            raise ask
        return node

    async def _follow(self, key: str, *command: Any) -> Any:
        """The reply of ``command`` on ``key``, sent to the node that holds ``key`` (see
        :meth:`_on_slot`)."""
        (reply,) = await self._on_slot(key, partial(_sent, [command]))
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _pool_for(self, key: bytes) -> _NodePool:
        """The connections of the primary that holds ``key``'s slot."""
        node = self._connected_cluster().get_node_from_key(key.decode())
        assert node is not None  # initialize() maps every slot (full coverage required)
        return _NodePool(node)

    async def _save_streamed(
        self,
        keys: list[bytes],
        arguments: list[bytes],
        stages: list[bytes],
        streamed: list[single._Staging],
    ) -> Any:
        """The shared staging in pieces, on the primary of the records' slot (one slot per
        script call), then the save script.

        A MOVED reply to the staging (the slot has moved since the topology was learnt)
        updates the slot's owner and stages again there. While the slot is being migrated,
        the staging meets ASK (its new key belongs to the importing node) and the script
        TRYAGAIN (its keys are on neither node whole) until the migration ends: refused,
        neither wrote anything but staged copies, which are deleted (following the slot),
        and the whole write is made again, for up to ``_MIGRATION_SECONDS``. Following ASK
        would not finish sooner: the script can only run once the migration has ended.
        """
        cluster = self._connected_cluster()
        wait_out = Backoff(_MIGRATION_SECONDS)
        while True:
            await cluster.initialize()  # a no-op unless a lost connection asked for it
            try:
                return await super()._save_streamed(keys, arguments, stages, streamed)
            except MovedError as moved:
                await cluster.nodes_manager.move_slot(moved)
            except (AskError, TryAgainError):  # the script's own waiting: _on_slot
                if not await wait_out.wait():
                    raise

    async def _drop_staged(self, pool: _resp.Pool, keys: list[bytes]) -> None:
        """Delete the staged copies ``keys``, followed to the importing node of a slot being
        migrated (ASK), one key a command (a DEL of several keys, some of them migrated,
        would be refused: TRYAGAIN)."""
        for key in keys:
            await self._follow(key.decode(), "DEL", key)

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Read the records: the first MiB of one (the rest in pieces, on its slot's primary,
        if there is more), or one MGET per ``batch_size`` keys of a slot, sent concurrently
        (see :meth:`_mget`)."""
        names = [self.key(class_name, id) for class_name, id in keys]
        if len(names) == 1:
            first = await self._follow(names[0], "GETRANGE", names[0], 0, single._PIECE - 1)
            if len(first) == single._PIECE:
                return [await self._load_large(keys[0], names[0], first)]
            values: list[Any] = [first or None]  # GETRANGE reads a missing key as empty
        else:
            values = await self._mget(names)
        return self._records_in(names, keys, values)

    async def _mget(self, names: list[str]) -> list[Any]:
        """The documents under ``names``: one MGET per ``batch_size`` keys of a slot, on the
        slot's primary (so that no reply and no server call grows with the batch), documents
        above ``_PIECE`` taken off the socket in pieces (see ``_resp.read_values``). A slot
        that moved or is being migrated (MOVED, ASK, TRYAGAIN: its keys split between two
        nodes) is read key by key instead, whole, each GET following its record."""
        cluster = self._connected_cluster()
        await cluster.initialize()  # a no-op unless a lost connection asked for it
        slots: defaultdict[int, list[int]] = defaultdict(list)
        for position, name in enumerate(names):
            slots[cluster.keyslot(name)].append(position)
        size = self._batch_size

        async def one(positions: list[int]) -> list[Any]:
            group = [names[position].encode() for position in positions]
            try:
                return await _resp.read_values(
                    self._pool_for(group[0]), _resp.command(b"MGET", *group), piece=single._PIECE
                )
            except (MovedError, AskError, TryAgainError):
                return [await self._follow(name.decode(), "GET", name) for name in group]

        groups = [
            positions[start : start + size]
            for positions in slots.values()
            for start in range(0, len(positions), size)
        ]
        replies = await self._gather([partial(one, positions) for positions in groups])
        values: list[Any] = [None] * len(names)
        for positions, found in zip(groups, replies, strict=True):
            for position, value in zip(positions, found, strict=True):
                values[position] = value
        return values

    async def _load_large(
        self, record_key: RecordKey, name: str, first: bytes
    ) -> StoredRecord | None:
        """The record whose first MiB is ``first``, the rest read in pieces on its slot's
        primary (as on a single node); whole, following the record, if its slot moved
        meanwhile or is being migrated (ASK: the record is on the importing node).

        Read in pieces there too (``_resp.read_values`` with ``ASKING`` first), a 50 and a
        100 MB record peaked at the same 2.0x their size in RSS as read whole (2.02-2.17x
        against 2.02-2.04x, a fresh process each, 2-3 rounds), so it is read whole.
        """
        try:
            return await super()._load_large(record_key, name, first)
        except (MovedError, AskError):
            value = await self._follow(name, "GET", name)
        class_name, id = record_key
        return None if value is None else self._parse(name, class_name, id, value)

    async def _run_page(self, index: str, arguments: list[Any]) -> list[Any]:
        """The page script's reply, run on the node that holds ``index`` once the slot is
        not being migrated (see :meth:`_on_slot`: it reads record keys it is not given)."""
        command = ("EVALSHA", self._page_script.sha, 1, index, *arguments)
        (flat,) = await self._on_slot(
            index, partial(_sent, [command]), script=single._PAGE_SCRIPT, follow_ask=False
        )
        if isinstance(flat, Exception):
            raise flat
        return flat  # type: ignore[no-any-return]

    async def delete(self, id: UUID, class_name: str) -> bool:
        """Delete the record and its index entry in one script (same slot)."""
        keys = self._delete_keys(class_name, id)
        deleted = await self._written(_DELETE_SCRIPT, self._delete_script.sha, keys, str(id))
        if deleted == -1:
            raise _locked(keys[0], self._masked)
        return bool(deleted)

    async def delete_checked(
        self, id: UUID, class_name: str, revision: int, *, created_at: datetime | None = None
    ) -> bool:
        """Delete the record at ``revision`` (and ``created_at``): check and delete in one
        script (same slot)."""
        keys = self._delete_keys(class_name, id)
        sha = self._delete_checked_cluster_script.sha
        created = single.checked_created_at(created_at)
        reply = await self._written(_DELETE_CHECKED_SCRIPT, sha, keys, str(id), revision, created)
        if reply == -1:
            raise _locked(keys[0], self._masked)
        return single.checked_outcome(class_name, id, revision, reply)

    async def _written(self, script: str, sha: str, keys: list[str], *args: Any) -> Any:
        """The reply of a writing ``script`` on ``keys`` (one slot), sent once by the backend
        itself: redis-py's cluster client resends a command after a lost connection, and the
        resend of a delete that had landed answers "not found" (see :meth:`_run_save`)."""
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        (reply,) = await self._on_slot(keys[0], partial(_sent, [command]), script=script)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def list_records(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[StoredRecord]:
        """Records newest first (creation time, then id), merged from every bucket.

        One page script call per bucket (``buckets`` calls, sent concurrently: one round of
        network latency, ``buckets`` server calls), each giving up to ``limit`` records past
        the cursor; the merge keeps the newest ``limit``. A value that is no record raises
        the error of the newest such value (with its ``resume_after``, see
        :meth:`~pydantic_toast.backends.redis.RedisBackend._resumable`), except a page of one
        whose newest entry, across the buckets, is a record.
        """
        pages = await self._gather(
            [
                partial(
                    self._page,
                    self.index_key(class_name, bucket),
                    f"{self._tag(class_name, bucket)}:",
                    class_name,
                    limit,
                    after,
                )
                for bucket in range(self._buckets)
            ],
            return_exceptions=True,
        )
        read: list[list[StoredRecord]] = []
        unreadable: list[StoredDataError] = []
        for page in pages:
            if isinstance(page, StoredDataError) and page.resume_after is not None:
                unreadable.append(page)
            elif isinstance(page, BaseException):
                raise page
            else:
                read.append(page)
        newest = heapq.merge(*read, key=lambda r: (r.created_at, r.id), reverse=True)
        if not unreadable:
            return list(itertools.islice(newest, limit))
        # A bucket's page stops at its first such value, so past one record only a page of
        # one (each bucket's newest entry) can be told apart from the entries not read.
        first = max(unreadable, key=lambda error: _cursor_key(error.resume_after))
        record = next(newest, None)
        if (
            limit == 1
            and record is not None
            and ((record.created_at, record.id) > _cursor_key(first.resume_after))
        ):
            return [record]
        raise first

    async def list_class_names(self) -> list[str]:
        """Not supported yet: the index keys of a class are spread over every primary, and
        a listing that missed a node would let orphan deletion delete referenced records."""
        raise self._unsupported(
            "listing class names", "async def list_class_names(self) -> list[str]"
        )

    async def count(self, class_name: str) -> int:
        """How many live records of ``class_name`` there are: each bucket's index size less
        its expired entries (one script call per bucket, concurrently), added up."""
        counts = await self._gather(
            [
                partial(
                    self._count_script,
                    keys=[self.index_key(class_name, b), self.expiry_key(class_name, b)],
                )
                for b in range(self._buckets)
            ]
        )
        return sum(int(count) for count in counts)

    async def _gather(
        self, calls: list[Callable[[], Awaitable[Any]]], *, return_exceptions: bool = False
    ) -> list[Any]:
        """``asyncio.gather`` of ``calls``, at most ``_IN_FLIGHT`` (or ``max_connections``)
        at a time: the cluster client has no waiting pool, and past ``max_connections`` to
        a node a call fails at once, so many buckets must not mean as many connections."""
        gate = asyncio.Semaphore(min(_IN_FLIGHT, int(self._pool_options["max_connections"])))

        async def one(call: Callable[[], Awaitable[Any]]) -> Any:
            async with gate:
                return await call()

        return await asyncio.gather(
            *(one(call) for call in calls), return_exceptions=return_exceptions
        )

    def _connected_cluster(self) -> _Cluster:
        self._connected()
        assert self._cluster is not None  # _connected() raised otherwise
        return self._cluster


def _cursor_key(cursor: PageCursor | None) -> tuple[datetime, UUID]:
    assert cursor is not None  # only errors with a resume_after are compared
    return (cursor.created_at, cursor.id)


_batch_token: ContextVar[str] = ContextVar("pydantic_toast_cluster_batch", default="")


async def _sent(commands: list[tuple[Any, ...]], node: ClusterNode, asking: bool) -> list[Any]:
    """The replies of ``commands`` sent on one of ``node``'s connections, after ``ASKING``
    when ``asking`` (see ``RedisClusterBackend._on_slot``)."""
    if not asking:
        return await _on_one_connection(node, commands)
    return (await _on_one_connection(node, [("ASKING",), *commands]))[1:]


def _migrating(reply: Any) -> bool:
    """Whether ``reply`` refused a command because its slot is being migrated: TRYAGAIN (its
    keys split between the two nodes), ASK, or a script refused a key its node lacks."""
    return isinstance(reply, TryAgainError | AskError) or (
        isinstance(reply, ResponseError) and "non local key" in str(reply)
    )


async def _on_one_connection(node: ClusterNode, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` on one of ``node``'s connections in one write; each one's reply, or
    the error it got (a connection error while sending raises)."""
    pipeline = [PipelineCommand(position, *command) for position, command in enumerate(commands)]
    await node.execute_pipeline(pipeline)
    return [command.result for command in pipeline]


class _NodePool:
    """One cluster node's connections, taken and given back as from a pool (``_resp.Pool``)."""

    __slots__ = ("node",)

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    async def get_connection(self) -> Any:
        """One of the node's free connections, or a new one (``MaxConnectionsError`` past
        ``max_connections``: the cluster client has no waiting pool)."""
        return self.node.acquire_connection()

    async def release(self, connection: Any) -> None:
        """Give ``connection`` back to the node."""
        self.node.release(connection)


def _locked(key: str, url: str) -> StorageBusyError:
    return StorageBusyError(
        f"Redis Cluster record {key} is being written by a batch in progress: retry in a moment",
        url=url,
    )


def _unlocked(result: Any, record_keys: list[bytes], url: str) -> Any:
    """The save script's result, or the busy error when a batch's lock refused a record."""
    if result[0] == 2:
        raise _locked(record_keys[int(result[1]) - 1].decode(), url)
    return result


def _node(entry: str, url: StorageURL) -> ClusterNode:
    host, _, port = entry.rpartition(":")
    if not host or not port.isdigit():
        raise StorageConfigurationError(
            f"{url.masked}: each cluster node must be host:port (got {entry!r}), e.g. "
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000/"
        )
    return ClusterNode(host.strip("[]"), int(port))


def _cluster_options(url: StorageURL) -> tuple[int, str, int, int]:
    """(buckets, prefix, wait_replicas, wait_timeout), the shared options checked too."""
    if url.path.strip("/"):
        raise StorageConfigurationError(
            f"{url.masked}: a Redis Cluster has only database 0: leave the path empty "
            "(redis+cluster://host:port/?prefix=...)"
        )
    if not host_list(url.raw):
        raise StorageConfigurationError(f"{url.masked}: name at least one cluster node host:port")
    shared = StorageURL.parse(single._single_node(url.raw, _CLUSTER_OPTIONS))
    prefix, _ = single._options(shared)
    values: list[int] = []
    for name, default in _CLUSTER_OPTIONS.items():
        raw = url.query.get(name)
        try:
            value = int(raw) if raw is not None else default
        except ValueError:
            raise StorageConfigurationError(
                f"{url.masked}: {name} must be a whole number, got {raw!r}"
            ) from None
        values.append(value)
    buckets, wait_replicas, wait_timeout = values
    if not 1 <= buckets <= 16384:
        raise StorageConfigurationError(f"{url.masked}: buckets must be from 1 to 16384")
    if wait_replicas < 0 or wait_timeout <= 0:
        raise StorageConfigurationError(
            f"{url.masked}: wait_replicas must be 0 or more and wait_timeout positive"
        )
    return buckets, prefix, wait_replicas, wait_timeout
