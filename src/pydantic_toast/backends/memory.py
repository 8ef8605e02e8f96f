"""``memory://``: an in-process store for tests and demos.

Every ``memory://NAME`` URL names one store of the current :class:`~pydantic_toast.Storage`,
shared by all its threads and event loops, as a server would be; ``memory://`` alone is the
unnamed store. Records are kept as bytes, so what comes back is a fresh copy. It behaves like
Redis on expiry (every write sets the expiry afresh; a write without ``ttl`` makes the record
permanent) and like PostgreSQL on ordering. Nothing survives the storage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from uuid import UUID

from pydantic_toast._exceptions import ConcurrencyError
from pydantic_toast._records import PageCursor, RecordKey, StoredRecord, as_stored
from pydantic_toast.backends.base import Capability, RecordBackend

__all__ = ["MemoryBackend", "MemoryStore"]


class MemoryStore:
    """The records of one ``memory://NAME`` store: inspect them, or clear them between tests."""

    def __init__(self) -> None:
        self._records: dict[RecordKey, tuple[StoredRecord, float | None]] = {}
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<MemoryStore records={len(self._records)}>"

    def __len__(self) -> int:
        with self.lock:
            return sum(1 for key in list(self._records) if self.get(key) is not None)

    def records(self, class_name: str | None = None) -> list[StoredRecord]:
        """The live records, of one class or of all, oldest first."""
        with self.lock:
            keys = [k for k in self._records if class_name is None or k[0] == class_name]
            live = [record for key in keys if (record := self.get(key)) is not None]
        return sorted(live, key=lambda r: (r.created_at, r.id))

    def clear(self) -> None:
        """Forget every record."""
        with self.lock:
            self._records.clear()

    def get(self, key: RecordKey) -> StoredRecord | None:
        """The live record under ``key`` (call with :attr:`lock` held)."""
        entry = self._records.get(key)
        if entry is None:
            return None
        record, expires_at = entry
        if expires_at is not None and expires_at <= time.monotonic():
            del self._records[key]
            return None
        return record

    def put(self, record: StoredRecord, expires_at: float | None) -> None:
        """Store ``record`` (call with :attr:`lock` held)."""
        self._records[record.key] = (record, expires_at)

    def pop(self, key: RecordKey) -> bool:
        """Remove ``key``; return whether a live record was there (call with :attr:`lock` held)."""
        found = self.get(key) is not None
        self._records.pop(key, None)
        return found

    def live(self, class_name: str) -> list[StoredRecord]:
        """The live records of ``class_name`` (call with :attr:`lock` held)."""
        return [
            record
            for key in list(self._records)
            if key[0] == class_name and (record := self.get(key)) is not None
        ]


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

        Every expected revision is checked before anything is written.
        """
        now = time.monotonic()
        store = self._store
        with store.lock:
            existing = []
            for record in records:
                old = store.get((record.class_name, record.id))
                expected = record.revision
                if expected is not None and (0 if old is None else old.revision or 0) != expected:
                    current = None if old is None else old.revision
                    raise ConcurrencyError(
                        record.class_name, record.id, expected=expected, current=current
                    )
                existing.append(old)
            revisions = []
            for record, old in zip(records, existing, strict=True):
                if old is None:
                    revision, created_at = 1, record.created_at
                else:
                    revision, created_at = (old.revision or 0) + 1, old.created_at
                expires_at = None if record.ttl is None else now + record.ttl
                store.put(as_stored(record, created_at, revision), expires_at)
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

    async def delete_checked(self, id: UUID, class_name: str, revision: int) -> bool:
        """Delete a record if it is at ``revision``; whether it existed."""
        with self._store.lock:
            stored = self._store.get((class_name, id))
            if stored is None:
                return False
            if (stored.revision or 1) != revision:
                raise ConcurrencyError(
                    class_name, id, expected=revision, current=stored.revision, deleting=True
                )
            return self._store.pop((class_name, id))

    async def list_records(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[StoredRecord]:
        """Records newest first (by ``created_at``, then id), strictly past ``after``."""
        with self._store.lock:
            records = [
                record
                for record in self._store.live(class_name)
                if after is None or (record.created_at, record.id) < after
            ]
        records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return records[:limit]

    async def count(self, class_name: str) -> int:
        """How many live records of ``class_name`` there are."""
        with self._store.lock:
            return len(self._store.live(class_name))
