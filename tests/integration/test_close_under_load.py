"""Closing the storage while other threads or tasks save and load: they end as they would have.

A close used to disconnect a backend under the operations holding it: SQLite's said "not
connected: call connect() first" (a method the user never calls), Redis's saves ended in
``OutcomeUnknownError``. A close now waits for the operations under way; new ones reconnect.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Annotated
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, Owned, StoredRecord
from pydantic_toast.backends.memory import MemoryBackend

# The stores whose connections a close cuts (memory://'s has none to cut; S3's reconnects slowly).
_ON_SERVERS = pytest.mark.parametrize(
    "storage_url",
    [
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
    indirect=True,
)
_ROUNDS = 40  # save-and-load rounds per worker
_HAMMERING = 3.0  # seconds of deletes under closes every 5 ms
_CLOSES = 8  # at most, while the workers run (each makes them connect again: S3's is slow)


def test_close_storage_lets_other_threads_operations_end(storage_url: str) -> None:
    """Four threads save and load while the main thread closes the sync API's connections
    every few milliseconds: no operation fails, and every record loads back as saved."""

    class Tally(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=storage_url)
        n: int

    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for n in range(_ROUNDS):
                reference = Tally(n=worker * 1000 + n).model_dump()
                assert Tally.model_validate(reference).n == worker * 1000 + n
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    closes = 0
    while any(thread.is_alive() for thread in threads) and closes < _CLOSES:
        time.sleep(0.01)
        pydantic_toast.close_storage()
        closes += 1
    for thread in threads:
        thread.join()
    assert failures == []
    assert closes >= 1


async def test_aclose_storage_lets_other_tasks_operations_end(storage_url: str) -> None:
    """The same with the async API: tasks save and load while another closes the loop's
    connections."""

    class Count(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=storage_url)
        n: int

    async def work(worker: int) -> None:
        for n in range(_ROUNDS):
            reference = await Count(n=worker * 1000 + n).asave()
            assert (await Count.aload(reference)).n == worker * 1000 + n

    workers = asyncio.gather(*(work(worker) for worker in range(4)))
    closes = 0
    while not workers.done() and closes < _CLOSES:
        await asyncio.sleep(0.01)
        await pydantic_toast.aclose_storage()
        closes += 1
    await workers  # raises the first failure
    assert closes >= 1


@_ON_SERVERS
def test_a_close_waits_for_every_step_of_a_delete_with_owned_children(storage_url: str) -> None:
    """A delete of a parent owning children reads the record, deletes it, then its children:
    several crossings. A close between two of them cut the rest on Redis ("not connected",
    children left behind as orphans); it now waits for the whole delete."""

    class Leaf(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=storage_url)
        n: int

    class Branch(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=storage_url)
        leaves: Annotated[list[Leaf], Owned] = []

    failures: list[BaseException] = []
    deadline = time.monotonic() + _HAMMERING

    def work() -> None:
        try:
            while time.monotonic() < deadline:
                branch = Branch(leaves=[Leaf(n=n) for n in range(3)])
                loaded = Branch.model_validate(branch.model_dump())
                pydantic_toast.delete(Branch, loaded, revision=loaded.external_revision)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        time.sleep(0.005)
        pydantic_toast.close_storage()
    for thread in threads:
        thread.join()
    assert failures == []
    assert pydantic_toast.count(Leaf) == 0


class _SlowStore(MemoryBackend):
    """A memory store whose writes take 0.3 s, and whose connect takes 1.5 s when asked."""

    connect_delay = 0.0

    async def connect(self) -> None:
        await asyncio.sleep(self.connect_delay)
        await super().connect()

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        await asyncio.sleep(0.3)
        return await super().save_records(records)


@_ON_SERVERS
async def test_a_close_waits_for_a_save_moving_from_its_offload_store_to_its_own(
    storage_url: str,
) -> None:
    """A save with an offloaded field uploads to the offload store, then writes the record:
    a close that found the record's store idle during the upload closed it under the write
    (Redis: OutcomeUnknownError, "not connected"). The close now waits until every store is
    idle at once."""
    pydantic_toast.register_backend("slowstore", _SlowStore)

    class Scan(ExternalBaseModel):
        model_config = ExternalConfigDict(
            storage=storage_url, offload=f"slowstore://{uuid4().hex}", offload_above=1024
        )
        blob: str

    scan = Scan(blob="y" * 5000)
    await scan.asave()  # both stores connected
    scan.blob = "z" * 5000

    async def close_during_the_upload() -> None:
        await asyncio.sleep(0.1)
        await pydantic_toast.aclose_storage()

    saved, _ = await asyncio.gather(scan.asave(), close_during_the_upload())
    assert (await Scan.aload(saved)).blob == "z" * 5000


async def test_an_operation_waiting_for_a_slow_connect_a_close_cancels_connects_again() -> None:
    """A close cancels a connect that takes more than a second; the operation waiting for it
    (not itself cancelled) connects again instead of raising CancelledError."""

    class SlowConnect(_SlowStore):
        connect_delay = 1.5

    pydantic_toast.register_backend("slowconnect", SlowConnect)

    class Note(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=f"slowconnect://{uuid4().hex}")
        title: str

    async def close_during_the_connect() -> None:
        await asyncio.sleep(0.2)
        await pydantic_toast.aclose_storage()

    saved, _ = await asyncio.gather(Note(title="a").asave(), close_during_the_connect())
    assert (await Note.aload(saved)).title == "a"
