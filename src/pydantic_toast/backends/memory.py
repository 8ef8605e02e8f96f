"""``memory://``: an in-process store for tests and demos.

Every ``memory://NAME`` URL names one store shared by the whole process (all threads and event
loops), as a server would be; ``memory://`` alone is the default store. Records are kept as
bytes, so what comes back is a fresh copy. Nothing survives the process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import UUID

from pydantic_toast._records import RecordKey, StoredRecord
from pydantic_toast.backends.base import RecordBackend

__all__ = ["MemoryBackend"]


@dataclass
class _Store:
    records: dict[RecordKey, tuple[StoredRecord, float | None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: RecordKey) -> StoredRecord | None:
        entry = self.records.get(key)
        if entry is None:
            return None
        record, expires_at = entry
        if expires_at is not None and expires_at <= time.monotonic():
            del self.records[key]
            return None
        return record

    def live(self, class_name: str) -> list[StoredRecord]:
        return [
            record
            for key in list(self.records)
            if key[0] == class_name and (record := self.get(key)) is not None
        ]


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _store_for(url: str) -> _Store:
    name = url.split("://", 1)[1].split("?", 1)[0]  # query options do not change the store
    with _stores_lock:
        return _stores.setdefault(name, _Store())


class MemoryBackend(RecordBackend):
    """A process-wide dict behind the backend interface, with the same semantics as a server.

    ``created_at`` is kept across updates, expiry (``ttl``) is honoured, and the optional
    capabilities (batches, delete, listing, count) are implemented.
    """

    supports_ttl = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._store = _store_for(url)

    async def connect(self) -> None:
        """Nothing to open."""

    async def disconnect(self) -> None:
        """Nothing to close: the data stays for other users of the same URL."""

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        """Store records, keeping each existing record's ``created_at``."""
        now = time.monotonic()
        with self._store.lock:
            for record in records:
                existing = self._store.get(record.key)
                if existing is not None and existing.created_at != record.created_at:
                    record = StoredRecord(
                        class_name=record.class_name,
                        id=record.id,
                        data=record.data,
                        schema_version=record.schema_version,
                        created_at=existing.created_at,
                        updated_at=record.updated_at,
                    )
                expires_at = now + record.ttl if record.ttl is not None else None
                self._store.records[record.key] = (record, expires_at)

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Read records in the order of ``keys``."""
        with self._store.lock:
            return [self._store.get(key) for key in keys]

    async def delete(self, id: UUID, class_name: str) -> bool:
        """Delete a record; return whether it existed."""
        with self._store.lock:
            found = self._store.get((class_name, id)) is not None
            self._store.records.pop((class_name, id), None)
            return found

    async def list_ids(
        self, class_name: str, *, limit: int, after: UUID | None = None
    ) -> list[UUID]:
        """Ids newest first (by ``created_at``, then id), after the record ``after``."""
        with self._store.lock:
            records = sorted(
                self._store.live(class_name),
                key=lambda r: (r.created_at, r.id),
                reverse=True,
            )
            if after is not None:
                anchor = self._store.get((class_name, after))
                if anchor is None:
                    return []
                cursor = (anchor.created_at, anchor.id)
                records = [r for r in records if (r.created_at, r.id) < cursor]
            return [r.id for r in records[:limit]]

    async def count(self, class_name: str) -> int:
        """How many live records of ``class_name`` there are."""
        with self._store.lock:
            return len(self._store.live(class_name))
