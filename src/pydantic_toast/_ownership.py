"""Owned children: ``Annotated[Child, Owned]`` fields whose records go with their parent.

A parent that owns the external models in a field deletes them when it is deleted
(:func:`pydantic_toast.delete`), and deletes those an update replaced once that update is
written. Deletes run top-down, after the write or delete of the parent: a crash in between
leaves orphans (:func:`pydantic_toast.find_orphans` finds them), never a stored parent that
references a deleted child.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

import pydantic_core
from pydantic import BaseModel, TypeAdapter

from pydantic_toast._codecs import is_encoded
from pydantic_toast._exceptions import ExternalStorageError, StorageUsageError
from pydantic_toast._loading import Routes, SessionKey, find_references, routes_in
from pydantic_toast._offload import delete_offloaded, load_offloaded
from pydantic_toast._records import StoredRecord
from pydantic_toast.runtime.storage import Storage
from pydantic_toast.runtime.transaction import delete_after_commit, outside

if TYPE_CHECKING:
    from pydantic_toast._model import ExternalBaseModel

__all__ = [
    "Owned",
    "check_claims",
    "delete_owned",
    "mark_loaded",
    "owned_keys",
    "owner_of",
    "owner_reference",
    "owns_children",
    "replaced_children",
    "set_owner",
    "set_owner_reference",
    "still_held",
    "use_owner_slot",
]


class _OwnedMarker:
    """The marker type of :data:`Owned`."""

    def __repr__(self) -> str:
        return "Owned"


Owned: Final = _OwnedMarker()
"""Marks a field whose external models belong to the parent: ``Annotated[Customer, Owned]``.

Deleting the parent deletes them (recursively, through their own owned fields), and an update
that replaces or removes them deletes them after the update is written. Owned children must
not be shared with another parent: the parent's delete deletes them all the same. To move one,
take it out of the old parent and dump both parents together
(``pydantic_toast.dump([old_parent, new_parent])``): within a process, a dump that would leave
a parent referencing a child that another parent deletes (or deleted) is refused.
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
    """Whether ``cls`` has fields marked :data:`Owned` (kept in its settings, once known)."""
    settings = cls.__toast_settings__
    if settings is None:  # abstract
        return bool(_owned_routes(cls))
    owns = settings.owns_children
    if owns is None:
        owns = settings.owns_children = bool(_owned_routes(cls))
    return owns


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
        delete_after_commit(
            deferred, lambda still: delete_owned(storage, still), left="owned records"
        )
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


# -- which parent instance owns a child instance (in this process) ------------------------------
#
# An owned child remembers, on its ``_toast_owner`` slot, the parent instance it was last loaded
# or written under. What that parent's identity last read or wrote tells whether the stored
# parent still references the child: a dump that puts the child in another parent's owned field
# is refused when the first parent would delete it later (it still holds it and is not dumped
# too), or already did (it dropped it: its update deleted the record).


def _no_owner_slot(model: object) -> Any:
    return getattr(model, "_toast_owner")  # noqa: B009


def _set_owner_attribute(model: object, owner: Any) -> None:
    object.__setattr__(model, "_toast_owner", owner)


_read_owner: Callable[[object], Any] = _no_owner_slot
_write_owner: Callable[[object, Any], None] = _set_owner_attribute


def use_owner_slot(slot: Any) -> None:
    """Read and write owners through ``slot``, ``ExternalBaseModel``'s member descriptor."""
    global _read_owner, _write_owner
    _read_owner = slot.__get__
    _write_owner = slot.__set__


def owner_of(model: ExternalBaseModel) -> ExternalBaseModel | None:
    """The parent instance ``model`` was last loaded or written under in an owned field.

    ``None`` too once that parent was garbage collected: no instance of this process can
    update it any more.
    """
    reference = owner_reference(model)
    return None if reference is None else reference()


def owner_reference(model: ExternalBaseModel) -> weakref.ref[ExternalBaseModel] | None:
    """What ``model``'s owner slot holds: a weak reference to its parent, or ``None``."""
    try:
        reference: weakref.ref[ExternalBaseModel] | None = _read_owner(model)
    except AttributeError:  # never owned
        return None
    return reference


def set_owner(model: ExternalBaseModel, owner: ExternalBaseModel | None) -> None:
    """Make ``owner`` the parent instance ``model`` belongs to (``None``: no parent).

    Held weakly: a strong reference back to the parent would make every loaded tree a
    cycle, left to the garbage collector instead of freed when dropped.
    """
    _write_owner(model, None if owner is None else weakref.ref(owner))


def owned_children(parent: ExternalBaseModel) -> Iterator[tuple[str, ExternalBaseModel]]:
    """Each external model held in ``parent``'s owned fields, with the field's name.

    The values are walked as the serializer meets them: lists, tuples, sets, dicts, plain models
    and dataclasses, down to the first external model (what that one owns is its own business).
    """
    from pydantic_toast._model import ExternalBaseModel

    for name in _owned_routes(type(parent)):
        stack = [parent.__dict__.get(name)]
        while stack:
            item = stack.pop()
            if isinstance(item, ExternalBaseModel):
                yield name, item
            elif isinstance(item, BaseModel):
                stack.extend(item.__dict__.values())
                stack.extend((item.__pydantic_extra__ or {}).values())
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list | tuple | set | frozenset):
                stack.extend(item)
            elif dataclasses.is_dataclass(item) and not isinstance(item, type):
                stack.extend(getattr(item, field.name) for field in dataclasses.fields(item))


def set_owner_reference(
    model: ExternalBaseModel, reference: weakref.ref[ExternalBaseModel] | None
) -> None:
    """Set what ``model``'s owner slot holds (see :func:`owner_reference`)."""
    _write_owner(model, reference)


def mark_loaded(parent: ExternalBaseModel) -> None:
    """Note that the children in ``parent``'s owned fields, just loaded with it, are its own."""
    reference = weakref.ref(parent)
    for _, child in owned_children(parent):
        _write_owner(child, reference)


def _key(model: ExternalBaseModel) -> SessionKey | None:
    from pydantic_toast._saving import identity_of

    identity = identity_of(model)
    if identity is None:
        return None
    settings = type(model)._toast_settings()
    return (settings.url(), settings.external_name, identity.id)


def still_held(
    owner: ExternalBaseModel,
    child: ExternalBaseModel,
    parsed: dict[int, dict[SessionKey, Any]] | None = None,
) -> bool:
    """Whether what ``owner`` last read or wrote references ``child`` in an owned field.

    Unknown (its JSON was not kept, as after a migrated load) counts as held. ``parsed``
    memoizes each owner's owned references by ``id(owner)``.
    """
    from pydantic_toast._saving import identity_of

    identity = identity_of(owner)
    if identity is None or identity.data is None:
        return True
    keys = None if parsed is None else parsed.get(id(owner))
    if keys is None:
        keys = owned_keys(type(owner), identity.data)
        if parsed is not None:
            parsed[id(owner)] = keys
    return _key(child) in keys


# A claim: the child, the parent whose owned field holds it in a dump, that field's name, and
# what the child's owner slot held when the dump checked it.
Claim = tuple["ExternalBaseModel", "ExternalBaseModel", str, "weakref.ref[Any] | None"]


def check_claims(
    parents: Iterable[ExternalBaseModel],
    in_dump: Collection[int],
    written: Callable[[ExternalBaseModel], bool],
    new: Callable[[ExternalBaseModel], bool],
) -> list[Claim]:
    """The children that the owned fields of ``parents`` (written by one dump) hold.

    Refuses, before anything is written, a child that another parent instance of this process
    owns and would delete: one that still references it and is not written by this dump
    without it, or one that dropped it already (its update deleted the record), unless the
    dump writes the child again.

    Args:
        parents: The owning parents this dump writes, as their fields are now.
        in_dump: ``id()`` of every model the dump met.
        written: Whether the dump writes a model's own record.
        new: Whether a model was never loaded nor written (then it has no owner, and its empty
            slot is not read: an ``AttributeError`` caught costs more than the rest).

    Raises:
        StorageUsageError: A child would be referenced by a parent after being deleted.
    """
    held: dict[int, tuple[ExternalBaseModel, ExternalBaseModel, str]] = {}
    changed: set[int] = set()
    for parent in parents:
        changed.add(id(parent))
        for field, child in owned_children(parent):
            claim = held.setdefault(id(child), (child, parent, field))
            if claim[1] is not parent:
                raise _refusal(child, parent, field, claim[1], "shared")
    claims: list[Claim] = []
    parsed: dict[int, dict[SessionKey, Any]] = {}
    for child, parent, field in held.values():
        reference = None if new(child) else owner_reference(child)
        claims.append((child, parent, field, reference))
        owner = None if reference is None else reference()
        if owner is None:
            continue
        if not still_held(owner, child, parsed):
            if not written(child):
                raise _refusal(child, parent, field, owner, "deleted")
        elif owner is parent or id(owner) in changed or _key(owner) == _key(parent):
            continue  # its own, or moved from a parent written without it by this dump
        elif id(owner) in in_dump:
            raise _refusal(child, parent, field, owner, "shared")
        else:
            raise _refusal(child, parent, field, owner, "moved")
    return claims


def _named_model(model: ExternalBaseModel) -> str:
    key = _key(model)
    return type(model).__qualname__ + ("" if key is None else f" {key[2]}")


def _refusal(
    child: ExternalBaseModel,
    parent: ExternalBaseModel,
    field: str,
    owner: ExternalBaseModel,
    why: str,
) -> StorageUsageError:
    named, new, old = _named_model(child), _named_model(parent), _named_model(owner)
    where = f"{new} holds {named} in its owned field {field!r}"
    if why == "deleted":
        reason = (
            f"{where}, but this process deleted that record when an update of {old} removed it "
            f"from its owned field: stored, {new} would reference a deleted record; nothing was "
            "written. Store the child again first (await child.asave(force=True), or "
            "pydantic_toast.dump(child, force=True)), then dump the new parent. To move an "
            "owned child, remove it from the old parent and dump both parents together, before "
            "either is dumped alone: pydantic_toast.dump([old_parent, new_parent])"
        )
    elif why == "shared":
        reason = (
            f"{where}, and {old} holds it in an owned field too: owned children must not be "
            "shared (updating or deleting either parent deletes them); nothing was written. "
            "Remove it from one of them (to move it, dump both parents together: "
            "pydantic_toast.dump([old_parent, new_parent])), or give the other a copy "
            "(child.model_copy(deep=True), a new record with copies of what it owns)"
        )
    else:
        reason = (
            f"{where}, but it is owned by {old}, whose stored record still references it: "
            f"{old}'s next update without it would delete it, leaving {new} referencing a "
            "deleted record; nothing was written. To move an owned child, remove it from the "
            "old parent and dump both parents together: "
            "pydantic_toast.dump([old_parent, new_parent]) (or await pydantic_toast.adump(...))"
        )
    return StorageUsageError(reason)
