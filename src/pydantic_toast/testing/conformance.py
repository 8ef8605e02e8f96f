"""The backend conformance suite: what every storage backend must do, as pytest tests.

A backend author subclasses :class:`BackendConformance` in a test module and provides the
``storage_url`` fixture: a URL of a fresh, empty store of their backend (register the backend
first). Every test then runs against it::

    import pytest
    from pydantic_toast import register_backend
    from pydantic_toast.testing.conformance import BackendConformance

    class TestFileBackend(BackendConformance):
        @pytest.fixture
        def storage_url(self, tmp_path):
            register_backend("file", FileBackend)
            return f"file://{tmp_path}"

The suite checks the required behaviour (records round-trip exactly, updates keep the id and
``created_at``, a missing record is ``None``, classes stay apart, concurrent writers do not
corrupt anything) and each optional capability the backend declares in
:attr:`~pydantic_toast.StorageBackend.capabilities` (batches, delete, listing newest first with
a stable keyset, count, expiry). A capability that is not declared must be refused with
:class:`~pydantic_toast.StorageUsageError`, never half-done. The built-in backends pass it in
pydantic-toast's own CI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import string
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest

from pydantic_toast._config import ExternalConfigDict
from pydantic_toast._exceptions import (
    ConcurrencyError,
    ExternalStorageError,
    RecordNotFoundError,
    StorageConfigurationError,
    StorageUsageError,
    StorageValidationError,
)
from pydantic_toast._model import ExternalBaseModel
from pydantic_toast._records import ClassKeys, PageCursor, StoredRecord
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.base import Capability, StorageBackend, checks_created_at_on_delete
from pydantic_toast.runtime.boundary import Connected
from pydantic_toast.runtime.storage import Storage, current_storage
from pydantic_toast.testing import isolated_storage

__all__ = ["BackendConformance", "ConformanceItem"]

_EXACT_VALUES: dict[str, object] = {
    "text": "tea ☕ \U0001f375 \\ \" ' \n\t end",
    "integer": -(2**63),
    "big": 10**30,
    "fraction": 0.1,
    "tiny": 5e-324,
    "flag": True,
    "nothing": None,
    "items": [1, "two", [3.5], {"four": 4}],
    "mapping": {"a": 1, "b": [True, None]},
}

_ALPHANUMERIC = string.ascii_letters + string.digits


class ConformanceItem(ExternalBaseModel):
    """The fields of the suite's model classes (each test makes a concrete subclass)."""

    __abstract__ = True
    text: str
    number: int = 0
    tags: list[str] = []


def _record(class_name: str, id: UUID, data: bytes, *, created: datetime) -> StoredRecord:
    return StoredRecord(
        class_name=class_name,
        id=id,
        data=data,
        schema_version=1,
        created_at=created,
        updated_at=created,
    )


class BackendConformance:
    """The conformance tests; subclass it and provide a ``storage_url`` fixture."""

    @pytest.fixture
    def storage_url(self) -> str:
        """A URL of a fresh, empty store of the backend under test (override this)."""
        raise NotImplementedError("provide a storage_url fixture in your subclass")

    @pytest.fixture
    def storage(self, storage_url: str) -> Iterator[Storage]:
        """An isolated storage for the test."""
        with isolated_storage() as storage:
            yield storage

    @pytest.fixture
    def class_name(self) -> str:
        """A class name no other test uses."""
        return f"Conformance{uuid4().hex}"

    # -- helpers ------------------------------------------------------------------------------

    def run(self, storage: Storage, url: str, job: object) -> object:
        """Run ``job(backend)`` on a fresh event loop against the connected backend."""

        async def main() -> object:
            backend = await storage.connected(StorageURL.parse(url))
            try:
                return await job(backend)  # type: ignore[operator]
            finally:
                await storage.aclose()

        return asyncio.run(main())

    def model(self, storage_url: str, class_name: str, **config: object) -> type[ConformanceItem]:
        """A model class with a few field types, stored as ``class_name``.

        On a backend without :attr:`Capability.REVISIONS` the model is last-write-wins (the
        only setting such a backend accepts).
        """
        backend_class = current_storage().registry.class_for(StorageURL.parse(storage_url).scheme)
        if Capability.REVISIONS not in backend_class.capabilities:
            config.setdefault("concurrency", "last-write-wins")

        class Item(ConformanceItem):
            model_config = ExternalConfigDict(
                storage=storage_url,
                external_name=class_name,
                **config,  # type: ignore[typeddict-item]
            )

        return Item

    # -- required behaviour --------------------------------------------------------------------

    def test_model_round_trips(self, storage: Storage, storage_url: str, class_name: str) -> None:
        """A model dumped to a reference loads back equal, sync and async."""
        item_class = self.model(storage_url, class_name)
        item = item_class(text="tea", number=2, tags=["a", "b"])
        reference = item.model_dump()
        assert reference == {"class_name": class_name, "id": str(item.external_id)}
        assert item_class.model_validate(reference) == item

        async def async_round_trip() -> ConformanceItem:
            other = item_class(text="coffee")
            return await item_class.aload(await other.asave())

        assert asyncio.run(async_round_trip()) == item_class(text="coffee")

    def test_records_come_back_exactly(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """The JSON data, schema version and timestamps of a record come back as written."""
        import json

        data = json.dumps(_EXACT_VALUES).encode()
        created = datetime(2024, 2, 29, 12, 30, 15, 123456, tzinfo=UTC)
        # Not 1: a store that drops the version (and gives back 1) would feed every record of
        # a bumped schema_version to migrate_stored_data as an old one.
        record = dataclasses.replace(
            _record(class_name, uuid4(), data, created=created), schema_version=3
        )

        async def job(backend: Connected) -> StoredRecord | None:
            await backend.save_records([record])
            (loaded,) = await backend.load_records([record.key])
            return loaded

        loaded = self.run(storage, storage_url, job)
        assert isinstance(loaded, StoredRecord)
        assert json.loads(loaded.data) == _EXACT_VALUES
        assert (loaded.class_name, loaded.id, loaded.schema_version) == (class_name, record.id, 3)
        assert loaded.created_at == created
        assert loaded.created_at.utcoffset() is not None

    def test_edge_timestamps_come_back_exactly_or_are_refused(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """The first and last microsecond every store keeps come back exactly; a naive time,
        or one at or past either end (PostgreSQL's driver writes those as infinities), is
        refused with StorageValidationError before anything of its batch is written."""
        first = datetime.min.replace(tzinfo=UTC) + timedelta(microseconds=1)
        last = datetime.max.replace(tzinfo=UTC) - timedelta(microseconds=1)
        kept = [_record(class_name, uuid4(), b"{}", created=moment) for moment in (first, last)]
        west = timezone(timedelta(hours=-2))  # its UTC form of datetime.max is in year 10000
        refused = [
            datetime.max.replace(tzinfo=UTC),
            datetime.min.replace(tzinfo=UTC),
            datetime.max.replace(tzinfo=west),
            datetime(2024, 1, 1, 12, 0),  # naive
        ]

        async def job(backend: Connected) -> tuple[list[StoredRecord | None], list[str]]:
            await backend.save_records(kept)
            refusals: list[str] = []
            for moment in refused:
                good = _record(class_name, uuid4(), b"{}", created=datetime.now(UTC))
                bad = _record(class_name, uuid4(), b"{}", created=moment)
                try:
                    await backend.save_records([good, bad])
                except StorageValidationError:
                    (left,) = await backend.load_records([good.key])
                    refusals.append("refused" if left is None else "half written")
                else:
                    refusals.append(f"accepted {moment!r}")
            return await backend.load_records([r.key for r in kept]), refusals

        result = self.run(storage, storage_url, job)
        assert isinstance(result, tuple)
        loaded, refusals = result
        assert [None if r is None else r.created_at for r in loaded] == [first, last]
        assert refusals == ["refused"] * len(refused)

    def test_a_record_twice_in_one_batch_is_refused(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """A batch holding one record twice is refused with StorageValidationError before any
        of it is written: which write would win, and at which revision, is ambiguous."""
        created = datetime.now(UTC)
        other = _record(class_name, uuid4(), b'{"n":0}', created=created)
        first = _record(class_name, uuid4(), b'{"n":1}', created=created)
        again = dataclasses.replace(first, data=b'{"n":2}')

        async def job(backend: Connected) -> list[StoredRecord | None]:
            with pytest.raises(StorageValidationError, match="twice"):
                await backend.save_records([first, other, again])
            return await backend.load_records([first.key, other.key])

        assert self.run(storage, storage_url, job) == [None, None]

    def test_large_records_come_back_whole(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """A 2 MiB record, and a batch of four of 300 KiB, come back byte for byte.

        Stores cap what one value, statement or call may carry (a column type, a request
        size): a record or a batch past the cap must be split or refused, never cut short.
        """
        import json

        def big(n: int, size: int) -> StoredRecord:
            text = (_ALPHANUMERIC * (size // len(_ALPHANUMERIC) + 1))[n : n + size]
            data = json.dumps({"n": n, "text": text}).encode()
            return _record(class_name, uuid4(), data, created=datetime.now(UTC))

        alone = big(0, 2 * 1024 * 1024)
        batch = [big(n, 300 * 1024) for n in range(1, 5)]

        async def job(backend: Connected) -> list[StoredRecord | None]:
            await backend.save_records([alone])
            await backend.save_records(batch)
            return await backend.load_records([r.key for r in [alone, *batch]])

        loaded = self.run(storage, storage_url, job)
        assert isinstance(loaded, list)
        for written, read in zip([alone, *batch], loaded, strict=True):
            assert read is not None, "a large record was not stored"
            assert json.loads(read.data) == json.loads(written.data), "a large record changed"

    def test_update_keeps_id_and_created_at(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """Writing a record again replaces its data, schema version and updated_at, never its
        created_at."""
        first = datetime(2024, 1, 1, tzinfo=UTC)
        record = _record(class_name, uuid4(), b'{"v":1}', created=first)
        later = StoredRecord(
            class_name=class_name,
            id=record.id,
            data=b'{"v":2}',
            schema_version=2,  # written by a model whose schema_version was bumped
            created_at=first + timedelta(days=1),  # a writer that never saw the record
            updated_at=first + timedelta(days=2),
        )

        async def job(backend: Connected) -> StoredRecord | None:
            await backend.save_records([record])
            await backend.save_records([later])
            (loaded,) = await backend.load_records([record.key])
            return loaded

        loaded = self.run(storage, storage_url, job)
        assert isinstance(loaded, StoredRecord)
        assert loaded.data.replace(b" ", b"") == b'{"v":2}'
        assert loaded.created_at == first
        assert loaded.updated_at == first + timedelta(days=2)
        assert loaded.schema_version == 2

    def test_missing_record_is_none_and_a_not_found_error(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """Loading an id that was never written gives None; the model API raises not-found."""

        async def job(backend: Connected) -> list[StoredRecord | None]:
            return await backend.load_records([(class_name, uuid4())])

        assert self.run(storage, storage_url, job) == [None]
        item_class = self.model(storage_url, class_name)
        with pytest.raises(RecordNotFoundError):
            item_class.model_validate({"class_name": class_name, "id": str(uuid4())})

    def test_classes_stay_apart(self, storage: Storage, storage_url: str, class_name: str) -> None:
        """The same id under two class names is two records; a declared delete removes one."""
        id = uuid4()
        created = datetime.now(UTC)
        one = _record(class_name, id, b'{"who":"one"}', created=created)
        two = _record(f"{class_name}Other", id, b'{"who":"two"}', created=created)
        deletes = Capability.DELETE in self._capabilities(storage, storage_url)

        async def job(backend: Connected) -> list[list[StoredRecord | None]]:
            await backend.save_records([one])
            await backend.save_records([two])
            loads = [await backend.load_records([one.key, two.key])]
            if deletes:
                await backend.delete(id, class_name)
                loads.append(await backend.load_records([one.key, two.key]))
            return loads

        loads = self.run(storage, storage_url, job)
        assert isinstance(loads, list)
        assert [r.data.replace(b" ", b"") for r in loads[0] if r is not None] == [
            b'{"who":"one"}',
            b'{"who":"two"}',
        ]
        if deletes:
            assert loads[1][0] is None
            assert loads[1][1] is not None, "deleting one class's record deleted another's"

    def test_concurrent_writers_leave_whole_records(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """Fifty concurrent saves of different records all land, each intact."""
        created = datetime.now(UTC)
        records = [
            _record(class_name, uuid4(), f'{{"n":{n}}}'.encode(), created=created)
            for n in range(50)
        ]

        async def job(backend: Connected) -> list[StoredRecord | None]:
            await asyncio.gather(*(backend.save_records([record]) for record in records))
            return await backend.load_records([record.key for record in records])

        loaded = self.run(storage, storage_url, job)
        assert isinstance(loaded, list)
        assert [r.data.replace(b" ", b"") if r else None for r in loaded] == [
            r.data for r in records
        ]

    def test_batches_keep_order(self, storage: Storage, storage_url: str, class_name: str) -> None:
        """save_records/load_records take many records and answer in the order asked."""
        created = datetime.now(UTC)
        records = [
            _record(class_name, uuid4(), f'{{"n":{n}}}'.encode(), created=created)
            for n in range(120)
        ]
        missing = (class_name, uuid4())

        async def job(backend: Connected) -> list[StoredRecord | None]:
            await backend.save_records(records)
            keys = [missing, *(record.key for record in reversed(records))]
            return await backend.load_records(keys)

        loaded = self.run(storage, storage_url, job)
        assert isinstance(loaded, list)
        assert loaded[0] is None
        assert [r.id for r in loaded[1:] if r is not None] == [r.id for r in reversed(records)]

    def test_batch_loads_take_the_keys_of_one_class_as_a_sequence(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """load_records answers keys given as a ``Sequence`` that is not a list.

        Loading many records of one class (``validate(list[Order], references)``, a page) hands
        the backend its keys as a ``ClassKeys`` sequence, not a list: list-only operations
        (``keys + [...]``, ``keys.copy()``, ``isinstance(keys, list)``) fail there, and only
        there.
        """
        created = datetime.now(UTC)
        records = [
            _record(class_name, uuid4(), f'{{"n":{n}}}'.encode(), created=created) for n in range(5)
        ]
        ids = [records[3].id, uuid4(), records[0].id, records[4].id]

        async def save(backend: Connected) -> None:
            await backend.save_records(records)

        async def load(backend: Connected) -> list[StoredRecord | None]:
            return await backend.load_records(ClassKeys(class_name, ids))

        self.run(storage, storage_url, save)
        try:
            loaded = self.run(storage, storage_url, load)
        except ExternalStorageError as exc:
            pytest.fail(
                "load_records failed on keys given as a Sequence that is not a list (the "
                f"library passes a ClassKeys for a batch of one class): {exc}; iterate over "
                "the keys, index or slice them, or copy them with list(keys)"
            )
        assert isinstance(loaded, list)
        assert [None if r is None else r.id for r in loaded] == [ids[0], None, *ids[2:]]

    # -- declared capabilities ------------------------------------------------------------------

    def test_delete(self, storage: Storage, storage_url: str, class_name: str) -> None:
        """A declared delete removes the record and says whether it existed; else it is refused."""
        record = _record(class_name, uuid4(), b'{"v":1}', created=datetime.now(UTC))

        async def job(backend: Connected) -> tuple[bool, bool, list[StoredRecord | None]]:
            await backend.save_records([record])
            existed = await backend.delete(record.id, class_name)
            again = await backend.delete(record.id, class_name)
            return existed, again, await backend.load_records([record.key])

        if Capability.DELETE not in self._capabilities(storage, storage_url):
            with pytest.raises(StorageUsageError):
                self.run(storage, storage_url, job)
            return
        assert self.run(storage, storage_url, job) == (True, False, [None])

    def test_listing_is_newest_first_with_a_stable_keyset(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """Pages come newest first by created_at then id (ties included), each record once,
        and only the records of the class listed."""
        base = datetime(2024, 5, 1, tzinfo=UTC)
        records = [
            _record(class_name, uuid4(), b"{}", created=base + timedelta(seconds=n // 3))
            for n in range(10)
        ]
        others = [
            _record(f"{class_name}Other", uuid4(), b"{}", created=base + timedelta(seconds=n))
            for n in range(4)
        ]
        expected = [r.id for r in sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)]

        async def job(backend: Connected) -> tuple[list[UUID], list[UUID]]:
            await backend.save_records(records)
            await backend.save_records(others)
            seen: list[UUID] = []
            after: PageCursor | None = None
            while True:
                page = await backend.list_records(class_name, limit=4, after=after)
                seen += [record.id for record in page]
                if len(page) < 4:
                    break
                after = PageCursor.of(page[-1])
            ids = await backend.list_ids(class_name, limit=7)
            last = {r.id: r for r in [*records, *others]}[ids[-1]]
            ids += await backend.list_ids(class_name, limit=7, after=PageCursor.of(last))
            return seen, ids

        if Capability.LIST not in self._capabilities(storage, storage_url):
            with pytest.raises(StorageUsageError):
                self.run(storage, storage_url, job)
            return
        assert self.run(storage, storage_url, job) == (expected, expected)

    def test_listed_records_are_the_stored_ones(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """A listed record is what a load gives: its latest data, schema version, times and
        revision (a page is turned into models, and saving them writes over the store)."""
        if Capability.LIST not in self._capabilities(storage, storage_url):
            return  # the listing tests check the refusal
        import json

        created = datetime(2024, 5, 1, tzinfo=UTC)
        records = [
            _record(class_name, uuid4(), b'{"n":%d}' % n, created=created + timedelta(seconds=n))
            for n in range(3)
        ]
        update = dataclasses.replace(
            records[1],
            data=b'{"n":1,"updated":true}',
            schema_version=2,
            updated_at=created + timedelta(days=1),
        )

        async def job(backend: Connected) -> tuple[list[StoredRecord], list[StoredRecord | None]]:
            await backend.save_records(records)
            await backend.save_records([update])
            listed = await backend.list_records(class_name, limit=10)
            return listed, await backend.load_records([record.key for record in listed])

        outcome = self.run(storage, storage_url, job)
        assert isinstance(outcome, tuple)

        def fields(record: StoredRecord | None) -> tuple[object, ...] | None:
            if record is None:
                return None
            return (
                record.class_name,
                record.id,
                json.loads(record.data),
                record.schema_version,
                record.created_at,
                record.updated_at,
                record.revision,
            )

        listed, loaded = outcome
        assert [fields(record) for record in listed] == [fields(record) for record in loaded]
        assert [record.id for record in listed] == [r.id for r in reversed(records)]
        assert fields(listed[1])[2:4] == ({"n": 1, "updated": True}, 2)  # type: ignore[index]

    def test_paging_visits_each_record_once_while_records_come_and_go(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """A cursor is a sort key: deleting its record, or others, or inserting, loses nothing.

        Between pages the worker deletes what it processed (the cursor's record included),
        one record not reached yet, and inserts a record newer than every page (never
        reached) and one older than every record (reached on a later page).
        """
        if Capability.LIST not in self._capabilities(storage, storage_url):
            self._assert_listing_refused(storage, storage_url, class_name)
            return
        base = datetime(2024, 5, 1, tzinfo=UTC)
        # Pairs of equal created_at: the cursor often sits inside a tie.
        records = [
            _record(class_name, uuid4(), b'{"n":%d}' % n, created=base + timedelta(seconds=n // 2))
            for n in range(24)
        ]

        async def job(backend: Connected) -> tuple[list[UUID], set[UUID], set[UUID]]:
            await backend.save_records(records)
            newest_first = sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)
            unvisited_deleted: set[UUID] = set()
            inserted_old: set[UUID] = set()
            seen: list[UUID] = []
            after: PageCursor | None = None
            turn = 0
            while True:
                page = await backend.list_records(class_name, limit=5, after=after)
                seen += [record.id for record in page]
                if len(page) < 5:
                    return seen, unvisited_deleted, inserted_old
                after = PageCursor.of(page[-1])
                for record in page:  # processed: deleted, the cursor's record included
                    assert await backend.delete(record.id, class_name)
                ahead = [r for r in newest_first if (r.created_at, r.id) < after]
                if len(ahead) > 3 and ahead[2].id not in unvisited_deleted:
                    await backend.delete(ahead[2].id, class_name)
                    unvisited_deleted.add(ahead[2].id)
                turn += 1
                new = _record(
                    class_name, uuid4(), b"{}", created=base + timedelta(days=1, seconds=turn)
                )
                old = _record(
                    class_name, uuid4(), b"{}", created=base - timedelta(days=1, seconds=turn)
                )
                await backend.save_records([new, old])
                inserted_old.add(old.id)

        outcome = self.run(storage, storage_url, job)
        assert isinstance(outcome, tuple)
        seen: list[UUID] = outcome[0]
        unvisited_deleted: set[UUID] = outcome[1]
        inserted_old: set[UUID] = outcome[2]
        assert len(seen) == len(set(seen)), "a record was visited twice"
        survivors = {r.id for r in records} - unvisited_deleted
        assert unvisited_deleted, "the test deleted records ahead of the cursor"
        assert set(seen) == survivors | inserted_old

    def test_a_page_is_one_backend_call(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """A backend that implements list_records reads a page with it alone.

        The backend's other record methods are counted while pages are read: a backend whose
        ``list_records`` is its own must not fall back to them (it reads in one call); one that
        inherits it costs exactly one ``list_ids`` and one ``load_records`` per page.
        """
        if Capability.LIST not in self._capabilities(storage, storage_url):
            self._assert_listing_refused(storage, storage_url, class_name)
            return
        created = datetime(2024, 5, 1, tzinfo=UTC)
        records = [
            _record(class_name, uuid4(), b"{}", created=created + timedelta(seconds=n))
            for n in range(6)
        ]
        calls: list[str] = []

        async def job(backend: Connected) -> list[int]:
            await backend.save_records(records)
            instance = backend.backend
            for name in ("load", "load_records", "list_ids", "count"):
                method = getattr(instance, name)

                def counted(
                    *args: object, _method: Any = method, _name: str = name, **kwargs: object
                ) -> Any:
                    calls.append(_name)
                    return _method(*args, **kwargs)

                setattr(instance, name, counted)
            first = await backend.list_records(class_name, limit=4)
            second = await backend.list_records(class_name, limit=4, after=PageCursor.of(first[-1]))
            return [len(first), len(second)]

        assert self.run(storage, storage_url, job) == [4, 2]
        backend_class = storage.registry.class_for(StorageURL.parse(storage_url).scheme)
        if backend_class.list_records is StorageBackend.list_records:
            assert sorted(calls) == ["list_ids", "list_ids", "load_records", "load_records"]
        else:
            assert calls == []

    def test_count(self, storage: Storage, storage_url: str, class_name: str) -> None:
        """A declared count tells the live records of one class only."""
        created = datetime.now(UTC)
        records = [_record(class_name, uuid4(), b"{}", created=created) for _ in range(7)]
        other = _record(f"{class_name}Other", uuid4(), b"{}", created=created)

        async def job(backend: Connected) -> int:
            await backend.save_records([*records, other])
            return await backend.count(class_name)

        if Capability.COUNT not in self._capabilities(storage, storage_url):
            with pytest.raises(StorageUsageError):
                self.run(storage, storage_url, job)
            return
        assert self.run(storage, storage_url, job) == 7

    def test_expiry(self, storage: Storage, storage_url: str, class_name: str) -> None:
        """With ttl declared, a record expires after its last write; a later write renews it."""
        if Capability.TTL not in self._capabilities(storage, storage_url):
            with pytest.raises(StorageConfigurationError, match="ttl"):
                self.model(storage_url, class_name, ttl=1)
            return
        # Margins of half a second: a loaded machine may be slow between the steps.
        item_class = self.model(storage_url, class_name, ttl=1.5)
        item = item_class(text="short-lived")
        reference = item.model_dump()
        time.sleep(0.5)
        item.text = "renewed"
        item.model_dump()
        time.sleep(1.0)  # past the first write's expiry, not the second's
        assert item_class.model_validate(reference).text == "renewed"
        time.sleep(1.0)
        with pytest.raises(RecordNotFoundError):
            item_class.model_validate(reference)

    def test_a_write_without_ttl_makes_a_record_permanent(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """With ttl declared, writing a record without one removes the expiry it had.

        A model whose ``ttl`` was dropped from its config writes its records so: they must
        not keep expiring.
        """
        if Capability.TTL not in self._capabilities(storage, storage_url):
            return  # test_expiry checks the refusal
        expiring = dataclasses.replace(
            _record(class_name, uuid4(), b'{"v":1}', created=datetime.now(UTC)), ttl=0.3
        )
        permanent = dataclasses.replace(expiring, data=b'{"v":2}', ttl=None)

        async def job(backend: Connected) -> list[StoredRecord | None]:
            await backend.save_records([expiring])
            await backend.save_records([permanent])
            await asyncio.sleep(0.6)
            return await backend.load_records([expiring.key])

        loaded = self.run(storage, storage_url, job)
        assert isinstance(loaded, list)
        assert loaded[0] is not None, "the record expired after a write without ttl"
        assert loaded[0].data.replace(b" ", b"") == b'{"v":2}'

    def test_delete_records(self, storage: Storage, storage_url: str, class_name: str) -> None:
        """A declared delete takes several records at once and tells which existed."""
        if Capability.DELETE not in self._capabilities(storage, storage_url):
            return  # test_delete checks the refusal
        created = datetime.now(UTC)
        first, second = (_record(class_name, uuid4(), b"{}", created=created) for _ in range(2))
        missing = (class_name, uuid4())

        async def job(backend: Connected) -> tuple[list[bool], list[StoredRecord | None]]:
            await backend.save_records([first, second])
            existed = await backend.delete_records([first.key, missing, second.key])
            return existed, await backend.load_records([first.key, second.key])

        outcome = self.run(storage, storage_url, job)
        assert outcome == ([True, False, True], [None, None])

    def test_expired_records_are_missing_everywhere(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """An expired record is missing to loads, listing, count and delete; its id is free again.

        A write of a new record over an expired one starts again at revision 1, and a write
        expecting the expired record's revision conflicts (it is gone).
        """
        if Capability.TTL not in self._capabilities(storage, storage_url):
            return  # test_expiry checks the refusal
        created = datetime.now(UTC)
        short = dataclasses.replace(
            _record(class_name, uuid4(), b'{"v":1}', created=created), ttl=0.3
        )
        lasting = _record(class_name, uuid4(), b'{"v":2}', created=created)
        capabilities = self._capabilities(storage, storage_url)

        async def job(backend: Connected) -> dict[str, object]:
            seen: dict[str, object] = {}
            await backend.save_records([short, lasting])
            await asyncio.sleep(0.5)
            seen["loaded"] = await backend.load_records([short.key, lasting.key])
            if Capability.LIST in capabilities:
                seen["listed"] = await backend.list_ids(class_name, limit=10)
            if Capability.COUNT in capabilities:
                seen["count"] = await backend.count(class_name)
            if Capability.REVISIONS in capabilities:
                later = datetime.now(UTC)
                try:
                    await backend.save_records(
                        [dataclasses.replace(short, revision=1, updated_at=later)]
                    )
                except ConcurrencyError as exc:
                    seen["stale"] = exc.current
                seen["again"] = await backend.save_records(
                    [dataclasses.replace(short, revision=0, ttl=None, updated_at=later)]
                )
                await asyncio.sleep(0.3)
                (again,) = await backend.load_records([short.key])
                seen["kept"] = None if again is None else again.revision
            if Capability.DELETE in capabilities:
                expiring = dataclasses.replace(
                    _record(class_name, uuid4(), b"{}", created=datetime.now(UTC)), ttl=0.2
                )
                await backend.save_records([expiring])
                await asyncio.sleep(0.4)
                seen["deleted"] = await backend.delete(expiring.id, class_name)
            return seen

        seen = self.run(storage, storage_url, job)
        assert isinstance(seen, dict)
        loaded = seen["loaded"]
        assert isinstance(loaded, list)
        assert loaded[0] is None
        assert loaded[1] is not None
        if "listed" in seen:
            assert seen["listed"] == [lasting.id]
        if "count" in seen:
            assert seen["count"] == 1
        if "again" in seen:
            assert seen["stale"] is None  # the expired record is gone: nothing to overwrite
            assert seen["again"] == [1]  # a new record in its place
            assert seen["kept"] == 1  # written without ttl: permanent
        if "deleted" in seen:
            assert seen["deleted"] is False  # an expired record was not there to delete

    def test_revisions(self, storage: Storage, storage_url: str, class_name: str) -> None:
        """With revisions declared, stale writes conflict and write nothing, batches included."""
        if Capability.REVISIONS not in self._capabilities(storage, storage_url):
            with pytest.raises(StorageConfigurationError, match="last-write-wins"):
                self.model(storage_url, class_name, concurrency="optimistic")
            return
        created = datetime.now(UTC)
        first = _record(class_name, uuid4(), b'{"v":1}', created=created)
        other = _record(class_name, uuid4(), b'{"v":1}', created=created)

        def expecting(record: StoredRecord, revision: int | None) -> StoredRecord:
            return dataclasses.replace(record, revision=revision)

        async def job(backend: Connected) -> list[object]:
            outcomes: list[object] = []
            outcomes.append(await backend.save_records([expecting(first, 0)]))
            outcomes.append(await backend.save_records([expecting(first, 1)]))
            # Stale writes conflict, whatever they carry: other data, or exactly the document
            # that landed (another writer who read the same revision and wrote the same data
            # in the same microsecond: taking it for this write would lose an update).
            late = dataclasses.replace(
                first, data=b'{"v":2}', updated_at=created + timedelta(seconds=1), revision=1
            )
            for stale in ([late], [expecting(other, 0), late], [expecting(first, 1)]):
                try:
                    await backend.save_records(stale)
                except ConcurrencyError as exc:
                    outcomes.append((exc.expected, exc.current))
            outcomes.append(await backend.load_records([first.key, other.key]))
            await backend.delete(first.id, class_name)
            try:
                await backend.save_records([expecting(first, 2)])
            except ConcurrencyError as exc:
                outcomes.append((exc.expected, exc.current))
            outcomes.append(await backend.save_records([expecting(first, None)]))
            return outcomes

        outcomes = self.run(storage, storage_url, job)
        assert isinstance(outcomes, list)
        assert outcomes[:5] == [[1], [2], (1, 2), (1, 2), (1, 2)]
        loaded = outcomes[5]
        assert isinstance(loaded, list)
        assert loaded[0] is not None
        assert loaded[0].revision == 2
        assert loaded[1] is None  # the batch with a conflict wrote nothing
        assert outcomes[6] == (2, None)  # a deleted record is not written back
        assert outcomes[7] == [1]  # written regardless: a new record

    def test_concurrent_writers_of_one_revision_conflict(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """Of concurrent writes expecting the same revision, exactly one lands.

        The revision check and the write are one atomic step: a store that checks, then yields
        (a network round trip, an ``await``), then writes lets every writer pass the check, and
        all but the last write are lost updates.
        """
        if Capability.REVISIONS not in self._capabilities(storage, storage_url):
            return  # test_revisions checks the refusal
        record = _record(class_name, uuid4(), b'{"writer":-1}', created=datetime.now(UTC))
        writers = 8

        async def job(backend: Connected) -> list[object]:
            rounds: list[object] = []
            for expected in (0, 1):  # a new record, then an update
                outcomes = await asyncio.gather(
                    *(
                        backend.save_records(
                            [
                                dataclasses.replace(
                                    record, data=b'{"writer":%d}' % n, revision=expected
                                )
                            ]
                        )
                        for n in range(writers)
                    ),
                    return_exceptions=True,
                )
                (loaded,) = await backend.load_records([record.key])
                rounds.append((outcomes, loaded))
            return rounds

        rounds = self.run(storage, storage_url, job)
        assert isinstance(rounds, list)
        for expected, (outcomes, loaded) in enumerate(rounds):
            landed = [n for n, outcome in enumerate(outcomes) if outcome == [expected + 1]]
            conflicts = [o for o in outcomes if isinstance(o, ConcurrencyError)]
            assert len(landed) == 1, f"{len(landed)} writes expecting revision {expected} landed"
            assert len(conflicts) == writers - 1, outcomes
            assert isinstance(loaded, StoredRecord)
            assert loaded.revision == expected + 1
            assert loaded.data.replace(b" ", b"") == b'{"writer":%d}' % landed[0]

    def test_writes_regardless_count_revisions_on(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """A write with ``revision=None`` (last write wins) over a record still adds one to its
        revision, so a writer holding the revision it replaced conflicts afterwards."""
        if Capability.REVISIONS not in self._capabilities(storage, storage_url):
            return  # test_revisions checks the refusal
        record = _record(class_name, uuid4(), b'{"v":1}', created=datetime.now(UTC))

        async def job(backend: Connected) -> list[object]:
            outcomes: list[object] = [
                await backend.save_records([dataclasses.replace(record, revision=0)]),
                await backend.save_records([dataclasses.replace(record, data=b'{"v":2}')]),
            ]
            try:  # a writer that read revision 1, before the write regardless
                await backend.save_records(
                    [dataclasses.replace(record, data=b'{"v":3}', revision=1)]
                )
            except ConcurrencyError as exc:
                outcomes.append((exc.expected, exc.current))
            (loaded,) = await backend.load_records([record.key])
            outcomes.append(None if loaded is None else (loaded.revision, loaded.data))
            return outcomes

        outcomes = self.run(storage, storage_url, job)
        assert isinstance(outcomes, list)
        assert outcomes[:3] == [[1], [2], (1, 2)]
        revision, data = outcomes[3]
        assert (revision, data.replace(b" ", b"")) == (2, b'{"v":2}')

    def test_a_record_created_again_is_another_record(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """A record deleted and written again (regardless, with a new ``created_at``) starts
        at revision 1 again: a write expecting revision 1 of the deleted one conflicts,
        batches included, and writes nothing; one carrying the new ``created_at`` lands, and
        a write regardless over it keeps that ``created_at``."""
        if Capability.REVISIONS not in self._capabilities(storage, storage_url):
            return  # test_revisions checks the refusal
        before = datetime.now(UTC).replace(microsecond=0)
        first = _record(class_name, uuid4(), b'{"v":1}', created=before)
        again = dataclasses.replace(first, created_at=before + timedelta(seconds=1), revision=None)
        stale = dataclasses.replace(
            first, data=b'{"v":3}', updated_at=before + timedelta(seconds=2), revision=1
        )
        # Enough new records to span several slots of a cluster (a two-phase batch there).
        others = [
            dataclasses.replace(
                _record(class_name, uuid4(), b'{"v":0}', created=before), revision=0
            )
            for _ in range(20)
        ]

        async def job(backend: Connected) -> list[object]:
            outcomes: list[object] = [await backend.save_records([first])]
            await backend.delete(first.id, class_name)
            outcomes.append(await backend.save_records([again]))
            for batch in ([stale], [*others, stale]):
                try:
                    await backend.save_records(batch)
                except ConcurrencyError as exc:
                    outcomes.append((exc.expected, exc.current))
            outcomes.append(await backend.load_records([first.key, others[0].key]))
            current = dataclasses.replace(stale, created_at=again.created_at)
            outcomes.append(await backend.save_records([current]))
            later = before + timedelta(seconds=3)
            forced = dataclasses.replace(again, created_at=later, updated_at=later)
            outcomes.append(await backend.save_records([forced]))
            outcomes.append(await backend.load_records([first.key]))
            return outcomes

        outcomes = self.run(storage, storage_url, job)
        assert isinstance(outcomes, list)
        assert outcomes[:4] == [[1], [1], (1, 1), (1, 1)]
        loaded, missing = outcomes[4]
        assert loaded is not None
        assert (loaded.revision, loaded.created_at, loaded.data.replace(b" ", b"")) == (
            1,
            again.created_at,
            b'{"v":1}',
        )
        assert missing is None  # the batch with a conflict wrote nothing
        assert outcomes[5:7] == [[2], [3]]
        (kept,) = outcomes[7]
        assert kept is not None
        assert (kept.revision, kept.created_at) == (3, again.created_at)

    def test_revision_checked_delete(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """``delete_checked`` deletes only at the given revision; a stale one deletes nothing."""
        record = _record(class_name, uuid4(), b'{"v":1}', created=datetime.now(UTC))
        capabilities = self._capabilities(storage, storage_url)

        async def job(backend: Connected) -> list[object]:
            outcomes: list[object] = []
            await backend.save_records([record])
            await backend.save_records([dataclasses.replace(record, revision=1)])  # now at 2
            try:
                await backend.delete_checked(record.id, class_name, 1)
            except ConcurrencyError as exc:
                outcomes.append((exc.expected, exc.current, "nothing was deleted" in str(exc)))
            kept = (await backend.load_records([record.key]))[0]
            outcomes.append(None if kept is None else kept.revision)
            if Capability.LIST in capabilities:
                listed = await backend.list_records(class_name, limit=10)
                outcomes.append([r.id for r in listed])
            outcomes.append(await backend.delete_checked(record.id, class_name, 2))
            outcomes.append(await backend.delete_checked(record.id, class_name, 2))
            outcomes.append(await backend.load_records([record.key]))
            if Capability.LIST in capabilities:
                outcomes.append(await backend.list_records(class_name, limit=10))
            return outcomes

        backend_class = storage.registry.class_for(StorageURL.parse(storage_url).scheme)
        if backend_class.delete_checked is StorageBackend.delete_checked:
            with pytest.raises(StorageUsageError, match="delete_checked"):
                self.run(storage, storage_url, job)
            return
        outcomes = self.run(storage, storage_url, job)
        expected: list[object] = [(1, 2, True), 2]
        if Capability.LIST in capabilities:
            expected.append([record.id])
        expected += [True, False, [None]]
        if Capability.LIST in capabilities:
            expected.append([])
        assert outcomes == expected

    def test_revision_checked_delete_leaves_a_re_created_record(
        self, storage: Storage, storage_url: str, class_name: str
    ) -> None:
        """``delete_checked`` given the ``created_at`` the caller read (any spelling of that
        instant) deletes that record, and leaves one deleted and created again since at the
        same revision (another ``created_at``), raising ``ConcurrencyError``.

        Skipped for a backend whose ``delete_checked`` takes no ``created_at`` (written before
        the parameter existed: its checked deletes compare the revision alone).
        """
        backend_class = storage.registry.class_for(StorageURL.parse(storage_url).scheme)
        if backend_class.delete_checked is StorageBackend.delete_checked:
            with pytest.raises(StorageUsageError, match="delete_checked"):
                self.run(storage, storage_url, self._delete_checked_once(class_name))
            return
        if not checks_created_at_on_delete(backend_class):
            pytest.skip("delete_checked takes no created_at: the revision alone decides")
        first = datetime.now(UTC) - timedelta(seconds=10)
        again = first + timedelta(seconds=1)
        record = _record(class_name, uuid4(), b'{"v":1}', created=first)
        recreated = _record(class_name, record.id, b'{"v":2}', created=again)
        elsewhere = timezone(timedelta(hours=2))

        async def job(backend: Connected) -> list[object]:
            outcomes: list[object] = []
            await backend.save_records([record])
            outcomes.append(
                await backend.delete_checked(record.id, class_name, 1, created_at=first)
            )
            await backend.save_records([recreated])  # back at revision 1
            try:
                await backend.delete_checked(record.id, class_name, 1, created_at=first)
            except ConcurrencyError as exc:
                outcomes.append((exc.expected, exc.current, "nothing was deleted" in str(exc)))
            kept = (await backend.load_records([record.key]))[0]
            outcomes.append(None if kept is None else (kept.revision, kept.created_at == again))
            outcomes.append(
                await backend.delete_checked(
                    record.id, class_name, 1, created_at=again.astimezone(elsewhere)
                )
            )
            outcomes.append(await backend.load_records([record.key]))
            return outcomes

        outcomes = self.run(storage, storage_url, job)
        assert outcomes == [True, (1, 1, True), (1, True), True, [None]]

    @staticmethod
    def _delete_checked_once(class_name: str) -> Callable[[Connected], Awaitable[object]]:
        async def job(backend: Connected) -> object:
            return await backend.delete_checked(
                uuid4(), class_name, 1, created_at=datetime.now(UTC)
            )

        return job

    def _assert_listing_refused(self, storage: Storage, storage_url: str, class_name: str) -> None:
        async def job(backend: Connected) -> object:
            return await backend.list_records(class_name, limit=1)

        with pytest.raises(StorageUsageError, match="list_records"):
            self.run(storage, storage_url, job)

    def _capabilities(self, storage: Storage, storage_url: str) -> frozenset[Capability]:
        return storage.registry.class_for(StorageURL.parse(storage_url).scheme).capabilities
