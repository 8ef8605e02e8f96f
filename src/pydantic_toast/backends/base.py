"""The storage backend interface every store implements."""

from __future__ import annotations

import enum
import inspect
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from pydantic_toast._exceptions import StorageConfigurationError, StorageUsageError, shorten
from pydantic_toast._records import PageCursor, RecordKey, StoredRecord
from pydantic_toast._url import StorageURL, mask_url

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "REQUIRED_METHODS",
    "Capability",
    "RecordBackend",
    "StorageBackend",
    "batch_size_of",
    "batch_spans",
    "checks_created_at_on_delete",
]

REQUIRED_METHODS = ("connect", "disconnect", "save", "load")
# Records per server call in a batch, unless the URL's ``batch_size`` option says otherwise.
DEFAULT_BATCH_SIZE = 1000


def batch_size_of(url: StorageURL, default: int = DEFAULT_BATCH_SIZE) -> int:
    """The URL's ``batch_size`` option: records per server call when a batch is split.

    Raises:
        StorageConfigurationError: It is not a positive whole number.
    """
    raw = url.query.get("batch_size")
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise StorageConfigurationError(
            f"{url.masked}: batch_size must be a positive whole number, got {shorten(raw)!r}"
        )
    return int(raw)


def batch_spans(
    records: Sequence[StoredRecord], size: int, *, most_bytes: int, carried_up_to: int
) -> list[tuple[int, int]]:
    """``records`` as runs ``(start, end)`` of at most ``size`` records whose data carried in
    the server call add up to ``most_bytes`` at most; each run holds one record at least.

    A record whose data is longer than ``carried_up_to`` travels apart (staged, streamed):
    it weighs nothing.
    """
    spans: list[tuple[int, int]] = []
    start = taken = 0
    for end, record in enumerate(records):
        length = len(record.data)
        weight = 0 if length > carried_up_to else length
        if end > start and (end - start == size or taken + weight > most_bytes):
            spans.append((start, end))
            start, taken = end, 0
        taken += weight
    if start < len(records):
        spans.append((start, len(records)))
    return spans


class Capability(enum.StrEnum):
    """What a backend can do beyond saving and loading single records."""

    BATCH = "batch"
    """``save_records``/``load_records`` take many records in one round trip."""
    DELETE = "delete"
    """``delete`` removes a record."""
    LIST = "list"
    """``list_records`` (or ``list_ids``) pages through a class's records, newest first.

    The order is ``created_at`` descending, then id descending, and a page ``after`` a
    :class:`~pydantic_toast.PageCursor` holds the records strictly past that sort key, so a
    cursor stays valid when its record is deleted.
    """
    COUNT = "count"
    """``count`` tells how many records a class has."""
    TTL = "ttl"
    """Records expire ``StoredRecord.ttl`` seconds after their last write."""
    REVISIONS = "revisions"
    """Records carry a revision, and writes are conditional on it (optimistic concurrency).

    ``load_records`` gives each record's stored ``revision``. ``save_records`` checks, for each
    record whose ``revision`` is not ``None``, that the stored revision is that one (``0``: no
    record exists) and, for an existing record, that its stored ``created_at`` is the record's
    (a record deleted and created again since starts at revision 1 again: the ``created_at``
    tells the two apart), and raises :class:`~pydantic_toast.ConcurrencyError` otherwise,
    writing none of the batch; it writes a record with ``revision=None`` whatever is stored,
    keeping the ``created_at`` of an existing record (a new one takes the record's). It returns the
    new revision of each record (1 for a new record, one more than before otherwise). The
    check and the write must be atomic (one statement, a transaction, a server script).
    A record found at another revision is a conflict even when it holds exactly the record
    being written: another writer who read the same revision and wrote the same data in the
    same microsecond wrote it, and taking it for this write would lose an update. So a
    backend never resends a write itself (a lost reply is settled by the boundary, by
    reading back). Models on a backend without it must declare
    ``concurrency="last-write-wins"``.
    """


def checks_created_at_on_delete(backend_class: type[StorageBackend]) -> bool:
    """Whether ``backend_class.delete_checked`` takes ``created_at`` (a backend written before
    that parameter existed does not: its checked deletes compare the revision alone)."""
    # Named only: a decorator's (*args, **kwargs) around an older method would take it too.
    return "created_at" in inspect.signature(backend_class.delete_checked).parameters


# The optional methods whose override declares a capability, when a class declares none.
_METHOD_CAPABILITIES = {
    "delete": Capability.DELETE,
    "list_ids": Capability.LIST,
    "list_records": Capability.LIST,
    "count": Capability.COUNT,
    "save_records": Capability.BATCH,
}


class StorageBackend(ABC):
    """A store for model records, reached through a URL scheme.

    An implementation needs four coroutine methods: :meth:`connect`, :meth:`disconnect`,
    :meth:`save` and :meth:`load`. ``save`` receives a JSON-compatible document
    (``{"schema_version", "created_at", "updated_at", "data": {fields}}``) and ``load`` must
    give the same document back, or ``None`` when there is none::

        class FileBackend(StorageBackend):
            async def connect(self) -> None: ...
            async def disconnect(self) -> None: ...
            async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None: ...
            async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None: ...

        register_backend("file", FileBackend)

    The library makes one instance per URL and event loop, calls ``connect`` once before first
    use and ``disconnect`` when storage is closed. The other methods are optional
    capabilities with working defaults: the batch methods :meth:`save_records` and
    :meth:`load_records` loop over ``save`` and ``load`` (override them to use one round trip),
    and :meth:`delete`, listing and :meth:`count` raise
    :class:`~pydantic_toast.StorageUsageError` until implemented. For listing, implement
    either :meth:`list_records` (one round trip per page) or :meth:`list_ids` (then each page
    costs two: the ids, then their records); each is derived from the other.

    A backend declares what it supports in :attr:`capabilities`; left out, the set is worked
    out from the optional methods the class overrides (``TTL`` and ``REVISIONS`` must always be
    declared). Model classes, health checks and the FastAPI lifespan check against it instead
    of trying.

    Attributes:
        url: The storage URL exactly as configured (use ``repr(self)`` or
            ``StorageURL.parse(url).masked`` in messages, never ``url`` itself: it may hold a
            password). :class:`~pydantic_toast.StorageURL` also parses its host, port, path
            and query options.
    """

    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    """What this backend supports (see :class:`Capability`)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "capabilities" not in cls.__dict__:
            inherited = {c for c in cls.capabilities if c not in _METHOD_CAPABILITIES.values()}
            overridden = {
                capability
                for name, capability in _METHOD_CAPABILITIES.items()
                if getattr(cls, name) is not getattr(StorageBackend, name)
            }
            cls.capabilities = frozenset(inherited | overridden)

    @classmethod
    def store_identity(cls, url: StorageURL) -> Hashable:
        """What identifies the store behind ``url``, whatever the spelling of the URL.

        Two URLs with the same identity reach the same records (options such as pool sizes do
        not count), so two model classes may not share a stored name on them. The default is
        the scheme, host, port and path.
        """
        return (url.scheme, url.host, url.port, url.path)

    def __init__(self, url: str) -> None:
        """Remember the URL; open nothing yet (that is :meth:`connect`'s job)."""
        self.url = url

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        """Check a URL when a model class is defined, before any connection is made.

        Raise :class:`~pydantic_toast.StorageConfigurationError` with the fix when the URL
        cannot work. The default accepts every URL.
        """
        return  # an optional hook: accepting every URL is the right default

    @classmethod
    def check_class_name(cls, class_name: str) -> None:
        """Check a model's stored class name (``external_name``) when its class is defined.

        Raise :class:`~pydantic_toast.StorageConfigurationError` with the fix when the store
        cannot keep that name apart from others' (S3: see
        :meth:`~pydantic_toast.backends.s3.S3Backend.check_class_name`). The default accepts
        every name.
        """
        return  # an optional hook: most stores keep any string apart

    @abstractmethod
    async def connect(self) -> None:
        """Open connections or pools. Called once, before the first operation."""

    @abstractmethod
    async def disconnect(self) -> None:
        """Release everything :meth:`connect` opened."""

    @abstractmethod
    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        """Insert or replace the document stored under ``(class_name, id)``.

        Replacing keeps the stored document's ``created_at``: the writer may never have seen
        the record, and sends its own time.
        """

    @abstractmethod
    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        """Return the document stored under ``(class_name, id)``, or ``None``."""

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int] | None:
        """Write several records; durable when this returns. Default: one ``save`` each.

        A backend with :attr:`Capability.REVISIONS` checks each record's expected revision
        first and returns the new revisions, in order; others return ``None``.
        """
        for record in records:
            await self.save(record.id, record.class_name, record.to_document())
        return None

    def check_records(self, records: Sequence[StoredRecord]) -> None:
        """Raise ``StorageValidationError`` for a record this store cannot hold, without I/O.

        Called for each store of a tree that spans several, before any of them is written,
        so that a refusal writes nothing anywhere. Default: every record is accepted (a
        backend still refuses in :meth:`save_records` what it cannot store).
        """
        return  # an optional hook: most stores hold whatever JSON they are given

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Read several records, in the order of ``keys``. Default: one ``load`` each."""
        records: list[StoredRecord | None] = []
        for class_name, id in keys:
            document = await self.load(id, class_name)
            if document is None:
                records.append(None)
            else:
                records.append(StoredRecord.from_document(class_name, id, document))
        return records

    async def delete(self, id: UUID, class_name: str) -> bool:
        """Delete one record; return whether it existed."""
        raise self._unsupported("delete", "async def delete(self, id, class_name) -> bool")

    async def delete_checked(
        self, id: UUID, class_name: str, revision: int, *, created_at: datetime | None = None
    ) -> bool:
        """Delete one record only if its stored revision is ``revision``; whether it existed.

        The check and the delete must be atomic (one statement, a server script, a
        conditional request), as for the writes of :attr:`Capability.REVISIONS`: a write
        landing between them is never deleted. With ``created_at`` (the one the caller read;
        ``None``: unknown), the stored ``created_at`` must be that instant too, as for a
        revision-checked write: a record deleted and created again since, back at
        ``revision``, is another record and is not deleted. The parameter is optional: the
        library passes it only to a method that declares it (see
        :func:`checks_created_at_on_delete`), so a backend written without it keeps working,
        with the revision alone deciding.

        Raises:
            ConcurrencyError: The record exists at another revision (or at this one with
                another ``created_at``); nothing was deleted.
        """
        raise self._unsupported(
            "revision-checked deletes",
            "async def delete_checked(self, id, class_name, revision, *, created_at=None) -> bool",
        )

    async def list_records(
        self,
        class_name: str,
        *,
        limit: int,
        after: PageCursor | None = None,
    ) -> list[StoredRecord]:
        """A page of ``class_name``'s records: newest first, at most ``limit``.

        The order is ``created_at`` descending, then id descending; with ``after``, only the
        records whose ``(created_at, id)`` is smaller than the cursor's (whether or not the
        cursor's own record still exists). Fewer than ``limit`` records means the last page.
        Reads never write (no clean-up of expired entries on the way).

        Override it to read a page in one round trip. The default lists ids with
        :meth:`list_ids` and reads them with :meth:`load_records` (two round trips), leaving
        out records deleted in between.
        """
        if _inherited(self, "list_ids"):
            raise self._unsupported(
                "listing",
                "async def list_records(self, class_name, *, limit, after=None) -> "
                "list[StoredRecord]",
            )
        records: list[StoredRecord] = []
        cursor = after
        while len(records) < limit:
            wanted = limit - len(records)
            ids = await self.list_ids(class_name, limit=wanted, after=cursor)
            found = await self.load_records([(class_name, id) for id in ids]) if ids else []
            loaded = [record for record in found if record is not None]
            records += loaded
            if len(ids) < wanted or not loaded:
                # The end of the class, or every listed record deleted before it was read (the
                # cursor cannot move past a record whose created_at is unknown): a short page.
                break
            cursor = PageCursor.of(loaded[-1])
        return records

    async def delete_records(self, keys: Sequence[RecordKey]) -> list[bool]:
        """Delete several records; whether each existed, in order. Default: one ``delete`` each.

        Override it to delete them in one round trip (the SQL backends do).
        """
        return [await self.delete(id, class_name) for class_name, id in keys]

    async def list_ids(
        self,
        class_name: str,
        *,
        limit: int,
        after: PageCursor | None = None,
    ) -> list[UUID]:
        """The ids of a page of ``class_name``'s records, in :meth:`list_records`' order.

        The default takes them from :meth:`list_records`.
        """
        if _inherited(self, "list_records"):
            raise self._unsupported(
                "listing",
                "async def list_ids(self, class_name, *, limit, after=None) -> list[UUID]",
            )
        records = await self.list_records(class_name, limit=limit, after=after)
        return [record.id for record in records]

    async def count(self, class_name: str) -> int:
        """How many records of ``class_name`` are stored."""
        raise self._unsupported("count", "async def count(self, class_name) -> int")

    async def list_class_names(self) -> list[str]:
        """The class names that have records stored here, in any order (a name whose records
        have all expired but are not yet removed may be among them).

        Orphan deletion reads it first: a record of a class it cannot read may reference the
        records it would delete, so on a backend without it orphans are reported, never
        deleted.
        """
        raise self._unsupported(
            "listing class names", "async def list_class_names(self) -> list[str]"
        )

    async def purge_expired(self, *, limit: int) -> int:
        """Delete at most ``limit`` expired records; return how many were deleted.

        For stores that keep expired records until purged (the SQL backends, which hide them
        from reads meanwhile). The default deletes nothing: stores such as Redis remove
        expired records themselves.
        """
        return 0

    def _unsupported(self, what: str, signature: str) -> StorageUsageError:
        return StorageUsageError(
            f"{type(self).__name__} does not support {what}: implement `{signature}` on it"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_url(self.url)}>"

    def pool_connections(self) -> tuple[int, int] | None:
        """How many of this backend's pooled connections are in use and idle, for telemetry.

        Called at metric collection time, possibly from the metrics reader's thread: it only
        reads the pool's counters. The default, ``None``, reports nothing (no pool).

        Returns:
            ``(in_use, idle)``, or ``None`` when the backend has no pool (or is not connected).
        """
        return None

    def reply_timeout(self) -> float | None:
        """How long, in seconds, the backend waits for the store's reply to one request (the
        URL's ``socket_timeout``, ``command_timeout`` or ``read_timeout`` for the built-in
        ones), or ``None`` when it sets no bound of its own.

        It bounds settling a save whose reply was lost: reading its records back is tried
        again, while the store answers busy or cannot be reached, for this long (10 s when
        ``None``).
        """
        return None

    async def discard_connections(self) -> None:
        """Drop pooled connections after the connection to the store was lost.

        Called before an operation is retried; the default does nothing.
        """
        return  # an optional hook: backends without pools have nothing to drop


def _inherited(backend: StorageBackend, method: str) -> bool:
    """Whether ``backend``'s class keeps :class:`StorageBackend`'s own ``method``."""
    return getattr(type(backend), method) is getattr(StorageBackend, method)


class RecordBackend(StorageBackend):
    """A backend written against the batch methods; the document methods come from them.

    Built-in backends store :class:`StoredRecord` s directly (no decode and re-encode of the
    data): they implement :meth:`save_records` and :meth:`load_records`, and ``save``/``load``
    convert documents to and from records here.
    """

    @abstractmethod
    async def save_records(self, records: Sequence[StoredRecord]) -> list[int] | None:
        """Write several records; durable when this returns (see :attr:`Capability.REVISIONS`)."""

    @abstractmethod
    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Read several records, in the order of ``keys``."""

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        """Store one document (see :meth:`StorageBackend.save`)."""
        await self.save_records([StoredRecord.from_document(class_name, id, data)])

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        """Return one document (see :meth:`StorageBackend.load`)."""
        (record,) = await self.load_records([(class_name, id)])
        return None if record is None else record.to_document()
