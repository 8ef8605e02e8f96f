"""Orphans: the records of a class that no stored record references, and offloaded payloads
that no record points to.

A scan runs in two passes, page by page, never holding more than one page of records: it
collects the ids of the class that the records of the referencing classes hold (only ids are
kept), then pages through the class itself and reports (and on request deletes) the records
nobody references. Records created after the scan started are never reported, so a record
being saved with its new parent meanwhile is safe.

Before that, the class names stored in the class's own store are listed: records the library
writes outside models (AI payloads, conversations, spilled tool outputs) are read for
references too, and a class whose model is not imported (a module left out) may hold
references nobody can see, so deleting is refused while one is stored (unless its records are
read as plain JSON with ``read_unimported=True``). A store that cannot list its class names
has its orphans reported, never deleted.

A payload scan (:func:`afind_orphaned_payloads`) does the same for a model's offload store: it
lists the ids of the payloads there (``{class_name}.payloads``), then pages through the model's
records collecting the payload ids their pointers name, and reports (and on request deletes) the
payloads no record points to that were uploaded at least ``min_age`` before the scan started:
a save uploads its payload before it writes the record, so a younger payload may belong to a
save still in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pydantic_core
from pydantic import ConfigDict, PydanticSchemaGenerationError, TypeAdapter

from pydantic_toast._codecs import is_encoded, pointer_of
from pydantic_toast._exceptions import (
    ExternalStorageError,
    StorageConfigurationError,
    StorageUsageError,
    UnreadReferrersError,
)
from pydantic_toast._loading import Routes, find_references, routes_in
from pydantic_toast._model import ExternalBaseModel
from pydantic_toast._offload import load_offloaded, payload_class
from pydantic_toast._ownership import delete_owned
from pydantic_toast._records import PageCursor, StoredRecord, check_batch_size
from pydantic_toast._url import StorageURL
from pydantic_toast.runtime.loops import run_sync
from pydantic_toast.runtime.storage import current_storage

__all__ = [
    "OrphanReport",
    "afind_orphaned_payloads",
    "afind_orphans",
    "find_orphaned_payloads",
    "find_orphans",
    "live_models",
    "referencing_classes",
]

MAX_BATCH = 1000
# The start of the stored class names of the records pydantic_toast.ai writes outside models
# (payloads, conversations, spilled tool outputs): plain JSON, references in the usual shape.
_AI_RECORDS = "pydantic_toast.ai."


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
        read_as_json: The stored names of the classes with no imported model (AI payloads,
            conversations; with ``read_unimported=True`` the others too) whose records were
            read as plain JSON for references.
        unread: The stored names of the classes in the store whose records were not read:
            their models are not imported, so their records may reference orphans reported
            here (deleting is refused while it is not empty). ``None``: the store cannot list
            its class names, so nobody can tell.
    """

    class_name: str
    referencing: list[str]
    checked: int = 0
    orphans: list[UUID] = field(default_factory=list)
    deleted: int = 0
    next_after: str | None = None
    read_as_json: list[str] = field(default_factory=list)
    unread: list[str] | None = field(default_factory=list)


def referencing_classes(model: type[ExternalBaseModel]) -> list[type[ExternalBaseModel]]:
    """The live model classes whose records can reference ``model``'s records."""
    settings = model._toast_settings()
    url, name = settings.url(), settings.external_name
    found = []
    for cls in live_models():
        route = _field_routes(cls).get(name)
        if route is not None and url in route.urls:
            found.append(cls)
    return sorted(found, key=lambda cls: cls._toast_settings().external_name)


def live_models() -> list[type[ExternalBaseModel]]:
    """Every model class defined in this process that has storage of its own.

    Found by walking ``ExternalBaseModel``'s subclasses, not the stored-name catalog: a class
    whose storage is ``env:NAME`` joins the catalog only once it has been used, and a scan in a
    fresh process (a cron job) that missed a referencing class would report the records it
    references as orphans. A class left incomplete by a forward reference (a field's class
    defined further down, under ``from __future__ import annotations``), which Pydantic would
    complete on first use, is completed here.

    Raises:
        StorageConfigurationError: A class's fields still name a type that does not exist:
            its records could reference anything, so no scan can be trusted.
    """
    found: dict[int, type[ExternalBaseModel]] = {}
    incomplete = []
    pending = ExternalBaseModel.__subclasses__()
    while pending:
        cls = pending.pop()
        if id(cls) in found:
            continue
        pending.extend(cls.__subclasses__())
        if cls.__toast_settings__ is None:
            continue
        if not cls.__pydantic_complete__ and not cls.model_rebuild(raise_errors=False):
            incomplete.append(cls.__qualname__)
            continue
        found[id(cls)] = cls
    if incomplete:
        raise StorageConfigurationError(
            f"cannot tell which records reference others: the fields of {', '.join(incomplete)} "
            "name types that are not defined (forward references Pydantic cannot resolve). "
            "Import the modules that define them, or pass referencing=[...] explicitly"
        )
    return list(found.values())


def _field_routes(cls: type[ExternalBaseModel]) -> Routes:
    """The routes of the external classes ``cls``'s fields can hold (not ``cls`` itself)."""
    routes: Routes = {}
    for info in cls.model_fields.values():
        routes.update(routes_in(_schema_of(info.annotation or Any)))
    return routes


def _schema_of(annotation: Any) -> Any:
    """The core schema of a field's ``annotation``, taken out of its class.

    A class Pydantic has no schema for (a client in a field excluded from the data, allowed by
    the model's ``arbitrary_types_allowed``) is allowed here too: refused, it failed every
    orphan scan of the process, whatever class was scanned.
    """
    try:
        return TypeAdapter(annotation).core_schema
    except PydanticSchemaGenerationError:
        allowed = ConfigDict(arbitrary_types_allowed=True)
        return TypeAdapter(annotation, config=allowed).core_schema


async def afind_orphans(
    model: type[ExternalBaseModel],
    *,
    referencing: Iterable[type[ExternalBaseModel]] | None = None,
    delete: bool = False,
    batch_size: int = 500,
    after: str | None = None,
    progress: Callable[[OrphanReport], None] | None = None,
    read_unimported: bool = False,
) -> OrphanReport:
    """Find, and with ``delete=True`` delete, the records of ``model`` nobody references.

    The records of ``model``'s store that no imported model describes are checked as well:
    those of :mod:`pydantic_toast.ai` (payloads, conversations) are read for references; those
    of a class whose model is not imported are read only with ``read_unimported=True``, and
    otherwise listed in the report's ``unread``, where they make ``delete=True`` fail before
    anything is deleted.

    Args:
        model: The class whose records are checked.
        referencing: More classes whose records may reference them, read besides every
            live class whose fields can hold ``model`` (always read: import your models
            first). With none of either, ``delete=True`` is refused (every record would go):
            pass ``[]`` to mean it.
        delete: Delete the orphans (with what they own), one page at a time.
        batch_size: Records per page (1 to 1000).
        after: A ``next_after`` of an earlier report: resume there.
        progress: Called with the report so far after each page.
        read_unimported: Read the records of the stored classes whose models are not
            imported as plain JSON for references (a compressed, encrypted or offloaded one
            cannot be read, and still refuses deleting), instead of leaving them unread.

    Raises:
        StorageConfigurationError: ``batch_size`` is out of range.
        UnreadReferrersError: With ``delete=True``: the store holds records that were not
            read (a class whose model is not imported), or cannot list its class names, or
            no referencing class was found (and ``referencing`` not given). Nothing was
            deleted.
    """
    check_batch_size(batch_size, MAX_BATCH)
    started = datetime.now(UTC)
    settings = model._toast_settings()
    url, name = settings.url(), settings.external_name
    cursor = PageCursor.from_token(after) if after is not None else None
    if after is not None and cursor is None:
        raise StorageConfigurationError(f"after={after!r} is not a next_after of an orphan scan")
    # Given classes add to the found ones: a class known to reference model is never skipped.
    sources = referencing_classes(model)
    sources += [cls for cls in referencing or () if cls not in sources]
    report = OrphanReport(name, [cls._toast_settings().external_name for cls in sources])
    storage = current_storage()
    backend = await storage.connected(url)
    stored = await _stored_class_names(backend)
    if stored is None:
        report.unread = None
    else:
        read = {cls._toast_settings().external_name for cls in sources}
        for class_name in _unmodelled(stored, url, name, read):
            if class_name.startswith(_AI_RECORDS) or read_unimported:
                report.read_as_json.append(class_name)
            else:
                report.unread.append(class_name)  # type: ignore[union-attr]  # a list here
    if delete and report.unread != []:
        raise _refusal(model, report.unread, url)
    referenced = set()
    for cls in sources:
        referenced |= await _referenced_ids(cls, name, batch_size)
    for class_name in list(report.read_as_json):
        found = await _referenced_in_json(backend, class_name, name, batch_size)
        if found is None:  # encoded: nothing tells how to read it
            report.read_as_json.remove(class_name)
            report.unread.append(class_name)  # type: ignore[union-attr]  # a list here
            if delete:
                raise _refusal(model, report.unread, url)
        else:
            referenced |= found
    # Records of no imported class that could hold model's ones: a forgotten module, likely
    # (read as JSON on request, unimported ones count; the AI's own records do not).
    referrers = bool(sources) or any(not n.startswith(_AI_RECORDS) for n in report.read_as_json)
    while True:
        records = await backend.list_records(name, limit=batch_size, after=cursor)
        orphans = [
            record.id
            for record in records
            if record.created_at < started and record.id not in referenced
        ]
        if delete and orphans and referencing is None and not referrers:
            raise _nobody_refusal(model)
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


async def _stored_class_names(backend: Any) -> list[str] | None:
    """The class names stored in ``backend``, or ``None`` if it cannot list them."""
    try:
        return list(await backend.list_class_names())
    except StorageUsageError:  # a backend without list_class_names
        return None


def _unmodelled(stored: list[str], url: StorageURL, name: str, read: set[str]) -> list[str]:
    """The names in ``stored`` (the class names of ``url``'s store) that no imported model
    accounts for: neither ``name``, nor read already (``read``), nor an imported model of
    that store (whose fields cannot hold ``name``), nor the offloaded payloads of one."""
    imported = set()
    for cls in live_models():
        settings = cls._toast_settings()
        imported.add(payload_class(settings.external_name))  # offload store may be anywhere
        try:
            if settings.url() == url:
                imported.add(settings.external_name)
        except ExternalStorageError:  # its env: variable is unset: not known here
            continue
    known = imported | read | {name}
    return sorted(class_name for class_name in stored if class_name not in known)


def _refusal(
    model: type[ExternalBaseModel], unread: list[str] | None, url: StorageURL
) -> UnreadReferrersError:
    """The error refusing to delete ``model``'s orphans while ``unread`` records may
    reference them."""
    name = model._toast_settings().external_name
    if unread is None:
        why = (
            f"{url.masked} cannot list the class names it holds (its backend has no "
            "list_class_names), so records no imported model describes may reference them"
        )
    else:
        shown = ", ".join(unread[:10]) + (
            f" and {len(unread) - 10} more" if len(unread) > 10 else ""
        )
        why = (
            f"{url.masked} holds records of classes whose models are not imported, and those "
            f"may reference them: {shown}"
        )
    return UnreadReferrersError(
        f"refusing to delete the orphans of {name}: {why}. Import the modules that define "
        "those models first (the CLI: --module), or pass read_unimported=True to read their "
        "records as plain JSON; without delete=True the orphans are only reported",
        unread,
    )


def _nobody_refusal(model: type[ExternalBaseModel]) -> UnreadReferrersError:
    """The error refusing to delete every record of ``model``: no imported model can
    reference it, more likely because the one that does is not imported."""
    name = model._toast_settings().external_name
    return UnreadReferrersError(
        f"refusing to delete the orphans of {name}: no imported model can reference it, so "
        "every record would be deleted. Import the modules that define the models referencing "
        f"it (the CLI: --module); if none does, pass referencing=[] (the CLI: "
        "--no-referencing-classes)",
        [],
    )


async def _referenced_in_json(
    backend: Any, class_name: str, name: str, batch_size: int
) -> set[UUID] | None:
    """The ids of ``name`` referenced by ``class_name``'s records read as plain JSON, page
    by page; ``None`` if one is encoded (compressed, encrypted, offloaded)."""
    found: set[UUID] = set()
    cursor: PageCursor | None = None
    while True:
        records: list[StoredRecord] = await backend.list_records(
            class_name, limit=batch_size, after=cursor
        )
        for record in records:
            if is_encoded(record.data):
                return None
            try:
                fields: Any = pydantic_core.from_json(record.data, allow_inf_nan=True)
            except ValueError:
                return None
            found.update(id for referenced, id in find_references(fields) if referenced == name)
        if len(records) < batch_size:
            return found
        cursor = PageCursor.of(records[-1])


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
    read_unimported: bool = False,
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
            read_unimported=read_unimported,
        ),
        call="pydantic_toast.find_orphans()",
        instead="await pydantic_toast.afind_orphans()",
    )


DEFAULT_MIN_AGE = timedelta(minutes=10)


async def afind_orphaned_payloads(
    model: type[ExternalBaseModel],
    *,
    delete: bool = False,
    batch_size: int = 500,
    min_age: timedelta = DEFAULT_MIN_AGE,
    progress: Callable[[OrphanReport], None] | None = None,
) -> OrphanReport:
    """Find, and with ``delete=True`` delete, the offloaded payloads of ``model`` that no record
    points to (left by a process that died between a payload's upload and its record's write,
    or by a failed cleanup).

    Only ids are kept in memory. The offload store is listed first (ids, one page per
    ``batch_size``; on S3 one GET per page besides, for the next page's cursor), then the
    model's records are paged for their pointers, then the unreferenced payloads are read to
    check their age.

    Args:
        model: A model with ``offload``.
        delete: Delete the orphaned payloads found.
        batch_size: Ids or records per page (1 to 1000).
        min_age: Payloads uploaded less than this before the scan are never reported (a save
            may still be writing the record that points to them).
        progress: Called with the report so far after each page.

    Returns:
        An :class:`OrphanReport` whose ``class_name`` is the payloads' stored class name and
        whose ``checked`` counts the payloads listed.

    Raises:
        StorageConfigurationError: ``model`` has no ``offload``, or an argument is invalid.
    """
    check_batch_size(batch_size, MAX_BATCH)
    if not isinstance(min_age, timedelta) or min_age < timedelta(0):
        raise StorageConfigurationError("min_age must be a timedelta of 0 or more")
    settings = model._toast_settings()
    codec, name = settings.codec, settings.external_name
    if codec is None or codec.offload is None:
        raise StorageConfigurationError(
            f"{model.__qualname__} has no offload store, so it has no offloaded payloads: "
            "pass the model whose ExternalConfigDict sets offload="
        )
    cutoff = datetime.now(UTC) - min_age
    storage = current_storage()
    store = await storage.connected(codec.offload)
    payloads = payload_class(name)
    report = OrphanReport(payloads, [name])
    listed: list[UUID] = []
    cursor: PageCursor | None = None
    while True:  # 1. the payloads stored, newest first
        ids = await store.list_ids(payloads, limit=batch_size, after=cursor)
        listed += ids
        report.checked = len(listed)
        if progress is not None:
            progress(report)
        if len(ids) < batch_size:
            break
        (last,) = await store.load_records([(payloads, ids[-1])])
        if last is None:  # replaced meanwhile: the cursor comes from the page's last survivor
            survivors = await store.load_records([(payloads, id) for id in ids])
            last = next((record for record in reversed(survivors) if record), None)
        if last is None:  # the whole page went: the rest stays unlisted (never misreported)
            break
        cursor = PageCursor.of(last)
    pointed = await _pointed_payloads(model, batch_size)  # 2. the payloads records point to
    candidates = [id for id in listed if id not in pointed]
    for start in range(0, len(candidates), batch_size):  # 3. old enough to be sure
        chunk = candidates[start : start + batch_size]
        records = await store.load_records([(payloads, id) for id in chunk])
        orphans = [r.id for r in records if r is not None and r.created_at < cutoff]
        if delete and orphans:
            await store.delete_records([(payloads, id) for id in orphans])
            report.deleted += len(orphans)
        report.orphans.extend(orphans)
        if progress is not None:
            progress(report)
    return report


async def _pointed_payloads(model: type[ExternalBaseModel], batch_size: int) -> set[UUID]:
    """The payload ids the records of ``model`` point to, read page by page."""
    settings = model._toast_settings()
    backend = await current_storage().connected(settings.url())
    found: set[UUID] = set()
    cursor: PageCursor | None = None
    while True:
        records = await backend.list_records(settings.external_name, limit=batch_size, after=cursor)
        for record in records:
            pointer = pointer_of(record)
            if pointer is not None:
                found.add(pointer[1])
        if len(records) < batch_size:
            return found
        cursor = PageCursor.of(records[-1])


def find_orphaned_payloads(
    model: type[ExternalBaseModel],
    *,
    delete: bool = False,
    batch_size: int = 500,
    min_age: timedelta = DEFAULT_MIN_AGE,
    progress: Callable[[OrphanReport], None] | None = None,
) -> OrphanReport:
    """The blocking form of :func:`afind_orphaned_payloads`."""
    return run_sync(
        lambda: afind_orphaned_payloads(
            model, delete=delete, batch_size=batch_size, min_age=min_age, progress=progress
        ),
        call="pydantic_toast.find_orphaned_payloads()",
        instead="await pydantic_toast.afind_orphaned_payloads()",
    )
