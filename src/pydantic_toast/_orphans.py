"""Orphans: the records of a class that no stored record references.

A scan runs in two passes, page by page, never holding more than one page of records: it
collects the ids of the class that the records of the referencing classes hold (only ids are
kept), then pages through the class itself and reports (and on request deletes) the records
nobody references. Records created after the scan started are never reported, so a record
being saved with its new parent meanwhile is safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pydantic_core
from pydantic import TypeAdapter

from pydantic_toast._codecs import is_encoded
from pydantic_toast._exceptions import StorageConfigurationError
from pydantic_toast._loading import Routes, find_references, routes_in
from pydantic_toast._model import ExternalBaseModel
from pydantic_toast._offload import load_offloaded
from pydantic_toast._ownership import delete_owned
from pydantic_toast._records import PageCursor
from pydantic_toast.runtime.loops import run_sync
from pydantic_toast.runtime.storage import current_storage

__all__ = ["OrphanReport", "afind_orphans", "find_orphans", "referencing_classes"]

MAX_BATCH = 1000


@dataclass
class OrphanReport:
    """What an orphan scan found (so far, when passed to ``progress``).

    Attributes:
        class_name: The stored class name scanned.
        referencing: The stored names of the classes whose records were read for references.
        checked: How many records of the class were checked.
        orphans: The ids of the records nobody references (deleted ones included).
        deleted: How many of them were deleted.
        next_after: Pass it as ``after`` to resume after the last page checked; ``None`` once
            the scan has finished.
    """

    class_name: str
    referencing: list[str]
    checked: int = 0
    orphans: list[UUID] = field(default_factory=list)
    deleted: int = 0
    next_after: str | None = None


def referencing_classes(model: type[ExternalBaseModel]) -> list[type[ExternalBaseModel]]:
    """The live model classes whose records can reference ``model``'s records."""
    settings = model._toast_settings()
    url, name = settings.url(), settings.external_name
    found = []
    for cls in current_storage().catalog.classes():
        route = _field_routes(cls).get(name)
        if route is not None and url in route.urls:
            found.append(cls)
    return sorted(found, key=lambda cls: cls._toast_settings().external_name)


def _field_routes(cls: type[ExternalBaseModel]) -> Routes:
    """The routes of the external classes ``cls``'s fields can hold (not ``cls`` itself)."""
    routes: Routes = {}
    for info in cls.model_fields.values():
        routes.update(routes_in(TypeAdapter(info.annotation or Any).core_schema))
    return routes


async def afind_orphans(
    model: type[ExternalBaseModel],
    *,
    referencing: Iterable[type[ExternalBaseModel]] | None = None,
    delete: bool = False,
    batch_size: int = 500,
    after: str | None = None,
    progress: Callable[[OrphanReport], None] | None = None,
) -> OrphanReport:
    """Find, and with ``delete=True`` delete, the records of ``model`` nobody references.

    Args:
        model: The class whose records are checked.
        referencing: The classes whose records may reference them; by default every live
            class whose fields can hold ``model`` (import your models first).
        delete: Delete the orphans (with what they own), one page at a time.
        batch_size: Records per page (1 to 1000).
        after: A ``next_after`` of an earlier report: resume there.
        progress: Called with the report so far after each page.

    Raises:
        StorageConfigurationError: ``batch_size`` is out of range.
    """
    if type(batch_size) is not int or not 1 <= batch_size <= MAX_BATCH:
        raise StorageConfigurationError(
            f"batch_size must be an int from 1 to {MAX_BATCH}, got {batch_size!r}"
        )
    started = datetime.now(UTC)
    settings = model._toast_settings()
    url, name = settings.url(), settings.external_name
    sources = list(referencing) if referencing is not None else referencing_classes(model)
    report = OrphanReport(name, [cls._toast_settings().external_name for cls in sources])
    referenced = set()
    for cls in sources:
        referenced |= await _referenced_ids(cls, name, batch_size)
    storage = current_storage()
    backend = await storage.connected(url)
    cursor = PageCursor.from_token(after) if after is not None else None
    if after is not None and cursor is None:
        raise StorageConfigurationError(f"after={after!r} is not a next_after of an orphan scan")
    while True:
        records = await backend.list_records(name, limit=batch_size, after=cursor)
        orphans = [
            record.id
            for record in records
            if record.created_at < started and record.id not in referenced
        ]
        if delete and orphans:
            await delete_owned(storage, {(url, name, id): model for id in orphans})
            report.deleted += len(orphans)
        report.checked += len(records)
        report.orphans.extend(orphans)
        last = len(records) < batch_size
        cursor = None if last else PageCursor.of(records[-1])
        report.next_after = None if cursor is None else cursor.token()
        if progress is not None:
            progress(report)
        if cursor is None:
            return report


async def _referenced_ids(cls: type[ExternalBaseModel], name: str, batch_size: int) -> set[UUID]:
    """The ids of ``name`` that the records of ``cls`` reference, read page by page."""
    settings = cls._toast_settings()
    backend = await current_storage().connected(settings.url())
    found: set[UUID] = set()
    cursor: PageCursor | None = None
    while True:
        records = await backend.list_records(settings.external_name, limit=batch_size, after=cursor)
        for record in records:
            if is_encoded(record.data):
                record = await load_offloaded(current_storage(), record, settings.codec)
            fields: Any = pydantic_core.from_json(record.data, allow_inf_nan=True)
            found.update(id for class_name, id in find_references(fields) if class_name == name)
        if len(records) < batch_size:
            return found
        cursor = PageCursor.of(records[-1])


def find_orphans(
    model: type[ExternalBaseModel],
    *,
    referencing: Iterable[type[ExternalBaseModel]] | None = None,
    delete: bool = False,
    batch_size: int = 500,
    after: str | None = None,
    progress: Callable[[OrphanReport], None] | None = None,
) -> OrphanReport:
    """The blocking form of :func:`afind_orphans`."""
    return run_sync(
        lambda: afind_orphans(
            model,
            referencing=referencing,
            delete=delete,
            batch_size=batch_size,
            after=after,
            progress=progress,
        ),
        call="pydantic_toast.find_orphans()",
        instead="await pydantic_toast.afind_orphans()",
    )
