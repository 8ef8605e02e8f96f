"""Closing the storage while other threads or tasks save and load: they end as they would have.

A close used to disconnect a backend under the operations holding it: SQLite's said "not
connected: call connect() first" (a method the user never calls), Redis's saves ended in
``OutcomeUnknownError``. A close now waits for the operations under way; new ones reconnect.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Annotated

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, Owned

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


@pytest.mark.parametrize(
    "storage_url",
    [
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
    indirect=True,
)
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
