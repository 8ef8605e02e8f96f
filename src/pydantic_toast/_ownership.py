"""Owned children: ``Annotated[Child, Owned]`` fields whose records go with their parent.

A parent that owns the external models in a field deletes them when it is deleted
(:func:`pydantic_toast.delete`), and deletes those an update replaced once that update is
written. Deletes run top-down, after the write or delete of the parent: a crash in between
leaves orphans (:func:`pydantic_toast.find_orphans` finds them), never a stored parent that
references a deleted child.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import pydantic_core
from pydantic import TypeAdapter

from pydantic_toast._codecs import is_encoded
from pydantic_toast._exceptions import ExternalStorageError
from pydantic_toast._loading import Routes, SessionKey, find_references, routes_in
from pydantic_toast._offload import delete_offloaded, load_offloaded
from pydantic_toast._records import StoredRecord
from pydantic_toast.runtime.storage import Storage
from pydantic_toast.runtime.transaction import after_commit, outside

if TYPE_CHECKING:
    from pydantic_toast._model import ExternalBaseModel

__all__ = ["Owned", "delete_owned", "owned_keys", "owns_children", "replaced_children"]


class _OwnedMarker:
    """The marker type of :data:`Owned`."""

    def __repr__(self) -> str:
        return "Owned"


Owned: Final = _OwnedMarker()
"""Marks a field whose external models belong to the parent: ``Annotated[Customer, Owned]``.

Deleting the parent deletes them (recursively, through their own owned fields), and an update
that replaces or removes them deletes them after the update is written. Owned children must
not be shared with another parent: the parent's delete deletes them all the same.
"""

# A stored record found through an owned field: where it is, and its model class.
Child = tuple[SessionKey, Any]


def _owned_routes(cls: type[ExternalBaseModel]) -> dict[str, Routes]:
    """Field name -> routes of the external classes the field can hold, for owned fields."""
    cached: dict[str, Routes] | None = cls.__dict__.get("__toast_owned__")
    if cached is None:
        cached = {
            name: routes_in(TypeAdapter(field.annotation or Any).core_schema)
            for name, field in cls.model_fields.items()
            if any(item is Owned for item in field.metadata)
        }
        type.__setattr__(cls, "__toast_owned__", cached)
    return cached


def owns_children(cls: type[ExternalBaseModel]) -> bool:
    """Whether ``cls`` has fields marked :data:`Owned`."""
    return bool(_owned_routes(cls))


def owned_keys(cls: type[ExternalBaseModel], data: bytes | None) -> dict[SessionKey, Any]:
    """The records the owned fields of ``data`` (a record's stored JSON) reference."""
    owned = _owned_routes(cls)
    if not owned or data is None:
        return {}
    fields = pydantic_core.from_json(data, allow_inf_nan=True)
    found: dict[SessionKey, Any] = {}
    for name, routes in owned.items():
        for class_name, id in find_references(fields.get(name)):
            route = routes.get(class_name)
            if route is None:
                continue
            for url, model in zip(route.urls, route.models, strict=True):
                found[(url, class_name, id)] = model
    return found


async def delete_owned(storage: Storage, children: dict[SessionKey, Any]) -> list[SessionKey]:
    """Delete ``children`` and, level by level, what they own in turn; return what was left.

    Each level is read (to learn its own children) and deleted one store at a time, in one
    ``delete_records`` call (one statement on PostgreSQL and SQLite). A record
    that could not be read or deleted is left, with everything it owns; the first error is
    raised after every other record was tried, with a note naming what was left.
    """
    left: list[SessionKey] = []
    first_error: ExternalStorageError | None = None
    seen: set[SessionKey] = set()
    payloads: list[tuple[StoredRecord, Any]] = []
    # Inside transaction(), records of stores outside it wait for its commit (with what they
    # own): deleted now, a rollback would restore their parent referencing them.
    deferred: dict[SessionKey, Any] = {}
    level = dict(children)
    while level:
        next_level: dict[SessionKey, Any] = {}
        by_url: dict[Any, list[Child]] = {}
        for key, model in level.items():
            if key not in seen:
                seen.add(key)
                by_url.setdefault(key[0], []).append((key, model))
        for url, items in by_url.items():
            try:
                backend = await storage.connected(url)
                if outside(backend.backend):
                    deferred.update(items)
                    continue
                records = await backend.load_records([(key[1], key[2]) for key, _ in items])
            except ExternalStorageError as exc:
                first_error = first_error or exc
                left.extend(key for key, _ in items)
                continue
            doomed: list[SessionKey] = []
            below: dict[SessionKey, Any] = {}
            for (key, model), record in zip(items, records, strict=True):
                if record is None:
                    continue  # already gone
                codec = model._toast_settings().codec
                try:
                    readable = record
                    if is_encoded(record.data):
                        readable = await load_offloaded(storage, record, codec)
                except ExternalStorageError as exc:
                    first_error = first_error or exc
                    left.append(key)  # its children are unknown: it stays, to be found again
                    continue
                doomed.append(key)
                below.update(owned_keys(model, readable.data))
                if codec is not None and codec.offload is not None:
                    payloads.append((record, codec))
            try:  # one round trip per store and level where the backend can
                await backend.delete_records([(key[1], key[2]) for key in doomed])
            except ExternalStorageError as exc:
                first_error = first_error or exc
                left.extend(doomed)
                continue
            next_level.update(below)
        level = next_level
    if deferred:
        after_commit(lambda: delete_owned(storage, deferred), left="owned records")
    for record, codec in payloads:  # after their records: a crash leaves payloads, not holes
        try:
            await delete_offloaded(storage, record, codec)
        except ExternalStorageError as exc:
            first_error = first_error or exc
    if first_error is not None:
        first_error.add_note(f"owned records left behind (find them as orphans): {_named(left)}")
        raise first_error
    return left


def _named(keys: Iterable[SessionKey]) -> str:
    shown = [f"{class_name} {id}" for _, class_name, id in keys]
    more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
    return ", ".join(shown[:10]) + more


def replaced_children(
    cls: type[ExternalBaseModel], old: bytes | None, new: bytes
) -> dict[SessionKey, Any]:
    """The owned children ``old`` references and ``new`` no longer does."""
    if old is None or not owns_children(cls):
        return {}
    before = owned_keys(cls, old)
    if not before:
        return {}
    after = owned_keys(cls, new)
    return {key: model for key, model in before.items() if key not in after}
