"""Operations on a model's stored records as a collection: delete, pages, count.

The async functions run on the caller's loop; each sync form is a thin wrapper that runs it
through the runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic_toast._codecs import is_encoded
from pydantic_toast._exceptions import (
    InvalidReferenceError,
    RecordNotFoundError,
    StorageUsageError,
    shorten,
)
from pydantic_toast._fidelity import decode_stored
from pydantic_toast._loading import LoadSession, Wanted, find_references
from pydantic_toast._model import ExternalBaseModel
from pydantic_toast._offload import delete_offloaded, load_offloaded
from pydantic_toast._ownership import delete_owned, owned_keys, owns_children
from pydantic_toast._records import PageCursor
from pydantic_toast._saving import UnvalidatedIdentity, identity_of
from pydantic_toast.runtime.loops import run_sync
from pydantic_toast.runtime.storage import current_storage

__all__ = ["Page", "acount", "adelete", "apage", "check_limit", "count", "delete", "page"]

M = TypeVar("M", bound=ExternalBaseModel)
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Page(Generic[M]):
    """One page of a model's records, newest first.

    Iterating a page gives its items, and ``len(page)`` is their number (an empty page is
    false), so ``for order in page:`` reads like a list; ``page.items`` is that list.

    Attributes:
        items: The loaded models.
        next_after: Pass it as ``after`` to get the next page; ``None`` on the last page. An
            opaque, URL-safe string (34 characters) that carries the last record's sort key
            (``created_at`` and id), not a reference to it: it stays valid when that record
            is deleted, so "process, delete, next page" visits every record once.
    """

    items: list[M]
    next_after: str | None

    def __iter__(self) -> Iterator[M]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


async def adelete(
    model: type[M],
    reference: Mapping[str, Any] | UUID | str | ExternalBaseModel,
    *,
    revision: int | None = None,
) -> None:
    """Delete a stored record, and the records it owns (fields marked ``Owned``).

    Owned children are read first (the parent's stored record names them), then the parent
    is deleted, then the children, level by level (each record once). A crash or an error in
    between leaves orphans, never a parent that references a deleted child.

    With ``revision`` (an instance's ``external_revision``), the delete is revision-checked:
    the record is deleted only if it is still at that revision, atomically, so a change
    another writer saved since it was read is never deleted::

        todo = await Todo.aload(id)
        ...
        await pydantic_toast.adelete(Todo, todo, revision=todo.external_revision)

    Args:
        model: The model class the record belongs to.
        reference: Its reference or id, or a saved instance.
        revision: Delete only if the stored revision is this one (``None``: whatever is
            stored).

    Raises:
        RecordNotFoundError: There was no such record (a delete is never silent).
        ConcurrencyError: With ``revision``: the record is at another revision; nothing was
            deleted.
        StorageUsageError: With ``revision``: the model's backend has no revision-checked
            delete (``StorageBackend.delete_checked``).
        ExternalStorageError: Deleting an owned record failed; the parent is deleted, and the
            error's note names the records left behind.
    """
    await _delete(model, reference, revision, "pydantic_toast.adelete()")


async def _delete(
    model: type[M],
    reference: Mapping[str, Any] | UUID | str | ExternalBaseModel,
    revision: int | None,
    call: str,
) -> None:
    """:func:`adelete`, naming ``call`` (the function the caller called) in its errors."""
    url, class_name, id = model._toast_key(reference, call)
    storage = current_storage()
    backend = await storage.connected(url)
    with backend.in_use():  # a close waits for the delete's steps, not only for one
        codec = model._toast_settings().codec
        owns = owns_children(model)
        stored = None
        if owns or (codec is not None and codec.offload is not None):  # read before it goes
            (stored,) = await backend.load_records([(class_name, id)])
        children = {}
        if owns and stored is not None:
            readable = (
                await load_offloaded(storage, stored, codec) if is_encoded(stored.data) else stored
            )
            children = owned_keys(model, readable.data)
        if revision is None:
            deleted = await backend.delete(id, class_name)
        else:
            created_at = _held_created_at(reference)
            deleted = await backend.delete_checked(id, class_name, revision, created_at=created_at)
        if not deleted:
            raise RecordNotFoundError(class_name, id)
        if stored is not None and codec is not None:
            await delete_offloaded(storage, stored, codec)
        if children:
            await delete_owned(storage, children)


def _held_created_at(
    reference: Mapping[str, Any] | UUID | str | ExternalBaseModel,
) -> datetime | None:
    """The ``created_at`` a saved instance read or wrote, which a checked delete compares as a
    checked save does (a record deleted and created again is another record); ``None`` for a
    reference or an id, which carry none."""
    if not isinstance(reference, ExternalBaseModel):
        return None
    identity = identity_of(reference)
    if identity is None or type(identity) is UnvalidatedIdentity:
        return None
    return identity.created_at


async def apage(model: type[M], *, limit: int = 50, after: str | None = None) -> Page[M]:
    """Load a page of a model's records, newest first (keyset pagination, stable order).

    One round trip to the store per page on the built-in backends (S3: a listing, then the
    records), plus one per level of nested external models, whose records are prefetched
    together.

    Args:
        model: The model class.
        limit: At most this many records: an ``int`` from 1 to 1000.
        after: The ``next_after`` of the previous page, or ``None`` for the first page.

    Raises:
        StorageUsageError: ``limit`` is not an ``int`` from 1 to 1000 (a bool, a float such as
            ``2.5`` or a numeric string is refused, not rounded: a page shorter than a
            fractional limit would end the paging early).
        InvalidReferenceError: ``after`` is not a ``next_after`` token (a record id, which
            earlier versions used as the cursor, is refused with the fix).
    """
    check_limit(limit)
    settings = model._toast_settings()
    url, name = settings.url(), settings.external_name
    cursor = _cursor(name, after) if after is not None else None
    storage = current_storage()
    backend = await storage.connected(url)
    records = await backend.list_records(name, limit=limit, after=cursor)
    if any(is_encoded(record.data) for record in records):  # payloads fetched concurrently
        records = list(
            await asyncio.gather(
                *(load_offloaded(storage, record, settings.codec) for record in records)
            )
        )
    session = LoadSession(model._toast_routes(), storage)
    for record in records:
        session.records[(url, name, record.id)] = record
    if model._toast_has_nested():  # the children of the page, one round per nesting level
        wanted: Wanted = {}
        for record in records:
            session.add_unfetched(wanted, find_references(decode_stored(record)))
        await session.fetch(wanted, follow=True)
    items = [model._toast_build((url, name, record.id), session) for record in records]
    last = PageCursor.of(records[-1]).token() if len(records) == limit else None
    return Page(items=items, next_after=last)


def check_limit(limit: object, *, most: int | None = MAX_PAGE) -> None:
    """Refuse a ``limit`` that is not an ``int`` from 1 to ``most`` (no upper end for None).

    Raises:
        StorageUsageError: It is not such an int (``bool`` is refused: it is an ``int``
            subclass, and a float compares fine but never equals a page's length).
    """
    wanted = f"an int from 1 to {most}" if most is not None else "an int of 1 or more"
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise StorageUsageError(
            f"limit must be {wanted}, got {shorten(repr(limit))} ({type(limit).__name__})"
        )
    if limit < 1 or (most is not None and limit > most):
        raise StorageUsageError(f"limit must be {wanted}, got {limit}")


def _cursor(class_name: str, after: object) -> PageCursor:
    """The cursor an ``after`` token spells, or the error that says what to pass instead."""
    cursor = PageCursor.from_token(after) if isinstance(after, str) else None
    if cursor is not None:
        return cursor
    try:
        UUID(str(after))
    except ValueError:
        problem = f"after={shorten(repr(after))} is not a page cursor"
    else:  # earlier code paged after a record id, which broke once that record was deleted
        problem = f"after={after} is a record id, not a page cursor"
    raise InvalidReferenceError(
        f"{problem}: pass the next_after string of the previous page (or None for the first "
        "page); it carries the last record's created_at and id, so it survives that record's "
        "deletion",
        class_name=class_name,
    )


async def acount(model: type[ExternalBaseModel]) -> int:
    """How many records of ``model`` are stored."""
    settings = model._toast_settings()
    backend = await current_storage().connected(settings.url())
    return await backend.count(settings.external_name)


def delete(
    model: type[M],
    reference: Mapping[str, Any] | UUID | str | ExternalBaseModel,
    *,
    revision: int | None = None,
) -> None:
    """The blocking form of :func:`adelete`."""
    run_sync(
        lambda: _delete(model, reference, revision, "pydantic_toast.delete()"),
        call="pydantic_toast.delete()",
        instead="await pydantic_toast.adelete()",
    )


def page(model: type[M], *, limit: int = 50, after: str | None = None) -> Page[M]:
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
