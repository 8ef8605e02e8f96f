"""The loop-stall app: the integration's routes and plain-FastAPI twins, over a slow store.

``uvicorn tests.loop_lag_app:app`` (``bench/fastapi_loop_server.py``,
``tests/integration/test_loop_steps.py``), or in process (``bench/fastapi_loop_lag.py``).

- ``/toast/...``: an app with ``install(app)``: a body with ``Ref[Item]`` (prefetched),
  ``loader()``, ``Expanded``, an external response model saved by ``ToastRoute``, and an
  unchanged external response model (answered as its reference, no write);
- ``/plain/...``: the same requests on a separate plain FastAPI app (no integration), the
  store's round trips as ``asyncio.sleep``;
- ``/sync/...``: the sync API from ``async def`` routes, which blocks (the positive control);
- ``/_loop/...``: control routes: ``POST /_loop/seed`` saves an item and answers its
  reference, ``POST /_loop/start`` starts a :class:`~tests.loop_steps.LoopWatch` on the
  server's loop and ``POST /_loop/stop`` answers what it saw, ``POST /_loop/freeze`` moves
  what survives a full collection out of the collector's way, ``POST /_loop/objects`` counts
  what survives one; ``/health``.

The store is ``memory://`` with ``LOOP_LAG_LATENCY`` seconds (default 0.005) of async latency
per call, or the URL in ``LOOP_LAG_STORAGE`` (a migrated PostgreSQL database, say).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Sequence
from typing import Annotated, Any
from uuid import UUID, uuid4

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
from tests.loop_steps import LabelRequests, LoopWatch

LATENCY = float(os.environ.get("LOOP_LAG_LATENCY", "0.005"))
STORAGE = os.environ.get("LOOP_LAG_STORAGE") or "slow://lag"


class SlowBackend(MemoryBackend):
    """memory:// with ``LATENCY`` seconds of network latency per call."""

    async def save_records(self, records: Sequence[StoredRecord]) -> Any:
        await asyncio.sleep(LATENCY)
        return await super().save_records(records)

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        await asyncio.sleep(LATENCY)
        return await super().load_records(keys)


register_backend("slow", SlowBackend)


class Item(ExternalBaseModel):
    name: str
    model_config = ExternalConfigDict(storage=STORAGE)


class Gift(BaseModel):
    item: Ref[Item]


toast = FastAPI()
install(toast)


@toast.post("/toast/gifts")
async def gift(body: Gift) -> Expanded[Item]:
    return body.item


@toast.get("/toast/items/{id}")
async def read(item: Annotated[Item, Depends(loader(Item))]) -> Expanded[Item]:
    return item


@toast.get("/toast/refs/{id}")
async def read_reference(item: Annotated[Item, Depends(loader(Item))]) -> Item:
    return item  # unchanged: serialized as its reference without a write


@toast.post("/toast/items")
async def create(body: Gift) -> Item:
    return Item(name=body.item.name + "!")  # saved by ToastRoute, awaited


@toast.get("/sync/items/{id}")
async def read_sync(id: str) -> dict[str, str]:
    return {"name": Item.model_validate({"class_name": "Item", "id": id}).name}


@toast.post("/sync/items")
async def create_sync(body: dict[str, str]) -> dict[str, str]:
    return Item(name=body["name"]).model_dump()


plain = FastAPI()


class PlainItem(BaseModel):
    name: str


class PlainReference(BaseModel):
    class_name: str
    id: UUID


class PlainGift(BaseModel):
    item: PlainReference


@plain.get("/plain/items/{id}")
async def read_plain(id: UUID) -> PlainItem:
    await asyncio.sleep(LATENCY)  # the load
    return PlainItem(name="gift")


@plain.post("/plain/gifts")
async def gift_plain(body: PlainGift) -> PlainItem:
    await asyncio.sleep(LATENCY)  # the prefetch
    return PlainItem(name="gift")


@plain.post("/plain/items")
async def create_plain(body: PlainGift) -> PlainReference:
    await asyncio.sleep(LATENCY)  # the prefetch
    await asyncio.sleep(LATENCY)  # the save
    return PlainReference(class_name="Item", id=uuid4())


control = FastAPI()
_watch: list[LoopWatch] = []


@control.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@control.post("/_loop/seed")
async def seed() -> dict[str, Any]:
    return await Item(name="gift").asave()


@control.post("/_loop/start")
async def start(over_ms: float = 5.0) -> dict[str, str]:
    assert not _watch, "a watch is already running"
    watch = LoopWatch(over_ms)
    watch.start()
    _watch.append(watch)
    return {"status": "watching"}


@control.post("/_loop/freeze")
async def freeze() -> dict[str, int]:
    gc.collect()
    gc.freeze()  # what a preforking server does after start-up
    return {"frozen": gc.get_freeze_count()}


@control.post("/_loop/objects")
async def objects() -> dict[str, int]:
    gc.collect()
    return {"objects": len(gc.get_objects())}


@control.post("/_loop/stop")
async def stop() -> dict[str, Any]:
    return await _watch.pop().stop()


async def _dispatch(scope: Any, receive: Any, send: Any) -> None:
    path = scope.get("path", "")
    if path.startswith("/plain/"):
        await plain(scope, receive, send)
    elif path.startswith("/_loop/") or path == "/health":
        await control(scope, receive, send)
    else:  # the integration's routes, and the lifespan
        await toast(scope, receive, send)


app = LabelRequests(_dispatch)
