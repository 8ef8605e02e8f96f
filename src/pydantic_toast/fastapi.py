"""FastAPI integration: lifespan, loading dependencies and error responses.

Install with ``pip install 'pydantic-toast[fastapi]'``::

    from fastapi import FastAPI
    from pydantic_toast.fastapi import install_error_handlers, loader, storage_lifespan

    app = FastAPI(lifespan=storage_lifespan(Todo))
    install_error_handlers(app)

    @app.get("/todos/{id}")
    async def get_todo(todo: Todo = Depends(loader(Todo))) -> TodoOut: ...

In ``async def`` routes use the non-blocking API: ``await todo.asave()``,
``await Todo.aload(id)``, ``await pydantic_toast.apage(Todo)``. The sync API
(``model_dump()``, ``model_validate()``, and response models that are external models) blocks
the event loop for each round trip; keep it to ``def`` routes, which FastAPI runs in threads.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, TypeVar
from uuid import UUID

try:
    from fastapi import FastAPI, HTTPException, Path, Request
    from fastapi.responses import JSONResponse
except ImportError as exc:  # pragma: no cover - exercised in a venv without FastAPI
    raise ImportError(
        "pydantic_toast.fastapi needs FastAPI, which is not installed: "
        "run pip install 'pydantic-toast[fastapi]'",
        name=exc.name,
    ) from exc

from pydantic_toast._exceptions import (
    RecordNotFoundError,
    StorageConnectionError,
    StorageSchemaError,
    StorageTimeoutError,
    StorageValidationError,
)
from pydantic_toast._model import ExternalBaseModel
from pydantic_toast.backends.base import Capability
from pydantic_toast.runtime.lifecycle import aclose_storage, close_storage
from pydantic_toast.runtime.storage import current_storage

__all__ = ["check_storage", "install_error_handlers", "loader", "storage_lifespan"]

M = TypeVar("M", bound=ExternalBaseModel)


def storage_lifespan(
    *models: type[ExternalBaseModel],
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan`` that opens the models' storage at startup and closes it at shutdown.

    Opening at startup fails fast: a missing migration or an unreachable database stops the
    app from starting, with the library's message, instead of failing the first request.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await check_storage(*models)
        try:
            yield
        finally:
            await aclose_storage()
            await asyncio.to_thread(close_storage)

    return lifespan


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


def loader(model: type[M], *, param: str = "id") -> Callable[..., Coroutine[Any, Any, M]]:
    """A dependency that loads ``model`` from the path parameter ``param`` (a UUID).

    Answers 404 for an unknown id, 422 for a malformed one, and 503 when storage is down. The
    load is awaited on the app's loop: it does not block other requests.
    """

    async def load(**path: UUID) -> M:
        try:
            return await model.aload(path[param])
        except RecordNotFoundError as exc:
            raise HTTPException(404, f"{model.__name__} {exc.id} not found") from exc
        except (StorageConnectionError, StorageSchemaError) as exc:
            raise HTTPException(503, "storage is unavailable") from exc

    parameter = inspect.Parameter(
        param, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[UUID, Path()]
    )
    load.__signature__ = inspect.Signature([parameter], return_annotation=model)  # type: ignore[attr-defined]
    load.__name__ = f"load_{model.__name__.lower()}"
    return load


def install_error_handlers(app: FastAPI) -> None:
    """Answer the library's errors with the right status, wherever a route raises them.

    ``RecordNotFoundError`` gives 404, ``StorageValidationError`` 422, and connection,
    statement-timeout or schema problems 503 (the details stay in the server log: they describe your
    infrastructure). This also covers references in request bodies, which Pydantic loads.
    Configuration and usage errors stay 500s: they are bugs in the service, not outages.
    """

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "storage is unavailable"}, status_code=503)

    app.add_exception_handler(RecordNotFoundError, not_found)
    app.add_exception_handler(StorageValidationError, invalid)
    app.add_exception_handler(StorageConnectionError, unavailable)
    app.add_exception_handler(StorageSchemaError, unavailable)
    app.add_exception_handler(StorageTimeoutError, unavailable)
