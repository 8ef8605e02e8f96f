"""``memory://``: an in-process store for tests and demos.

Every ``memory://NAME`` URL names one store of the current :class:`~pydantic_toast.Storage`,
shared by all its threads and event loops, as a server would be; ``memory://`` alone is the
unnamed store. Records are kept as bytes, so what comes back is a fresh copy. It behaves like
Redis on expiry (every write sets the expiry afresh; a write without ``ttl`` makes the record
permanent) and like PostgreSQL on ordering. Nothing survives the storage.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from pydantic_toast._exceptions import ConcurrencyError
from pydantic_toast._records import PageCursor, RecordKey, StoredRecord, new_record
from pydantic_toast.backends.base import Capability, RecordBackend

__all__ = ["MemoryBackend", "MemoryStore"]


class MemoryStore:
    """The records of one ``memory://NAME`` store: inspect them, or clear them between tests.

    Records are kept per class, with each class's keys in ``(created_at, id)`` order, so a
    count and a page cost what they would on a server's index, not a scan of the store.
    """

    def __init__(self) -> None:
        self._classes: dict[str, _ClassRecords] = {}
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<MemoryStore records={sum(len(c.entries) for c in self._classes.values())}>"

    def __len__(self) -> int:
        with self.lock:
            return sum(self.count(class_name) for class_name in list(self._classes))

    def records(self, class_name: str | None = None) -> list[StoredRecord]:
        """The live records, of one class or of all, oldest first."""
        with self.lock:
            names = list(self._classes) if class_name is None else [class_name]
            live = [
                record
                for name in names
                for stored, _ in list(self._classes.get(name, _NO_RECORDS).entries.values())
                if (record := self.get((name, stored.id))) is not None
            ]
        return sorted(live, key=lambda r: (r.created_at, r.id))

    def class_names(self) -> list[str]:
        """The class names that have live records (call with :attr:`lock` held)."""
        return [name for name in list(self._classes) if self.count(name)]

    def clear(self) -> None:
        """Forget every record."""
        with self.lock:
            self._classes.clear()

    def get(self, key: RecordKey) -> StoredRecord | None:
        """The live record under ``key`` (call with :attr:`lock` held)."""
        records = self._classes.get(key[0])
        if records is None or (entry := records.entries.get(key[1].int)) is None:
            return None  # (not records.live(): a load would pay one call more)
        record, expires_at = entry
        if expires_at is not None and expires_at <= time.monotonic():
            records.remove(key[1].int)
            return None
        return record

    def put(self, record: StoredRecord, expires_at: float | None) -> None:
        """Store ``record`` (call with :attr:`lock` held)."""
        self.records_of(record.class_name).put(record, expires_at)

    def records_of(self, class_name: str) -> _ClassRecords:
        """``class_name``'s records, made empty if it has none (call with :attr:`lock` held)."""
        records = self._classes.get(class_name)
        if records is None:
            records = self._classes[class_name] = _ClassRecords()
        return records

    def pop(self, key: RecordKey) -> bool:
        """Remove ``key``; return whether a live record was there (call with :attr:`lock` held)."""
        found = self.get(key) is not None
        records = self._classes.get(key[0])
        if records is not None:
            records.remove(key[1].int)
        return found

    def count(self, class_name: str) -> int:
        """How many live records ``class_name`` has (call with :attr:`lock` held)."""
        records = self._classes.get(class_name)
        if records is None:
            return 0
        records.sweep()
        return len(records.entries)

    def page(self, class_name: str, limit: int, after: PageCursor | None) -> list[StoredRecord]:
        """Up to ``limit`` live records newest first, strictly before ``after`` (lock held)."""
        records = self._classes.get(class_name)
        if records is None:
            return []
        now = time.monotonic()
        order = records.order
        position = len(order) if after is None else bisect.bisect_left(order, after)
        page: list[StoredRecord] = []
        while position > 0 and len(page) < limit:
            position -= 1
            created_at, id = order[position]
            entry = records.entries.get(id.int)
            if entry is None or entry[0].created_at != created_at:
                continue  # a key left behind by a delete or an expiry
            if entry[1] is not None and entry[1] <= now:
                continue  # expired: removed by the next count or write
            page.append(entry[0])
        return page


class _ClassRecords:
    """One class's records by id, their keys in ``(created_at, id)`` order, and expiries.

    Records and expiries are keyed by ``id.int``: an int hashes in C, where a UUID's
    ``__hash__`` is a Python call (1,400 instructions, two per save and one per load).

    A removed record's key stays in :attr:`order` until keys left behind outnumber live ones;
    readers skip keys whose record is gone or was stored again with another ``created_at``.
    """

    __slots__ = ("entries", "expiring", "order")

    def __init__(self) -> None:
        self.entries: dict[int, tuple[StoredRecord, float | None]] = {}
        self.order: list[tuple[datetime, UUID]] = []
        self.expiring: dict[int, float] = {}

    def put(self, record: StoredRecord, expires_at: float | None) -> None:
        number = record.id.int
        entry = (record, expires_at)
        old = self.entries.setdefault(number, entry)  # one lookup for a new record
        if old is not entry:
            self.entries[number] = entry
        if old is entry or old[0].created_at != record.created_at:
            order = self.order
            key = (record.created_at, record.id)
            if order and not order[-1] < key:
                self._insert_key(key)
            else:  # a new record: its key goes last
                order.append(key)
                if len(order) > 2 * len(self.entries) + 64:
                    self.order = sorted((r.created_at, r.id) for r, _ in self.entries.values())
        if expires_at is not None:
            self.expiring[number] = expires_at
        elif self.expiring:
            self.expiring.pop(number, None)

    def _insert_key(self, key: tuple[datetime, UUID]) -> None:
        order = self.order
        at = bisect.bisect_left(order, key)
        if at == len(order) or order[at] != key:  # not left there by a removed record
            order.insert(at, key)

    def live(self, number: int, now: float | None = None) -> StoredRecord | None:
        """The record whose id's ``int`` is ``number``, unless missing or expired (then removed).

        ``now``: the monotonic clock, read by the caller (else here, when the record expires).
        """
        entry = self.entries.get(number)
        if entry is None:
            return None
        record, expires_at = entry
        if expires_at is not None and expires_at <= (time.monotonic() if now is None else now):
            self.remove(number)
            return None
        return record

    def remove(self, number: int) -> None:
        """Remove the record whose id's ``int`` is ``number``."""
        self.entries.pop(number, None)
        self.expiring.pop(number, None)

    def sweep(self) -> None:
        """Remove the expired records (only those with an expiry are looked at)."""
        if not self.expiring:
            return
        now = time.monotonic()
        for number in [number for number, expires_at in self.expiring.items() if expires_at <= now]:
            self.remove(number)


_NO_RECORDS = _ClassRecords()


class MemoryBackend(RecordBackend):
    """A store in the process behind the backend interface, with the semantics of a server.

    ``created_at`` is kept across updates, expiry (``ttl``) is honoured, writes check revisions,
    and the optional capabilities (batches, delete, listing, count) are implemented.
    """

    capabilities = frozenset(Capability)

    def __init__(self, url: str, *, store: MemoryStore | None = None) -> None:
        super().__init__(url)
        self._store = store if store is not None else MemoryStore()

    async def connect(self) -> None:
        """Nothing to open."""

    async def disconnect(self) -> None:
        """Nothing to close: the data stays for other users of the same URL."""

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        """Store records, keeping each existing record's ``created_at``; all or none.

        Every expected revision is checked before anything is written, with the
        ``created_at`` of the record it was read from (a record deleted and created again
        since is another one, whatever its revision).
        """
        now = time.monotonic()
        store = self._store
        known = store._classes
        with store.lock:
            # Each record's class's records and what is stored there now, all of them checked
            # before anything is written.
            existing = []
            for record in records:
                # records_of() and live(), inlined: two Python calls less per record.
                classes = known.get(record.class_name) or store.records_of(record.class_name)
                entry = classes.entries.get(record.id.int)
                old = None
                if entry is not None:
                    old, expires_at = entry
                    if expires_at is not None and expires_at <= now:
                        classes.remove(record.id.int)
                        old = None
                expected = record.revision
                if expected is not None and (
                    (0 if old is None else old.revision or 0) != expected
                    or (
                        expected
                        and old is not None
                        # (usually the very object stored: no datetime comparison)
                        and old.created_at is not record.created_at
                        and old.created_at != record.created_at
                    )
                ):
                    current = None if old is None else old.revision
                    raise ConcurrencyError(
                        record.class_name,
                        record.id,
                        expected=expected,
                        current=current,
                        ttl=record.ttl,
                    )
                existing.append((classes, old))
            revisions = []
            # By position, not zip(..., strict=True): a zip with a keyword costs about 3,000
            # instructions (a tenth of a single save here).
            for index, record in enumerate(records):
                classes, old = existing[index]
                if old is None:
                    revision, created_at = 1, record.created_at
                else:
                    revision, created_at = (old.revision or 0) + 1, old.created_at
                expires_at = None if record.ttl is None else now + record.ttl
                # the record with its first created_at and its new revision
                stored = new_record(
                    record.class_name,
                    record.id,
                    record.data,
                    record.schema_version,
                    created_at,
                    record.updated_at,
                    record.ttl,
                    revision,
                    record.without_floats,
                )
                classes.put(stored, expires_at)
                revisions.append(revision)
            return revisions

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Read records in the order of ``keys``."""
        with self._store.lock:
            return [self._store.get(key) for key in keys]

    async def delete(self, id: UUID, class_name: str) -> bool:
        """Delete a record; return whether it existed."""
        with self._store.lock:
            return self._store.pop((class_name, id))

    async def delete_checked(
        self, id: UUID, class_name: str, revision: int, *, created_at: datetime | None = None
    ) -> bool:
        """Delete a record if it is at ``revision`` (and ``created_at``); whether it existed."""
        with self._store.lock:
            stored = self._store.get((class_name, id))
            if stored is None:
                return False
            if (stored.revision or 1) != revision or (
                created_at is not None and stored.created_at != created_at
            ):
                raise ConcurrencyError(
                    class_name, id, expected=revision, current=stored.revision, deleting=True
                )
            return self._store.pop((class_name, id))

    async def list_records(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[StoredRecord]:
        """Records newest first (by ``created_at``, then id), strictly past ``after``."""
        with self._store.lock:
            return self._store.page(class_name, limit, after)

    async def list_class_names(self) -> list[str]:
        """The class names that have live records."""
        with self._store.lock:
            return self._store.class_names()

    async def count(self, class_name: str) -> int:
        """How many live records of ``class_name`` there are."""
        with self._store.lock:
            return self._store.count(class_name)
