"""The Storage object: isolation, registration, the weak name catalog, capabilities, URLs."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from typing import Any
from uuid import UUID, uuid4

import pytest

import pydantic_toast
from pydantic_toast import (
    Capability,
    ExternalBaseModel,
    ExternalConfigDict,
    RecordKey,
    Storage,
    StorageBackend,
    StorageConfigurationError,
    StoredRecord,
    current_storage,
    register_backend,
    unregister_backend,
)
from pydantic_toast._url import StorageURL, mask_url
from pydantic_toast.backends.memory import MemoryBackend, MemoryStore
from pydantic_toast.testing import isolated_storage, memory_records


def make_note(url: str, name: str = "Note") -> type[ExternalBaseModel]:
    lww = url.startswith("minimal://")  # a backend without revisions takes last-write-wins only

    class Note(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(
            storage=url, external_name=name, concurrency="last-write-wins" if lww else "optimistic"
        )

    return Note


def test_isolated_storages_keep_their_own_memory_stores(memory_url: str) -> None:
    """A record written inside one isolated storage is invisible outside it and in another."""
    note = make_note(memory_url)
    with isolated_storage():
        reference = note(text="inside").model_dump()
        assert [r.id for r in memory_records(memory_url)] == [UUID(reference["id"])]
    assert memory_records(memory_url) == []
    with isolated_storage(), pytest.raises(pydantic_toast.RecordNotFoundError):
        note.model_validate(reference)


async def test_async_with_storage_is_current_and_closed(memory_url: str) -> None:
    """`async with Storage()` makes it current for awaited calls, then restores the previous one."""
    note = make_note(memory_url)
    outer = current_storage()
    async with Storage() as storage:
        assert current_storage() is storage
        await note(text="a").asave()
        assert len(storage.memory_store(memory_url.split("://")[1])) == 1
    assert current_storage() is outer
    assert len(outer.memory_store(memory_url.split("://")[1])) == 0


def test_toast_storage_fixture_isolates(pytester: pytest.Pytester) -> None:
    """The pytest plugin's toast_storage fixture gives each test a fresh storage."""
    pytester.makeconftest('pytest_plugins = ["pydantic_toast.testing.pytest_plugin"]')
    pytester.makepyfile(
        """
        from pydantic_toast import ExternalBaseModel, ExternalConfigDict, current_storage
        from pydantic_toast.testing import memory_records

        class Note(ExternalBaseModel):
            text: str
            model_config = ExternalConfigDict(storage="memory://notes")

        def test_first(toast_storage):
            assert current_storage() is toast_storage
            Note(text="one").model_dump()
            assert len(memory_records("memory://notes")) == 1

        def test_second(toast_storage):
            Note(text="two").model_dump()
            assert len(memory_records("memory://notes")) == 1
        """
    )
    pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_register_and_unregister_act_on_the_current_storage(memory_url: str) -> None:
    """A backend registered inside an isolated storage does not leak out; unregister forgets."""

    class Plain(MemoryBackend):
        pass

    with isolated_storage():
        register_backend("plainmem", Plain)
        make_note("plainmem://x", "PlainNote")
        unregister_backend("plainmem")
        with pytest.raises(StorageConfigurationError, match="no storage backend"):
            make_note("plainmem://x", "Other")
    with pytest.raises(StorageConfigurationError, match="no storage backend"):
        make_note("plainmem://y", "Outside")
    with isolated_storage():
        unregister_backend("memory")  # a built-in, in this storage only
        with pytest.raises(StorageConfigurationError, match="'memory'"):
            make_note(memory_url, "Gone")
    make_note(memory_url, "Back")


def test_collected_classes_free_their_stored_name(memory_url: str) -> None:
    """Local classes that were garbage collected do not block a new class of the same name."""

    def define(tag: int) -> None:
        class User(ExternalBaseModel):  # a different qualified name on each call site
            name: str
            model_config = ExternalConfigDict(storage=memory_url)

        User.__qualname__ = f"Local{tag}.User"

    define(1)
    gc.collect()
    define(2)  # no "already stored under that name"


def test_one_store_two_spellings_is_refused(memory_url: str) -> None:
    """The same memory store reached with query options is the same store for names."""
    keep = make_note(memory_url, "Shared")
    with pytest.raises(StorageConfigurationError, match="already stored under that name"):

        class Intruder(ExternalBaseModel):
            text: str
            model_config = ExternalConfigDict(storage=f"{memory_url}?tag=x", external_name="Shared")

    assert keep is not None


class Minimal(StorageBackend):
    """Four methods only: no listing, no count, no delete."""

    records: dict[tuple[str, UUID], dict[str, Any]] = {}

    async def connect(self) -> None:
        return

    async def disconnect(self) -> None:
        return

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        self.records[(class_name, id)] = data

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        return self.records.get((class_name, id))


def test_capabilities_are_declared_or_inferred() -> None:
    """Built-ins declare their capabilities; a four-method backend has none beyond save/load."""
    assert Minimal.capabilities == frozenset()
    assert MemoryBackend.capabilities == frozenset(Capability)

    class Deleting(Minimal):
        async def delete(self, id: UUID, class_name: str) -> bool:
            return self.records.pop((class_name, id), None) is not None

    assert Deleting.capabilities == frozenset({Capability.DELETE})

    class Boastful(Minimal):
        capabilities = frozenset({Capability.COUNT})

    with pytest.raises(StorageConfigurationError, match=r"count \(implement count\)"):
        register_backend("boastful", Boastful)


def test_ttl_needs_a_backend_that_declares_it() -> None:
    """A model with ttl on a backend without Capability.TTL is refused at the class statement;
    the message names the capability and the built-in stores that expire records (it named
    only redis:// and memory://, though postgresql:// and sqlite:// expire them too)."""
    with isolated_storage():
        register_backend("minimal", Minimal)
        with pytest.raises(StorageConfigurationError, match="does not expire records") as info:

            class Expiring(ExternalBaseModel):
                x: int
                model_config = ExternalConfigDict(storage="minimal://", ttl=5)

    for named in ("Capability.TTL", "redis://", "postgresql://", "sqlite://", "memory://"):
        assert named in str(info.value)


def test_health_check_uses_only_declared_capabilities() -> None:
    """check_storage on a four-method backend connects without listing (no usage error)."""
    from pydantic_toast.fastapi import check_storage

    with isolated_storage():
        register_backend("minimal", Minimal)
        note = make_note("minimal://", "HealthNote")
        asyncio.run(check_storage(note))


class Down(MemoryBackend):
    """A store whose every read fails, to prove nobody reads it."""

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        raise ConnectionRefusedError("this store is down")


def test_loading_a_tree_queries_only_its_own_stores(memory_url: str) -> None:
    """Two classes share a stored name on different stores; loading one never reads the other."""
    with isolated_storage():
        register_backend("down", Down)

        class Part(ExternalBaseModel):
            label: str
            model_config = ExternalConfigDict(storage=memory_url, external_name="Part")

        class Machine(ExternalBaseModel):
            parts: list[Part]
            model_config = ExternalConfigDict(storage=memory_url)

        class OtherPart(ExternalBaseModel):  # same stored name, another (broken) store
            label: str
            model_config = ExternalConfigDict(storage="down://elsewhere", external_name="Part")

        machine = Machine(parts=[Part(label="a"), Part(label="b")])
        reference = machine.model_dump()
        assert Machine.model_validate(reference) == machine
        assert pydantic_toast.validate(list[Machine], [reference]) == [machine]
        with pytest.raises(pydantic_toast.StorageConnectionError):
            OtherPart.model_validate(Part(label="c").model_dump())


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://app:hunter2@db:5432/shop",
        "postgresql://app:hun/ter#2?x@db:5432/shop",
        "redis://:hunter2@cache:6379/0",
        "redis://cache:6379/0?password=hunter2",
        "postgres:hunter2@db/shop",
        "postgresql://app:hunter2@db:99999/shop",
        "postgresql://app@db/shop?sslpassword=hunter2&sslmode=require",
    ],
)
def test_urls_never_show_their_password(raw: str) -> None:
    """mask_url, StorageURL and configuration errors hide the password however it is written."""
    assert "hunter2" not in mask_url(raw)
    shown: str
    try:
        parsed = StorageURL.parse(raw)
    except StorageConfigurationError as exc:
        shown = str(exc)
    else:
        shown = f"{parsed} {parsed!r} {parsed.masked}"
        assert parsed.raw == raw
    assert "hunter2" not in shown


def test_model_config_and_settings_reprs_are_masked() -> None:
    """repr(model_config) and repr(__toast_settings__) show no password."""
    with isolated_storage():
        register_backend("minimal", Minimal)
        note = make_note("minimal://app:hunter2@host/x", "Masked")
        assert "hunter2" not in repr(note.model_config)
        assert "hunter2" not in repr(note.__toast_settings__)
        assert note.model_config["storage"] == "minimal://app:hunter2@host/x"  # type: ignore[typeddict-item]


def test_storage_repr_reads_no_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """repr() of a storage is cheap: it does not list the installed packages' entry points
    (5-9 ms), so a log line or a debugger showing it costs nothing."""
    import importlib.metadata

    def refuse(**_: object) -> None:
        raise AssertionError("repr() read the installed packages' metadata")

    with isolated_storage() as storage:
        monkeypatch.setattr(importlib.metadata, "entry_points", refuse)
        assert repr(storage) == "<Storage loops=0>"


def test_memory_store_is_inspectable_and_resettable(memory_url: str) -> None:
    """A MemoryStore lists its live records by class and can be cleared."""
    note = make_note(memory_url, "Inspect")
    note(text="a").model_dump()
    note(text="b").model_dump()
    store: MemoryStore = current_storage().memory_store(memory_url.split("://")[1])
    assert len(store) == 2
    assert {r.class_name for r in store.records("Inspect")} == {"Inspect"}
    store.clear()
    assert store.records() == []


def test_mapped_errors_are_logged_not_printed(tmp_path: Any) -> None:
    """A program without logging set up prints nothing for a handled storage error."""
    import subprocess
    import sys

    code = (
        "from pydantic_toast import ExternalBaseModel, ExternalConfigDict, ExternalStorageError\n"
        "class Note(ExternalBaseModel):\n"
        "    text: str\n"
        f"    model_config = ExternalConfigDict(storage='sqlite:///{tmp_path}/unmigrated.db')\n"
        "try:\n"
        "    Note(text='x').model_dump()\n"
        "except ExternalStorageError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "StorageSchemaError"
    assert done.stderr == ""


async def test_memory_pages_and_counts_follow_deletes_expiry_and_recreation() -> None:
    """memory:// keeps each class's keys in order: pages skip what was deleted or expired,
    a record deleted and written again under its old key is listed once, counts stay exact."""
    from datetime import UTC, datetime, timedelta

    from pydantic_toast._records import PageCursor, StoredRecord

    backend = MemoryBackend("memory://pages", store=MemoryStore())
    start = datetime(2026, 1, 1, tzinfo=UTC)
    made = [
        StoredRecord("Page", uuid4(), b"{}", 1, start + timedelta(seconds=i), start)
        for i in range(300)
    ]
    await backend.save_records(made)
    await backend.save_records([StoredRecord("Other", uuid4(), b"{}", 1, start, start)])
    for record in made[::2]:  # enough deletes to compact the key order at least once
        assert await backend.delete(record.id, "Page")
    again = made[10]  # deleted above, written again with the same created_at
    await backend.save_records([again])
    short_lived = StoredRecord("Page", uuid4(), b"{}", 1, start - timedelta(days=1), start, 0.05)
    await backend.save_records([short_lived])

    expected = sorted([*made[1::2], again], key=lambda r: (r.created_at, r.id), reverse=True)
    assert await backend.count("Page") == len(expected) + 1
    await asyncio.sleep(0.06)
    assert await backend.count("Page") == len(expected)
    listed, after = [], None
    while page := await backend.list_records("Page", limit=7, after=after):
        listed += page
        after = PageCursor.of(page[-1])
    assert [r.id for r in listed] == [r.id for r in expected]
    assert await backend.count("Other") == 1


async def test_memory_save_over_an_expired_record_writes_it_afresh() -> None:
    """A record past its ttl is gone for a save's revision check: expecting its old revision
    is a conflict that writes nothing, expecting none writes it anew (revision 1, its own
    created_at), and a batch with a conflict anywhere writes none of its records."""
    from datetime import UTC, datetime, timedelta

    backend = MemoryBackend("memory://expired", store=MemoryStore())
    start = datetime(2026, 1, 1, tzinfo=UTC)
    later = start + timedelta(days=1)
    id = uuid4()
    assert await backend.save_records([StoredRecord("Note", id, b"{}", 1, start, start, 0.05, 0)])
    await asyncio.sleep(0.06)
    stale = StoredRecord("Note", id, b'{"n": 1}', 1, later, later, None, 1)
    fresh = StoredRecord("Other", uuid4(), b"{}", 1, later, later, None, 0)
    with pytest.raises(pydantic_toast.ConcurrencyError):
        await backend.save_records([fresh, stale])
    assert await backend.load_records([("Note", id), ("Other", fresh.id)]) == [None, None]
    assert await backend.count("Other") == 0
    again = StoredRecord("Note", id, b'{"n": 2}', 1, later, later, None, 0)
    assert await backend.save_records([again]) == [1]
    [stored] = await backend.load_records([("Note", id)])
    assert stored is not None
    assert (stored.data, stored.created_at, stored.revision) == (b'{"n": 2}', later, 1)


@pytest.mark.parametrize("limit", [2.5, 2.0, True, "2", None, 0, -1, 1001, 10**9])
def test_a_page_limit_is_an_int_from_1_to_1000(memory_url: str, limit: Any) -> None:
    """A limit that is not an int from 1 to 1000 is refused as a usage error: a float was taken,
    and a page never equal to 2.5 records long ended the paging with records left."""
    note = make_note(memory_url)
    for n in range(3):
        note(text=str(n)).model_dump()
    with pytest.raises(pydantic_toast.StorageUsageError, match="limit must be an int from 1 to"):
        pydantic_toast.page(note, limit=limit)
    first = pydantic_toast.page(note, limit=2)
    assert len(first.items) == 2
    assert first.next_after is not None
    assert len(pydantic_toast.page(note, limit=2, after=first.next_after).items) == 1


def test_an_env_url_is_read_once_isolated_storage_does_not_reread_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As docs/testing.md says: set the variable before the first use, not per test."""
    variable = f"TOAST_TEST_URL_{uuid4().hex}"
    monkeypatch.setenv(variable, "memory://first")

    class EnvNote(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=f"env:{variable}")

    with isolated_storage():
        EnvNote(text="a").model_dump()
        assert len(memory_records("memory://first", "EnvNote")) == 1
    monkeypatch.setenv(variable, "memory://second")
    with isolated_storage():
        EnvNote(text="b").model_dump()
        assert memory_records("memory://second", "EnvNote") == []
        assert len(memory_records("memory://first", "EnvNote")) == 1


def test_the_async_api_outside_asyncio_says_so(memory_url: str) -> None:
    """A coroutine of the async API driven by another runner (trio drives coroutines with
    ``send``, as here) raises the library's error naming asyncio and the sync alternative, not
    asyncio's bare ``RuntimeError: no running event loop``."""

    class Runner(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url)
        v: int

    for coroutine in (
        Runner(v=1).asave(),
        Runner.aload(pydantic_toast.ExternalReference("Runner", uuid4())),
    ):
        with pytest.raises(
            pydantic_toast.StorageUsageError, match="async API runs on asyncio"
        ) as info:
            coroutine.send(None)
        assert "trio.to_thread.run_sync" in str(info.value)
        coroutine.close()
