"""Opening storage with the app, and checking it (startup, health checks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from pydantic_toast._model import ExternalBaseModel
from pydantic_toast.backends.base import Capability
from pydantic_toast.runtime.lifecycle import aclose_storage, close_storage
from pydantic_toast.runtime.storage import current_storage

__all__ = ["check_storage", "storage_lifespan"]

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def storage_lifespan(
    *models: type[ExternalBaseModel], lifespan: Lifespan | None = None
) -> Lifespan:
    """A FastAPI ``lifespan`` that opens the models' storage at startup and closes it at shutdown.

    Opening at startup fails fast: a missing migration or an unreachable database stops the
    app from starting, with the library's message, instead of failing the first request.

    Args:
        models: The models whose storage to open and check.
        lifespan: The app's own lifespan, entered after storage is open and left before it
            closes (so its startup and shutdown code can use storage). The state it yields is
            the app's ``request.state``.
    """

    @asynccontextmanager
    async def open_storage(app: FastAPI) -> AsyncIterator[Any]:
        await check_storage(*models)
        try:
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state
        finally:
            await aclose_storage()
            await asyncio.to_thread(close_storage)

    return open_storage


async def check_storage(*models: type[ExternalBaseModel]) -> None:
    """Connect each model's storage and read from it (for startup and health checks).

    Uses only what each backend declares it supports: a listing when it can list, else the
    connection alone.

    Raises:
        ExternalStorageError: The store is unreachable or not migrated.
    """
    storage = current_storage()
    for model in models:
        settings = model._toast_settings()
        backend = await storage.connected(settings.url())
        if Capability.LIST in backend.capabilities:
            await backend.list_ids(settings.external_name, limit=1, after=None)
