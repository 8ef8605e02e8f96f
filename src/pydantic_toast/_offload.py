"""TOAST-style tiering: large payloads in an object store, the record keeping a pointer.

A model with ``offload="s3://bucket/prefix"`` stores each record whose stored bytes (after
compression, if any) reach ``offload_above`` in that store, as the record
``(f"{class_name}.payloads", fresh uuid)``; its own store keeps a ``$toast`` envelope with the
pointer, the payload's size and its SHA-256::

    {"$toast": {"offloaded": {"class_name": "Report.payloads", "id": "...", "key": "2026-12"},
                "size": ..., "sha256": "..."}}

(``key``: the id of the key the payload is encrypted with, ``null`` when it is not; pointers
written before it was recorded lack it.)

A write uploads the new payload first, then writes the record (with its revision check), then
deletes the payload the record pointed to before; a failed record write deletes the new payload
again. So the record never points at a missing payload, and a payload is orphaned only when a
process dies between the two writes or when last-write-wins writers race. Each save of such a
model reads the stored record first (one more round trip) to learn the old pointer. A load
follows the pointer and checks size and SHA-256; a delete removes the record, then its payload.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

from pydantic_toast._codecs import (
    CodecSettings,
    check_offloaded,
    decode_record,
    offload_pointer,
    pointer_of,
)
from pydantic_toast._exceptions import ExternalStorageError
from pydantic_toast._records import RecordKey, StoredRecord
from pydantic_toast.backends.base import Capability
from pydantic_toast.runtime.transaction import after_commit, outside

if TYPE_CHECKING:
    from pydantic_toast._url import StorageURL
    from pydantic_toast.runtime.boundary import Connected
    from pydantic_toast.runtime.storage import Storage

_LEFT = "an offloaded payload"

__all__ = ["Offloads", "fetch_offloaded", "load_offloaded", "payload_class"]


def payload_class(class_name: str) -> str:
    """The class name payloads of ``class_name`` are stored under in the offload store."""
    return f"{class_name}.payloads"


@dataclass(slots=True)
class _Move:
    key: RecordKey
    url: StorageURL
    class_name: str
    old: UUID | None
    new: UUID | None


class Offloads:
    """The payload moves of one store's batch: upload before, clean up after."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.moves: list[_Move] = []

    async def prepare(
        self,
        backend: Connected,
        stored: list[StoredRecord],
        codecs: Sequence[CodecSettings | None],
    ) -> None:
        """Upload the payloads of ``stored`` that go out of line; point the records at them."""
        indexes = [i for i, codec in enumerate(codecs) if codec and codec.offload is not None]
        if not indexes:
            return
        current = await backend.load_records([stored[i].key for i in indexes])
        for index, old in zip(indexes, current, strict=True):
            codec = codecs[index]
            assert codec is not None
            assert codec.offload is not None
            record = stored[index]
            pointer = None if old is None else pointer_of(old)
            move = _Move(
                record.key,
                codec.offload,
                payload_class(record.class_name),
                None if pointer is None else pointer[1],
                None,
            )
            if len(record.data) >= codec.offload_above:
                move.new, uploaded = uuid4(), datetime.now(UTC)
                target = await self.storage.connected(codec.offload)
                payload = replace(
                    record,
                    class_name=move.class_name,
                    id=move.new,
                    created_at=uploaded,  # the upload time: orphan scans check it
                    updated_at=uploaded,
                    ttl=record.ttl,  # the offload store expires too (checked at definition)
                    revision=0 if Capability.REVISIONS in target.capabilities else None,
                )
                await target.save_records([payload])
                key = None if codec.encryption is None else codec.encryption.current
                stored[index] = offload_pointer(record, move.class_name, move.new, record.data, key)
            self.moves.append(move)

    async def written(self) -> None:
        """The records are written: delete the payloads they no longer point to."""
        await self._delete(
            [(m.url, m.class_name, m.old) for m in self.moves if m.old != m.new], dropped=True
        )

    async def failed(self, written: Collection[RecordKey] = ()) -> None:
        """The write failed: delete the payloads uploaded for the records it did not write.

        ``written`` names the records a non-atomic batch wrote anyway (``ConcurrencyError``'s
        ``written``): they keep their new payloads, and their old ones go.
        """
        await self._delete(
            [(m.url, m.class_name, m.new) for m in self.moves if m.key not in written]
        )
        kept = [m for m in self.moves if m.key in written and m.old != m.new]
        await self._delete([(m.url, m.class_name, m.old) for m in kept], dropped=True)

    async def _delete(
        self, targets: list[tuple[StorageURL, str, UUID | None]], *, dropped: bool = False
    ) -> None:
        """Delete payloads; ``dropped``: those that written records no longer point to, which
        wait for the commit inside :func:`~pydantic_toast.transaction` (see
        :func:`delete_offloaded`)."""

        async def one(url: StorageURL, class_name: str, id: UUID) -> None:
            with contextlib.suppress(ExternalStorageError):  # an orphan at worst
                target = await self.storage.connected(url)
                if dropped and outside(target.backend):
                    after_commit(lambda: target.delete(id, class_name), left=_LEFT)
                    return
                await target.delete(id, class_name)

        await asyncio.gather(*(one(u, c, i) for u, c, i in targets if i is not None))


async def load_offloaded(
    storage: Storage, record: StoredRecord, codec: CodecSettings | None
) -> StoredRecord:
    """``record`` decoded: its offloaded payload fetched and checked, then decompressed."""
    return decode_record(await fetch_offloaded(storage, record, codec), codec)


async def fetch_offloaded(
    storage: Storage, record: StoredRecord, codec: CodecSettings | None
) -> StoredRecord:
    """``record`` with its offloaded payload in place (checked, still encoded), or itself."""
    pointer = pointer_of(record)
    if pointer is not None:
        class_name, id, size, digest = pointer
        if codec is None or codec.offload is None:
            from pydantic_toast._exceptions import StoredDataError

            raise StoredDataError(
                f"the stored {record.class_name} record {record.id} is offloaded, but the model "
                "reading it has no offload store: set offload= in its ExternalConfigDict to the "
                "store it was offloaded to",
                class_name=record.class_name,
                id=record.id,
            )
        target = await storage.connected(codec.offload)
        (payload,) = await target.load_records([(class_name, id)])
        record = check_offloaded(
            record,
            None if payload is None else payload.data,
            size,
            digest,
        )
    return record


async def delete_offloaded(storage: Storage, record: StoredRecord, codec: CodecSettings) -> None:
    """Delete the payload ``record`` points to, if it is offloaded.

    Inside :func:`~pydantic_toast.transaction`, a payload on a store outside it is deleted
    once the transaction commits, never if it rolls back: deleted at once, a rollback restored
    a record pointing at a missing payload, which no load could read.
    """
    pointer = pointer_of(record)
    if pointer is not None and codec.offload is not None:
        target = await storage.connected(codec.offload)
        if outside(target.backend):
            class_name, id = pointer[0], pointer[1]
            after_commit(lambda: target.delete(id, class_name), left=_LEFT)
            return
        await target.delete(pointer[1], pointer[0])
