"""The conformance suite fails backends that break the interface in ways a model would notice.

Each broken backend below is a correct in-process store with one deliberate flaw; the suite's
test named with it must fail on that backend and pass on the correct one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest

import pydantic_toast
from pydantic_toast import (
    Capability,
    ConcurrencyError,
    ExternalBaseModel,
    ExternalConfigDict,
    PageCursor,
    RecordKey,
    RecordNotFoundError,
    StorageBackend,
    StorageOperationError,
    StoredRecord,
)
from pydantic_toast.testing import isolated_storage
from pydantic_toast.testing.conformance import BackendConformance


class DictBackend(StorageBackend):
    """Every capability on a dict shared by the instances of one URL; flaws switched on below."""

    capabilities = frozenset(Capability)
    stores: ClassVar[dict[str, dict[RecordKey, tuple[StoredRecord, float | None]]]] = {}
    first_versions: ClassVar[dict[str, dict[RecordKey, StoredRecord]]] = {}
    drops_schema_version = False
    yields_between_check_and_write = False
    restarts_revisions_when_forced = False
    keeps_expiry_without_ttl = False
    ignores_class_when_listing = False
    ignores_class_when_deleting = False
    cuts_data_at: int | None = None
    lists_first_versions = False
    needs_a_list_of_keys = False
    ignores_created_at_on_delete = False

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.store = self.stores.setdefault(url, {})
        self.firsts = self.first_versions.setdefault(url, {})

    async def connect(self) -> None:
        return

    async def disconnect(self) -> None:
        return

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        await self.save_records([StoredRecord.from_document(class_name, id, data)])

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        (record,) = await self.load_records([(class_name, id)])
        return None if record is None else record.to_document()

    def get(self, key: RecordKey) -> StoredRecord | None:
        entry = self.store.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= time.monotonic():
            del self.store[key]
            return None
        return None if entry is None else entry[0]

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        found = [self.get(record.key) for record in records]
        for record, old in zip(records, found, strict=True):
            current = None if old is None else old.revision
            if record.revision is not None and (current or 0) != record.revision:
                raise ConcurrencyError(
                    record.class_name, record.id, expected=record.revision, current=current
                )
        if self.yields_between_check_and_write:
            await asyncio.sleep(0)  # the check and the write are not atomic
        revisions = []
        for record, old in zip(records, found, strict=True):
            revision = 1 if old is None else (old.revision or 0) + 1
            if self.restarts_revisions_when_forced and record.revision is None:
                revision = 1
            created_at = record.created_at if old is None else old.created_at
            stored = dataclasses.replace(record, created_at=created_at, revision=revision, ttl=None)
            if self.cuts_data_at is not None and len(record.data) > self.cuts_data_at:
                stored = dataclasses.replace(stored, data=record.data[: self.cuts_data_at] + b'"}')
            expires = None if record.ttl is None else time.monotonic() + record.ttl
            if self.keeps_expiry_without_ttl and record.ttl is None and old is not None:
                expires = self.store[record.key][1]
            self.store[record.key] = (stored, expires)
            self.firsts.setdefault(record.key, stored)
            revisions.append(revision)
        return revisions

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        if self.needs_a_list_of_keys:
            keys = keys.copy()  # type: ignore[attr-defined]  # fine on the lists it was given
        records = [self.get(key) for key in keys]
        if self.drops_schema_version:
            return [r and dataclasses.replace(r, schema_version=1) for r in records]
        return records

    async def delete(self, id: UUID, class_name: str) -> bool:
        found = self.get((class_name, id)) is not None
        self.store.pop((class_name, id), None)
        if self.ignores_class_when_deleting:
            for key in [key for key in self.store if key[1] == id]:
                del self.store[key]
        return found

    async def delete_checked(
        self, id: UUID, class_name: str, revision: int, *, created_at: datetime | None = None
    ) -> bool:
        stored = self.get((class_name, id))
        if stored is None:
            return False
        recreated = created_at is not None and stored.created_at != created_at
        if stored.revision != revision or (recreated and not self.ignores_created_at_on_delete):
            raise ConcurrencyError(
                class_name, id, expected=revision, current=stored.revision, deleting=True
            )
        return await self.delete(id, class_name)

    async def list_records(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[StoredRecord]:
        listed = [k for k in self.store if self.ignores_class_when_listing or k[0] == class_name]
        live = [r for k in listed if (r := self.get(k))]
        live.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        page = [r for r in live if after is None or (r.created_at, r.id) < after][:limit]
        if self.lists_first_versions:  # as from an index that kept each record's first copy
            return [self.firsts[r.key] for r in page]
        return page

    async def count(self, class_name: str) -> int:
        return sum(1 for k in list(self.store) if k[0] == class_name and self.get(k))


class RevisionOnlyDeletes(DictBackend):
    """A backend written before ``delete_checked`` took ``created_at``: the revision decides."""

    async def delete_checked(self, id: UUID, class_name: str, revision: int) -> bool:  # type: ignore[override]
        return await super().delete_checked(id, class_name, revision)


def flawed(**flaws: object) -> type[DictBackend]:
    """A :class:`DictBackend` subclass with the given flaws switched on."""
    return type("FlawedBackend", (DictBackend,), flaws)


def run_suite_test(backend_class: type[StorageBackend], test_name: str) -> None:
    """Run one conformance test against ``backend_class``, as pytest would."""
    with isolated_storage() as storage:
        storage.registry.register("flawed", backend_class)
        getattr(BackendConformance(), test_name)(
            storage, f"flawed://store/{uuid4().hex}", f"Conformance{uuid4().hex}"
        )


FLAWS = [
    pytest.param(
        {"drops_schema_version": True}, "test_records_come_back_exactly", id="schema-version"
    ),
    pytest.param(
        {"drops_schema_version": True},
        "test_update_keeps_id_and_created_at",
        id="schema-version-update",
    ),
    pytest.param(
        {"yields_between_check_and_write": True},
        "test_concurrent_writers_of_one_revision_conflict",
        id="revision-check-not-atomic",
    ),
    pytest.param(
        {"restarts_revisions_when_forced": True},
        "test_writes_regardless_count_revisions_on",
        id="forced-write-restarts-revisions",
    ),
    pytest.param(
        {"keeps_expiry_without_ttl": True},
        "test_a_write_without_ttl_makes_a_record_permanent",
        id="expiry-kept-without-ttl",
    ),
    pytest.param(
        {"ignores_class_when_listing": True},
        "test_listing_is_newest_first_with_a_stable_keyset",
        id="listing-mixes-classes",
    ),
    pytest.param(
        {"ignores_class_when_deleting": True}, "test_classes_stay_apart", id="delete-all-classes"
    ),
    pytest.param(
        {"cuts_data_at": 65535}, "test_large_records_come_back_whole", id="cuts-large-records"
    ),
    pytest.param(
        {"lists_first_versions": True},
        "test_listed_records_are_the_stored_ones",
        id="lists-stale-records",
    ),
    pytest.param(
        {"ignores_created_at_on_delete": True},
        "test_revision_checked_delete_leaves_a_re_created_record",
        id="checked-delete-of-a-re-creation",
    ),
    pytest.param(
        {"needs_a_list_of_keys": True},
        "test_batch_loads_take_the_keys_of_one_class_as_a_sequence",
        id="keys-must-be-a-list",
    ),
]


@pytest.mark.parametrize(("flaws", "test_name"), FLAWS)
def test_the_suite_fails_a_flawed_backend(flaws: dict[str, object], test_name: str) -> None:
    """The conformance test named for the flaw fails on the backend that has it (an answer
    the boundary itself refuses fails it too: a page holding another class's records)."""
    with pytest.raises((AssertionError, pytest.fail.Exception, StorageOperationError)) as info:
        run_suite_test(flawed(**flaws), test_name)
    if isinstance(info.value, StorageOperationError):
        assert "check the backend with pydantic_toast.testing.conformance" in str(info.value)


@pytest.mark.parametrize("test_name", sorted({p.values[1] for p in FLAWS}))
def test_the_correct_backend_passes(test_name: object) -> None:
    """Without its flaws, the same backend passes each of those tests."""
    run_suite_test(DictBackend, str(test_name))


def test_a_backend_whose_checked_delete_takes_no_created_at_keeps_working() -> None:
    """A backend whose ``delete_checked`` predates ``created_at`` is called without it: a
    checked delete of a saved instance deletes at its revision (the revision alone decides,
    as before), a stale one raises, and the conformance test of the parameter is skipped."""
    with isolated_storage() as storage:
        storage.registry.register("revision-only", RevisionOnlyDeletes)

        class Note(ExternalBaseModel):
            text: str
            model_config = ExternalConfigDict(storage=f"revision-only://{uuid4().hex}")

        note = Note(text="a")
        note.model_dump()
        read = Note.model_validate(note.model_dump())
        note.text = "b"
        note.model_dump()
        with pytest.raises(ConcurrencyError):
            pydantic_toast.delete(Note, read, revision=read.external_revision)
        pydantic_toast.delete(Note, note, revision=note.external_revision)
        with pytest.raises(RecordNotFoundError):
            Note.model_validate(note.model_dump())
    with pytest.raises(pytest.skip.Exception, match="takes no created_at"):
        run_suite_test(
            RevisionOnlyDeletes, "test_revision_checked_delete_leaves_a_re_created_record"
        )
