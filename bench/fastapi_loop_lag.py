"""Loop stall during a 200-request burst against a slow store, with and without the integration.

    .venv/bin/python bench/fastapi_loop_lag.py [--repeat 5]

A probe task sleeps 1 ms in a loop and records how late it wakes (the event loop's stall).
The store is ``memory://`` with 5 ms of (async) latency per call. Routes:

- ``/toast/...``: ``install(app)``; a body with ``Ref[Item]`` (prefetched), ``loader()``,
  ``Expanded`` and an external response model saved by ``ToastRoute``;
- ``/toast/refs/{id}`` (kind ``response``): a loaded, unchanged external model as the response
  model (answered as its reference; change tracking means no write);
- ``/sync/...``: the sync API from ``async def`` routes (what the warning is about);
- ``/plain/...`` (kind ``baseline``): no storage library at all, an ``asyncio.sleep`` of the
  same latency and a plain model: the stall FastAPI itself shows for such a burst.

``LAG_STORE_LATENCY=0.05`` sets the store latency in seconds.

Runs are interleaved (toast, sync, toast, ...) and the median and range of the max stall are
printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Sequence
from typing import Annotated, Any

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


@app.get("/plain/items/{id}")
async def read_plain(id: str) -> PlainItem:
    await asyncio.sleep(LATENCY)
    return PlainItem(name=id)


@app.get("/sync/items/{id}")
async def read_sync(id: str) -> dict[str, str]:
    return {"name": Item.model_validate({"class_name": "Item", "id": id}).name}


@app.post("/sync/items")
async def create_sync(body: dict[str, str]) -> dict[str, str]:
    return Item(name=body["name"]).model_dump()


async def burst(client: httpx.AsyncClient, kind: str, reference: dict[str, str]) -> float:
    stalls: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append(time.perf_counter() - start - 0.001)

    task = asyncio.create_task(probe())
    if kind == "toast":
        calls = [
            client.get(f"/toast/items/{reference['id']}"),
            client.post("/toast/gifts", json={"item": reference}),
            client.post("/toast/items", json={"item": reference}),
            client.post("/toast/gifts", json={"item": reference}),
        ] * 50
    elif kind == "baseline":
        calls = [client.get(f"/plain/items/{reference['id']}")] * 200
    elif kind == "response":
        calls = [client.get(f"/toast/refs/{reference['id']}")] * 200
    else:
        calls = [
            client.get(f"/sync/items/{reference['id']}"),
            client.post("/sync/items", json={"name": "x"}),
        ] * 100
    responses = await asyncio.gather(*calls)
    done.set()
    await task
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    return max(stalls) * 1000


async def main(repeat: int) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        reference = await Item(name="gift").asave()
        results: dict[str, list[float]] = {"baseline": [], "toast": [], "response": [], "sync": []}
        for _ in range(repeat):
            for kind in results:
                results[kind].append(await burst(client, kind, reference))
    for kind, values in results.items():
        median = statistics.median(values)
        print(
            f"{kind:8}: max loop stall per 200-request burst, median {median:.1f} ms "
            f"[{min(values):.1f}-{max(values):.1f}] over {repeat} interleaved runs"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    asyncio.run(main(parser.parse_args().repeat))
