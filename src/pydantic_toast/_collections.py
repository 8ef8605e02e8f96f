"""Operations on a model's stored records as a collection: delete, pages, count.

The async functions run on the caller's loop; each sync form is a thin wrapper that runs it
through the runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic_toast._exceptions import RecordNotFoundError, StorageConfigurationError
from pydantic_toast._loading import LoadSession
from pydantic_toast._model import ExternalBaseModel
from pydantic_toast.runtime.loops import run_sync
from pydantic_toast.runtime.storage import current_storage

__all__ = ["Page", "acount", "adelete", "apage", "count", "delete", "page"]

M = TypeVar("M", bound=ExternalBaseModel)
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Page(Generic[M]):
    """One page of a model's records, newest first.

    Attributes:
        items: The loaded models.
        next_after: Pass it as ``after`` to get the next page; ``None`` on the last page.
    """

    items: list[M]
    next_after: UUID | None


async def adelete(model: type[M], reference: Mapping[str, Any] | UUID | str) -> None:
    """Delete a stored record.

    Args:
        model: The model class the record belongs to.
        reference: Its reference or id.

    Raises:
        RecordNotFoundError: There was no such record (a delete is never silent).
    """
    url, class_name, id = model._toast_session_key(model._toast_reference(reference))
    backend = await current_storage().connected(url)
    if not await backend.delete(id, class_name):
        raise RecordNotFoundError(class_name, id)


async def apage(model: type[M], *, limit: int = 50, after: UUID | str | None = None) -> Page[M]:
    """Load a page of a model's records, newest first (keyset pagination, stable order).

    Args:
        model: The model class.
        limit: At most this many records (1 to 1000).
        after: The ``next_after`` of the previous page, or ``None`` for the first page.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise StorageConfigurationError(f"limit must be from 1 to {MAX_PAGE}, got {limit}")
    settings = model._toast_settings()
    url, name = settings.url(), settings.external_name
    cursor = model._toast_reference(after)[1] if after is not None else None
    storage = current_storage()
    backend = await storage.connected(url)
    ids = await backend.list_ids(name, limit=limit, after=cursor)
    session = LoadSession(model._toast_routes(), storage)
    await session.fetch(
        {url: {(name, id) for id in ids}} if ids else {}, follow=model._toast_has_nested()
    )
    # A record deleted between listing and loading is left out.
    items = [
        model._toast_build((url, name, id), session)
        for id in ids
        if session.records.get((url, name, id))
    ]
    return Page(items=items, next_after=ids[-1] if len(ids) == limit else None)


async def acount(model: type[ExternalBaseModel]) -> int:
    """How many records of ``model`` are stored."""
    settings = model._toast_settings()
    backend = await current_storage().connected(settings.url())
    return await backend.count(settings.external_name)


def delete(model: type[M], reference: Mapping[str, Any] | UUID | str) -> None:
    """The blocking form of :func:`adelete`."""
    run_sync(
        lambda: adelete(model, reference),
        call="pydantic_toast.delete()",
        instead="await pydantic_toast.adelete()",
    )


def page(model: type[M], *, limit: int = 50, after: UUID | str | None = None) -> Page[M]:
    """The blocking form of :func:`apage`."""
    return run_sync(
        lambda: apage(model, limit=limit, after=after),
        call="pydantic_toast.page()",
        instead="await pydantic_toast.apage()",
    )


def count(model: type[ExternalBaseModel]) -> int:
    """The blocking form of :func:`acount`."""
    return run_sync(
        lambda: acount(model),
        call="pydantic_toast.count()",
        instead="await pydantic_toast.acount()",
    )
