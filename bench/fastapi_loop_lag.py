"""Loop stall during a 200-request burst against a slow store, with and without the integration.

    .venv-bench/bin/python bench/fastapi_loop_lag.py [--repeat 9]

A probe task sleeps 1 ms in a loop and records how late it wakes: the longest wait is the
burst's *stall*. It is not all blocking: when 200 requests wake together, the loop runs 200
continuations in one pass, and the probe waits for all of them (FastAPI and the in-process
client alone show several ms). So each kind of burst runs next to a plain-FastAPI twin with the
same requests (methods, bodies, response shapes, store round trips as ``asyncio.sleep``), in
the same round, and the figure that belongs to the library is the *excess* over its twin,
round by round. The bench also times every callback the loop runs (a task step is one): the
longest *step* is what blocking means (one request holding the loop), whatever the burst.

The store is ``memory://`` with 5 ms of (async) latency per call. Kinds:

- ``toast`` (twin ``plain``): ``install(app)``; a body with ``Ref[Item]`` (prefetched),
  ``loader()``, ``Expanded`` and an external response model saved by ``ToastRoute``;
- ``response`` (twin ``plain-get``): a loaded, unchanged external model as the response
  model (answered as its reference; change tracking means no write);
- ``sync`` (twin ``plain``): the sync API from ``async def`` routes (what the warning is
  about): it blocks, the reason the figure is here.

``LAG_STORE_LATENCY=0.05`` sets the store latency in seconds. Kinds run round robin (the order
rotating); each figure is the median [min-max] over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple
from uuid import UUID, uuid4

import httpx
from fastapi import Depends, FastAPI
from pydantic import BaseModel

os.environ.setdefault("PYDANTIC_TOAST_BLOCKING_CALLS", "off")

from pydantic_toast import (
    Expanded,
    ExternalBaseModel,
    ExternalConfigDict,
    RecordKey,
    Ref,
    StoredRecord,
    register_backend,
)
from pydantic_toast.backends.memory import MemoryBackend
from pydantic_toast.fastapi import install, loader

LATENCY = float(os.environ.get("LAG_STORE_LATENCY", "0.005"))


class SlowBackend(MemoryBackend):
    """memory:// with 5 ms of network latency per call."""

    async def save_records(self, records: Sequence[StoredRecord]) -> Any:
        await asyncio.sleep(LATENCY)
        return await super().save_records(records)

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        await asyncio.sleep(LATENCY)
        return await super().load_records(keys)


register_backend("slow", SlowBackend)


class Item(ExternalBaseModel):
    name: str
    model_config = ExternalConfigDict(storage="slow://lag")


class Gift(BaseModel):
    item: Ref[Item]


app = FastAPI()
install(app)


@app.post("/toast/gifts")
async def gift(body: Gift) -> Expanded[Item]:
    return body.item


@app.get("/toast/items/{id}")
async def read(item: Annotated[Item, Depends(loader(Item))]) -> Expanded[Item]:
    return item


@app.get("/toast/refs/{id}")
async def read_reference(item: Annotated[Item, Depends(loader(Item))]) -> Item:
    return item  # unchanged: serialized as its reference without a write


@app.post("/toast/items")
async def create(body: Gift) -> Item:
    return Item(name=body.item.name + "!")  # saved by ToastRoute, awaited


class PlainItem(BaseModel):
    name: str


class PlainReference(BaseModel):
    class_name: str
    id: UUID


class PlainGift(BaseModel):
    item: PlainReference


@app.get("/plain/items/{id}")
async def read_plain(id: UUID) -> PlainItem:
    await asyncio.sleep(LATENCY)  # the load
    return PlainItem(name="gift")


@app.post("/plain/gifts")
async def gift_plain(body: PlainGift) -> PlainItem:
    await asyncio.sleep(LATENCY)  # the prefetch
    return PlainItem(name="gift")


@app.post("/plain/items")
async def create_plain(body: PlainGift) -> PlainReference:
    await asyncio.sleep(LATENCY)  # the prefetch
    await asyncio.sleep(LATENCY)  # the save
    return PlainReference(class_name="Item", id=uuid4())


@app.get("/sync/items/{id}")
async def read_sync(id: str) -> dict[str, str]:
    return {"name": Item.model_validate({"class_name": "Item", "id": id}).name}


@app.post("/sync/items")
async def create_sync(body: dict[str, str]) -> dict[str, str]:
    return Item(name=body["name"]).model_dump()


_SCHEDSTAT = os.open("/proc/thread-self/schedstat", os.O_RDONLY)  # the loop's (main) thread


def held() -> float:
    """Seconds of wall clock minus those the loop thread spent runnable but not running.

    On a shared machine the OS takes the CPU away in the middle of a step for tens of ms:
    that is no work of the program's. What is left counts both the CPU the thread used and
    the time it waited on its own (a blocking call): what holding the loop means.
    """
    while True:  # the clock and the counter read with no preemption between them
        preempted = os.pread(_SCHEDSTAT, 64, 0)
        now = time.perf_counter()
        if os.pread(_SCHEDSTAT, 64, 0) == preempted:
            return now - int(preempted.split()[1]) / 1e9  # ns waiting on a run queue


class StepClock:
    """Times every callback the event loop runs (each step of a task is one), by :func:`held`."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_name = ""
        self._run = asyncio.events.Handle._run

    def __enter__(self) -> StepClock:
        run, clock, cpu = self._run, self, held

        def timed(handle: asyncio.Handle) -> None:
            start = cpu()
            run(handle)
            took = cpu() - start
            if took > clock.longest:
                clock.longest, clock.longest_name = took, _name(handle)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.events.Handle._run = self._run  # type: ignore[method-assign]


def _name(handle: asyncio.Handle) -> str:
    task = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
    coro = getattr(task, "get_coro", lambda: None)()
    return getattr(coro, "__qualname__", None) or repr(handle._callback)[:60]  # type: ignore[attr-defined]


def requests(client: httpx.AsyncClient, kind: str, reference: dict[str, str]) -> list[Any]:
    ref = reference["id"]
    # 200 distinct coroutines: gather() runs one coroutine object once, however often it is
    # listed (``[client.get(...)] * 200`` was a burst of one request).
    body = {"item": reference}
    if kind in ("toast", "plain"):
        prefix = f"/{kind}"
        return [
            call
            for _ in range(50)
            for call in (
                client.get(f"{prefix}/items/{ref}"),
                client.post(f"{prefix}/gifts", json=body),
                client.post(f"{prefix}/items", json=body),
                client.post(f"{prefix}/gifts", json=body),
            )
        ]
    if kind == "response":
        return [client.get(f"/toast/refs/{ref}") for _ in range(200)]
    if kind == "plain-get":
        return [client.get(f"/plain/items/{ref}") for _ in range(200)]
    return [
        call
        for _ in range(100)
        for call in (
            client.get(f"/sync/items/{ref}"),
            client.post("/sync/items", json={"name": "x"}),
        )
    ]


TWINS = {"toast": "plain", "response": "plain-get", "sync": "plain"}


class Burst(NamedTuple):
    """One burst's figures, in ms."""

    stall: float  # the probe's longest wait past its 1 ms, wall clock
    held_stall: float  # the same, less the time the OS had the thread preempted
    step: float  # the longest single callback, less preemption
    step_in: str  # the task it belonged to


async def burst(client: httpx.AsyncClient, kind: str, reference: dict[str, str]) -> Burst:
    """One 200-request burst, the probe running beside it."""
    stalls: list[tuple[float, float]] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            start, start_held = time.perf_counter(), held()
            await asyncio.sleep(0.001)
            stalls.append((time.perf_counter() - start - 0.001, held() - start_held - 0.001))

    task = asyncio.create_task(probe())
    with StepClock() as clock:
        # Coroutines, not yet started: build them inside the clock (httpx starts nothing
        # before they are awaited).
        responses = await asyncio.gather(*requests(client, kind, reference))
        done.set()
        await task
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    return Burst(
        max(wall for wall, _ in stalls) * 1000,
        max(own for _, own in stalls) * 1000,
        clock.longest * 1000,
        clock.longest_name,
    )


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):5.1f} [{min(values):.1f}-{max(values):.1f}]"


async def main(repeat: int) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        reference = await Item(name="gift").asave()
        kinds = ["plain", "toast", "plain-get", "response", "sync"]
        for kind in kinds:  # warm-up: first requests build caches, not measured
            await burst(client, kind, reference)
        # What a long-running server does after start-up: the start-up's objects out of the
        # collector's way (a full collection over them took 50 ms steps in any kind of burst).
        gc.collect()
        gc.freeze()
        runs: dict[str, list[Burst]] = {kind: [] for kind in kinds}
        loads = [os.getloadavg()[0]]
        for round_ in range(repeat):
            start = round_ % len(kinds)  # each kind in every position: no order effect
            for kind in kinds[start:] + kinds[:start]:
                runs[kind].append(await burst(client, kind, reference))
            loads.append(os.getloadavg()[0])
    print(
        f"200-request bursts, store latency {LATENCY * 1000:.0f} ms, {repeat} rounds round robin, "
        f"median [min-max] in ms; load average {min(loads):.1f}-{max(loads):.1f}\n"
    )
    print(
        "| kind | max stall (wall) | excess over twin | max stall less preemption "
        "| excess over twin | longest step less preemption | longest steps in |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind in kinds:
        twin = TWINS.get(kind)

        def column(name: str, kind: str = kind) -> list[float]:
            return [getattr(run, name) for run in runs[kind]]

        def excess(name: str, kind: str = kind, twin: str | None = twin) -> str:
            if twin is None:
                return "-"
            return spread([a - b for a, b in zip(column(name), column(name, twin), strict=True)])

        where = ", ".join(sorted({run.step_in for run in runs[kind]}))[:60]
        print(
            f"| {kind} | {spread(column('stall'))} | {excess('stall')} "
            f"| {spread(column('held_stall'))} | {excess('held_stall')} "
            f"| {spread(column('step'))} | {where} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=9)
    asyncio.run(main(parser.parse_args().repeat))
