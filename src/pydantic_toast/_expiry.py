"""Purging expired records from stores that keep them until purged (PostgreSQL, SQLite)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic_toast._records import check_batch_size
from pydantic_toast._url import StorageURL
from pydantic_toast.runtime.loops import run_sync
from pydantic_toast.runtime.storage import current_storage

__all__ = ["apurge_expired", "purge_expired"]

MAX_BATCH = 10_000


async def apurge_expired(
    storage: str,
    *,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the expired records of a store, in bounded batches; return how many went.

    On PostgreSQL and SQLite an expired record stays in the table, invisible to loads, pages
    and counts, until purged: run this (or ``pydantic-toast purge URL``) on a schedule. Each
    batch lists the classes that have expired rows (a skip-scan of the partial index on
    ``(class_name, expires_at)``: a few index probes per class), then deletes at most
    ``batch_size`` rows, a statement per class, through that index and the primary key, so no
    lock is held for long and an interrupted purge loses nothing (run it again). Redis and
    ``memory://`` remove expired records themselves: nothing to purge there.

    Args:
        storage: The storage URL.
        batch_size: At most this many rows per statement (1 to 10,000).
        progress: Called with the running total after each batch.

    Raises:
        StorageConfigurationError: ``batch_size`` is out of range.
    """
    check_batch_size(batch_size, MAX_BATCH)
    backend = await current_storage().connected(StorageURL.parse(storage))
    total = 0
    while True:
        deleted = await backend.purge_expired(limit=batch_size)
        total += deleted
        if progress is not None:
            progress(total)
        if deleted < batch_size:
            return total


def purge_expired(
    storage: str,
    *,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """The blocking form of :func:`apurge_expired`."""
    return run_sync(
        lambda: apurge_expired(storage, batch_size=batch_size, progress=progress),
        call="pydantic_toast.purge_expired()",
        instead="await pydantic_toast.apurge_expired()",
    )
