"""Read replicas for ``postgresql://``: loads, pages and counts served by streaming replicas.

Options of the primary's URL:

* ``replicas=host:port[,host:port...]``: hot standbys of the primary (streaming replication).
  They are reached with the primary URL's user, password, database and other options.
* ``read_your_writes`` (seconds, default 5): how long after this process writes or deletes a
  record through this URL (from when the write ended, and for a write inside
  :func:`~pydantic_toast.transaction` again from the commit) its reads stay on the primary.

Which server answers a read:

1. Inside :func:`~pydantic_toast.transaction` or :func:`read_primary`: the primary (inside a
   transaction, on its connection, so its uncommitted writes are seen).
2. A load of a record this process wrote or deleted in the last ``read_your_writes`` seconds,
   and a page or count of a class it wrote in that time: the primary.
3. Otherwise a replica, taking turns. A replica that cannot be reached (refused, lost, timed
   out, per the one error map) is left alone for :data:`RETRY_AFTER` seconds and the read goes
   to the next replica, then to the primary: reads keep working while a replica is down.

Replication is asynchronous: a replica lagging by more than ``read_your_writes`` serves older
data for records written earlier, and writes by other processes appear on a replica later
than on the primary. Use :func:`read_primary` where that matters.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote
from uuid import UUID

from pydantic_toast._exceptions import (
    StorageConfigurationError,
    StorageConnectionError,
    StorageConnectTimeoutError,
    StoragePoolTimeoutError,
    StorageTimeoutError,
    shorten,
)
from pydantic_toast._url import StorageURL
from pydantic_toast.runtime.errors import Failure, translate

if TYPE_CHECKING:
    from pydantic_toast.backends.postgresql import PostgreSQLBackend

__all__ = ["REPLICA_OPTIONS", "RETRY_AFTER", "Replicas", "read_primary"]

REPLICA_OPTIONS: Final = ("replicas", "read_your_writes")
RETRY_AFTER: Final = 5.0
"""Seconds a replica that could not be reached is skipped before it is tried again."""

_DEFAULT_WINDOW = 5.0
# The read statements of the PostgreSQL backend, and how to find the keys or class they read.
_READS: Final = (
    "select_one",
    "select_many",
    "select_class",
    "select_texts",
    "page_first",
    "page_after",
    "count",
)
# A replica that fails like this is unavailable: the read moves on (anything else is raised).
_UNAVAILABLE = (
    StorageConnectionError,
    StorageConnectTimeoutError,
    StoragePoolTimeoutError,
    StorageTimeoutError,
)
ON_PRIMARY: Final = object()
"""What :meth:`Replicas.read` returns when the primary must answer."""

logger = logging.getLogger("pydantic_toast")
_primary_only: ContextVar[bool] = ContextVar("pydantic_toast_read_primary", default=False)


@contextlib.contextmanager
def read_primary() -> Iterator[None]:
    """Send every read inside the block to the primary, not to a read replica.

    For code that must see the latest data whoever wrote it (another process, another
    service), on PostgreSQL URLs with ``replicas=``. Works in sync and async code (the
    setting follows the context, as :func:`~pydantic_toast.transaction` does)::

        with read_primary():
            order = Order.model_validate(reference)
    """
    token = _primary_only.set(True)
    try:
        yield
    finally:
        _primary_only.reset(token)


class _RecentWrites:
    """The records and classes one store had written by this process, and until when they
    are read from the primary."""

    def __init__(self) -> None:
        self._records: OrderedDict[tuple[str, UUID], float] = OrderedDict()
        self._classes: dict[str, float] = {}
        self._lock = threading.Lock()

    def note(self, keys: Iterable[tuple[str, UUID]], window: float) -> None:
        now = time.monotonic()
        until = now + window
        with self._lock:
            for key in keys:
                self._records[key] = until
                self._records.move_to_end(key)
                self._classes[key[0]] = until
            # Entries leave in the order they were noted (one window per URL: close enough).
            while self._records:
                key, expiry = next(iter(self._records.items()))
                if expiry > now:
                    break
                del self._records[key]
            if len(self._classes) > 64:
                self._classes = {c: t for c, t in self._classes.items() if t > now}

    def has_record(self, keys: Iterable[tuple[str, UUID]]) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(self._records.get(key, 0.0) > now for key in keys)

    def has_class(self, class_name: str) -> bool:
        with self._lock:
            return self._classes.get(class_name, 0.0) > time.monotonic()


_recent: dict[Hashable, _RecentWrites] = {}
_recent_lock = threading.Lock()


def _recent_of(store: Hashable) -> _RecentWrites:
    with _recent_lock:
        return _recent.setdefault(store, _RecentWrites())


class _Replica:
    """One replica's backend, and until when it is skipped after a failure."""

    def __init__(self, backend: PostgreSQLBackend) -> None:
        self.backend = backend
        self.connected = False
        self.down_until = 0.0


class Replicas:
    """The read replicas of one PostgreSQL backend, and the rule that picks a reader."""

    def __init__(self, primary: PostgreSQLBackend, url: StorageURL) -> None:
        addresses, self.window = replica_options(url)
        backend_class = type(primary)
        self._recent = _recent_of(backend_class.store_identity(url))
        self._replicas = [
            _Replica(backend_class(_replica_url(url, address))) for address in addresses
        ]
        self._turns = itertools.cycle(range(len(self._replicas)))

    async def connect(self) -> None:
        """Connect every replica; one that fails is logged and tried again later."""
        for replica in self._replicas:
            await self._connect(replica)

    async def disconnect(self) -> None:
        """Close every replica's connections."""
        for replica in self._replicas:
            if replica.connected:
                replica.connected = False
                with contextlib.suppress(Exception):
                    await replica.backend.disconnect()

    def note_writes(self, keys: Iterable[tuple[str, UUID]]) -> None:
        """Record that this process writes these records now (read-your-writes)."""
        self._recent.note(keys, self.window)

    @contextlib.contextmanager
    def writing(self, keys: Sequence[tuple[str, UUID]]) -> Iterator[None]:
        """Note ``keys`` as written now, and again once the write inside the block ended.

        The window counts from the end: a write slower than it (waiting for a row lock, a
        large batch) is still read back from the primary.
        """
        self.note_writes(keys)
        try:
            yield
        finally:
            self.note_writes(keys)

    async def read(self, kind: str, name: str, args: tuple[Any, ...]) -> Any:
        """Run a read statement on a replica when the rule allows it and one answers.

        Returns :data:`ON_PRIMARY` when the primary must run it (the rule, or no replica
        could be reached).
        """
        if name not in _READS or _primary_only.get() or self._recently_written(name, args):
            return ON_PRIMARY
        first = next(self._turns)
        order = self._replicas[first:] + self._replicas[:first]
        now = time.monotonic()
        for replica in order:
            if replica.down_until > now:
                continue
            try:
                if not replica.connected:
                    await replica.backend.connect()
                    replica.connected = True
                return await replica.backend._statement(kind, name, *args)  # type: ignore[arg-type]
            except Exception as exc:
                if not await self._unavailable(replica, exc, name):
                    raise
        return ON_PRIMARY

    def _recently_written(self, name: str, args: tuple[Any, ...]) -> bool:
        if name == "select_one":
            return self._recent.has_record([(args[0], args[1])])
        if name == "select_many":
            return self._recent.has_record(zip(args[0], args[1], strict=True))
        if name == "select_class":  # (ids, class_name, now)
            class_name = args[1]
            return self._recent.has_record((class_name, id) for id in args[0])
        if name == "select_texts":  # (the ids' canonical texts joined by commas, class_name, now)
            class_name = args[1]
            return self._recent.has_record((class_name, UUID(text)) for text in args[0].split(","))
        return self._recent.has_class(args[0])

    async def _connect(self, replica: _Replica) -> None:
        try:
            await replica.backend.connect()
        except Exception as exc:
            if not await self._unavailable(replica, exc, "connect"):
                raise
        else:
            replica.connected = True

    async def _unavailable(self, replica: _Replica, exc: Exception, operation: str) -> bool:
        """Whether ``exc`` means the replica cannot answer now; if so, skip it for a while."""
        failure = Failure(
            "PostgreSQL", replica.backend._parsed, operation, connecting=operation == "connect"
        )
        mapped, _ = translate(exc, failure)
        if not isinstance(mapped, _UNAVAILABLE):
            return False
        replica.down_until = time.monotonic() + RETRY_AFTER
        logger.warning(
            "read replica %s is unavailable (%s): reading from the primary or another replica "
            "for %.0f s",
            replica.backend._parsed.address,
            type(mapped).__name__,
            RETRY_AFTER,
        )
        with contextlib.suppress(Exception):
            await replica.backend.discard_connections()
        return True


def replica_options(url: StorageURL) -> tuple[list[str], float]:
    """(replica ``host:port`` list, read-your-writes seconds), checked.

    Raises:
        StorageConfigurationError: A replica address or the window is malformed.
    """
    addresses = [a for a in url.query.get("replicas", "").split(",") if a]
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StorageConfigurationError(
                f"{url.masked}: each replica must be host:port (got {shorten(address)!r}), e.g. "
                "postgresql://user@primary:5432/db?replicas=replica1:5432,replica2:5432"
            )
    raw = url.query.get("read_your_writes")
    try:
        window = float(raw) if raw is not None else _DEFAULT_WINDOW
    except ValueError:
        window = -1.0
    if not window >= 0:  # (NaN too)
        raise StorageConfigurationError(
            f"{url.masked}: read_your_writes must be a number of seconds (0 or more), got "
            f"{shorten(str(raw))!r}"
        )
    if "read_your_writes" in url.query and not addresses:
        raise StorageConfigurationError(
            f"{url.masked}: read_your_writes applies to read replicas: add replicas=host:port"
        )
    return addresses, window


def _replica_url(url: StorageURL, address: str) -> str:
    """The primary's URL pointed at ``address``, without the replica options."""
    user = quote(url.username or "", safe="")
    secret = f":{quote(url.password, safe='')}" if url.password is not None else ""
    userinfo = f"{user}{secret}@" if user or secret else ""
    kept = [
        f"{quote(name, safe='')}={quote(value, safe='')}"
        for name, value in url.query.items()
        if name not in REPLICA_OPTIONS
    ]
    query = f"?{'&'.join(kept)}" if kept else ""
    return f"{url.scheme}://{userinfo}{address}{url.path}{query}"
