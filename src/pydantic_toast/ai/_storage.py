"""The one place this package reaches below the public API: backends of a storage URL.

Conversations and spilled outputs are stored under class names chosen at run time (one per
conversation), which no ``ExternalBaseModel`` class can name, so they go through a backend's
record methods (``save_records``, ``load_records``, ``list_records``, ``delete``) directly.
"""

from __future__ import annotations

import logging
from uuid import UUID

from pydantic_toast._exceptions import StorageConfigurationError, StoredDataError
from pydantic_toast._records import PageCursor, StoredRecord
from pydantic_toast._url import StorageURL, mask_url, resolve_storage
from pydantic_toast.backends.base import Capability
from pydantic_toast.runtime.boundary import Connected, check_url
from pydantic_toast.runtime.storage import current_storage

__all__ = ["backend", "checked_url", "delete_all", "list_page"]

logger = logging.getLogger("pydantic_toast")


async def backend(url: str) -> Connected:
    """The connected backend for ``url`` on the running event loop (through the boundary)."""
    return await current_storage().connected(StorageURL.parse(url))


async def list_page(
    store: Connected,
    class_name: str,
    *,
    limit: int,
    after: PageCursor | None,
    skip_unreadable: bool,
) -> tuple[list[StoredRecord], PageCursor | None, bool]:
    """A page of ``class_name``'s records: the records, the cursor past the page, and whether
    it is the last.

    A backend whose listing reads the stored values (Redis) fails the page on a value that is
    no record at all. With ``skip_unreadable``, that value is left out with a warning, as a
    record whose data cannot be read is: the page is listed again one record at a time up to
    it, and on past it (the error's ``resume_after``), so the records around it still load.
    """
    try:
        records = await store.list_records(class_name, limit=limit, after=after)
    except StoredDataError as exc:
        if not skip_unreadable or exc.resume_after is None:
            raise
    else:
        cursor = PageCursor.of(records[-1]) if records else after
        return records, cursor, len(records) < limit
    records, cursor = [], after
    for _ in range(limit):  # each listed entry counts, read or left out
        try:
            one = await store.list_records(class_name, limit=1, after=cursor)
        except StoredDataError as exc:
            if exc.resume_after is None or exc.resume_after == cursor:  # never past it: stop
                raise
            logger.warning("skipped a stored value that is no record: %s", exc)
            cursor = exc.resume_after
            continue
        if not one:
            return records, cursor, True
        records += one
        cursor = PageCursor.of(one[0])
    return records, cursor, False


async def delete_all(store: Connected, class_name: str) -> int:
    """Delete every record of ``class_name`` in ``store``, a page of ids at a time; how many.

    A backend whose listing reads the records (Redis) fails it on a damaged one, naming it:
    that record is deleted by its id and the listing goes on, so a conversation whose load
    fails on a damaged record can still be deleted, as the load's error says to. A page of
    which nothing is deleted is listed again: a concurrent delete or an expiry removed its
    records, and the next listing no longer holds them. Only the same page listed twice with
    nothing deleted (an index out of step) raises ``StoredDataError``.
    """
    deleted = 0
    damaged: UUID | None = None
    idle: list[UUID] = []  # the last page listed, when deleting it deleted nothing
    while True:
        try:
            ids = await store.list_ids(class_name, limit=1000)
        except StoredDataError as exc:
            if exc.class_name != class_name or not isinstance(exc.id, UUID):
                raise
            if exc.id == damaged:
                if idle == [damaged]:
                    raise _undeletable(class_name, damaged) from exc
                raise
            damaged = exc.id
            ids = [damaged]
        if not ids:
            return deleted
        found = 0
        for id in ids:
            found += await store.delete(id, class_name)
        if found:
            deleted += found
            idle = []
        elif ids == idle:  # listed again and again: stop rather than loop forever
            raise _out_of_step(class_name, ids)
        else:
            idle = ids


def _out_of_step(class_name: str, ids: list[UUID]) -> StoredDataError:
    """The error for a page of ids listed twice, none of them stored."""
    return StoredDataError(
        f"the listing of {class_name} names {len(ids)} records that are not stored, "
        f"such as {ids[0]}: the store's index is out of step with its records (an S3 "
        "lifecycle rule or a hand deletion?); the records deleted so far are gone, the "
        "index is left untouched (remove its entries for those ids)",
        class_name=class_name,
        id=ids[0],
    )


def _undeletable(class_name: str, id: UUID) -> StoredDataError:
    """The error for a damaged record the listing reads again after its delete found nothing."""
    return StoredDataError(
        f"the listing of {class_name} fails on the damaged record {id} (the chained error "
        "names its key), and deleting that record by its id deletes nothing: the listing reads "
        "it under a key its id does not give (an index entry written by hand, such as an id in "
        "capitals?); the records deleted so far are gone, that one is left untouched (delete "
        "its key and its index entry by hand)",
        class_name=class_name,
        id=id,
    )


def checked_url(
    storage: str, ttl: float | None, *, needs: tuple[Capability, ...] = (), user: str = ""
) -> str:
    """``storage`` resolved (``env:NAME`` too) and checked against ``ttl`` and ``needs``.

    ``ttl`` is only accepted where records expire; ``user`` (named in the message) needs the
    backend's ``needs`` capabilities.
    """
    url = resolve_storage(storage)
    parsed = StorageURL.parse(url)
    backend_class = current_storage().registry.class_for(parsed.scheme)
    check_url(backend_class, parsed)
    missing = [need.value for need in needs if need not in backend_class.capabilities]
    if missing:
        raise StorageConfigurationError(
            f"{user} needs a backend that can {' and '.join(missing)} records, and "
            f"{backend_class.__name__} ({mask_url(url)}) cannot: implement "
            f"{', '.join(_METHODS[name] for name in missing)} on it, or use another storage"
        )
    if ttl is not None and Capability.TTL not in backend_class.capabilities:
        raise StorageConfigurationError(
            f"ttl is set but {backend_class.__name__} ({mask_url(url)}) does not expire records: "
            "remove ttl, or use a backend that does (one declaring Capability.TTL, such as "
            "redis://, postgresql://, sqlite:// or memory://)"
        )
    return url


_METHODS = {
    "list": "list_records (or list_ids)",
    "delete": "delete",
    "count": "count",
    "batch": "save_records",
}
