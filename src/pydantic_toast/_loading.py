"""Loading: fetching the records behind references, one round trip per nesting level.

Validation is synchronous Pydantic code, so records are fetched *before* it runs: the
references in the input are gathered, fetched in one ``load_records`` call per store, the
references inside those records are gathered and fetched in the next round, and so on. The
records wait in a :class:`LoadSession`; each external model's validator takes its record from
there. A reference the prefetch could not foresee is fetched on its own.

Pydantic builds instances bottom-up and nests one model's validation inside its parent's. So
the session builds the records reachable from the one asked for leaves first, without
recursion (:meth:`LoadSession.prebuild`): a parent's validation then finds its children built
and nests no deeper than one model, however long the chain. Each record becomes one instance
per session, shared by every reference to it. A reference back to a record still being built
(a cycle such as ``a.next = b; b.next = a``) gets a placeholder instance, which is filled in
with the record's fields once they are validated: the cycle comes back as the same objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, TypeVar
from uuid import UUID

from pydantic_toast._codecs import CodecSettings, any_encoded, is_encoded
from pydantic_toast._exceptions import ExternalStorageError
from pydantic_toast._fidelity import decode_stored
from pydantic_toast._offload import load_offloaded
from pydantic_toast._records import RecordKey, StoredRecord
from pydantic_toast._reference import ParsedReference, parse_reference
from pydantic_toast._schema_walk import external_models
from pydantic_toast._url import StorageURL
from pydantic_toast.runtime.storage import Storage, current_storage

__all__ = [
    "LoadSession",
    "Route",
    "active_session",
    "decoded",
    "fill",
    "find_references",
    "read_one",
    "routes_in",
    "wanted_for",
]

SessionKey = tuple[StorageURL, str, UUID]
"""``(storage URL, class_name, id)``."""

T = TypeVar("T")

Wanted = dict[StorageURL, set[RecordKey]]
"""Record keys to fetch, grouped by storage URL."""

_active_session: ContextVar[LoadSession | None] = ContextVar(
    "pydantic_toast_load_session", default=None
)


@dataclass(frozen=True, slots=True)
class Route:
    """Where records of one stored class name are looked for while loading a tree.

    Attributes:
        urls: The stores of the model classes, reachable from the type being validated, that
            are stored under that name.
        nested: Whether any of those classes can hold references itself.
        models: The model class stored under that name in each of ``urls`` (same order).
    """

    urls: tuple[StorageURL, ...]
    nested: bool
    models: tuple[Any, ...] = ()


Routes = dict[str, Route]
"""Stored class name -> :class:`Route`, for the classes a type can hold."""


def routes_in(schema: Any) -> Routes:
    """The routes of every external model class reachable in a core ``schema``.

    Only these stores are ever queried while loading a value of that type, whatever other
    classes share a stored name elsewhere.
    """
    found: dict[str, tuple[list[StorageURL], bool, list[Any]]] = {}
    for model in external_models(schema):
        settings = model.__toast_settings__
        if settings is None:  # abstract: no records of its own
            continue
        try:
            url = settings.url()
        except ExternalStorageError:
            continue  # env var unset: the model's own validator reports it
        urls, nested, models = found.setdefault(settings.external_name, ([], False, []))
        if url not in urls:
            urls.append(url)
            models.append(model)
        found[settings.external_name] = (urls, nested or model._toast_has_nested(), models)
    return {
        name: Route(tuple(urls), nested, tuple(models))
        for name, (urls, nested, models) in found.items()
    }


class LoadSession:
    """Records fetched ahead of validation, and the instances built from them.

    ``None`` in :attr:`records` marks a record that does not exist.

    Args:
        routes: Where each stored class name reachable from the validated type is looked for.
        storage: The storage to read through (the current one by default).
    """

    __slots__ = ("building", "ids", "instances", "placeholders", "records", "routes", "storage")

    def __init__(self, routes: Routes, storage: Storage | None = None) -> None:
        self.records: dict[SessionKey, StoredRecord | None] = {}
        # The ids of the references parsed so far, by their text: a reference's validator finds
        # the very UUID its prefetch parsed (see parse_reference).
        self.ids: dict[str, UUID] = {}
        self.routes = routes
        self.storage = storage if storage is not None else current_storage()
        # Each record's instance, once built; the records being built (or waiting for their
        # children to be); placeholders handed out for those, to be filled in when built.
        self.instances: dict[SessionKey, Any] = {}
        self.building: set[SessionKey] = set()
        self.placeholders: dict[SessionKey, Any] = {}

    def reuse(self, key: SessionKey, cls: type[T]) -> T | None:
        """The instance of ``key`` already built, or a placeholder if it is being built."""
        instance = self.instances.get(key)
        if isinstance(instance, cls):
            return instance
        if key in self.building:  # a cycle back to a record under construction
            placeholder = self.placeholders.get(key)
            if not isinstance(placeholder, cls):
                placeholder = self.placeholders[key] = cls.__new__(cls)
            return placeholder
        return None

    def built(self, key: SessionKey, instance: T) -> T:
        """Record ``instance`` as ``key``'s; returns the placeholder, filled in, if one exists."""
        placeholder = self.placeholders.pop(key, None)
        if placeholder is not None and type(placeholder) is type(instance):
            fill(placeholder, instance)
            instance = placeholder
        self.instances[key] = instance
        return instance

    def prebuild(self, root: SessionKey, *, within_hook: bool) -> None:
        """Build the fetched records reachable from ``root`` (itself included), leaves first.

        An iterative depth-first walk: a record is built after everything it references, so
        validating it finds its children in :attr:`instances`. References back to a record on
        the current path (cycles) meet it in :attr:`building` and get a placeholder. Records
        below the root are built as their reference hook would build them (they reach their
        parents through it); the root as ``within_hook`` says.
        """
        stack: list[tuple[SessionKey, bool]] = [(root, False)]
        walked: set[SessionKey] = set()
        while stack:
            key, children_done = stack.pop()
            if children_done:
                model = self.model_for(key)
                record = self.records.get(key)
                if model is not None and record is not None and key not in self.instances:
                    model._toast_build_record(
                        key, record, self, within_hook=within_hook or key != root
                    )
                self.building.discard(key)
                continue
            if key in walked or key in self.instances:
                continue
            record = self.records.get(key)
            if record is None:
                continue
            walked.add(key)
            self.building.add(key)
            stack.append((key, True))
            route = self.routes.get(key[1])
            if route is not None and route.nested:
                for name, id in find_references(decode_stored(record), self.ids):
                    child_route = self.routes.get(name)
                    for url in child_route.urls if child_route is not None else ():
                        child = (url, name, id)
                        if child not in walked and self.records.get(child) is not None:
                            stack.append((child, False))

    def model_for(self, key: SessionKey) -> Any:
        """The model class whose records ``key`` names, or ``None`` when unknown."""
        route = self.routes.get(key[1])
        if route is None or len(route.models) != len(route.urls):
            return None
        for url, model in zip(route.urls, route.models, strict=True):
            if url == key[0]:
                return model
        return None

    async def fetch(self, wanted: Wanted, *, follow: bool) -> None:
        """Fetch ``wanted``; with ``follow``, then the references inside them, level by level."""
        while wanted:
            urls = list(wanted)
            batches = [list(wanted[url]) for url in urls]
            if len(urls) == 1:  # no task per read when there is one store
                results = [await self._read(urls[0], batches[0])]
            else:
                results = await asyncio.gather(
                    *(self._read(url, keys) for url, keys in zip(urls, batches, strict=True))
                )
            fetched: list[StoredRecord] = []
            for url, keys, records in zip(urls, batches, results, strict=True):
                records = await self._decoded(url, keys, records)
                for (class_name, id), record in zip(keys, records, strict=True):
                    if record is not None:
                        fetched.append(record)
                    self.records[(url, class_name, id)] = record
            wanted = {}
            if follow:
                for record in fetched:
                    route = self.routes.get(record.class_name)
                    if route is not None and route.nested:
                        data = decode_stored(record)
                        self.add_unfetched(wanted, find_references(data, self.ids))

    def add_unfetched(self, wanted: Wanted, references: Iterator[ParsedReference]) -> None:
        """Add to ``wanted`` the records behind ``references`` not fetched yet."""
        for name, id in references:
            route = self.routes.get(name)
            if route is None:
                continue  # no class of the validated type is stored under it: its validator says so
            for url in route.urls:
                if (url, name, id) not in self.records:
                    wanted.setdefault(url, set()).add((name, id))

    async def _decoded(
        self, url: StorageURL, keys: list[RecordKey], records: list[StoredRecord | None]
    ) -> list[StoredRecord | None]:
        """``records`` with encoded ones decoded (offloaded payloads fetched concurrently)."""
        return await decoded(
            self.storage, records, lambda index: _codec_of(self.model_for((url, *keys[index])))
        )

    async def _read(self, url: StorageURL, keys: list[RecordKey]) -> list[StoredRecord | None]:
        backend = await self.storage.connected(url)
        return await backend.load_records(keys)

    def activate(self) -> Any:
        """Make this the session validators read from; returns the token for :meth:`deactivate`."""
        return _active_session.set(self)

    @staticmethod
    def deactivate(token: Any) -> None:
        """Undo :meth:`activate`."""
        _active_session.reset(token)


def fill(placeholder: object, instance: object) -> None:
    """Give ``placeholder`` the state of ``instance`` (same class): every slot and ``__dict__``."""
    for klass in type(instance).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot == "__weakref__":
                continue
            name = f"_{klass.__name__.lstrip('_')}{slot}" if _mangled(slot) else slot
            try:
                value = object.__getattribute__(instance, name)
            except AttributeError:
                continue
            object.__setattr__(placeholder, name, value)


def _mangled(name: str) -> bool:
    return name.startswith("__") and not name.endswith("__")


def active_session() -> LoadSession | None:
    """The session of the validation running now, if any."""
    return _active_session.get()


def wanted_for(session: LoadSession, value: object) -> Wanted:
    """The records that the references anywhere inside ``value`` point to."""
    wanted: Wanted = {}
    session.add_unfetched(wanted, find_references(value, session.ids))
    return wanted


def find_references(value: object, ids: dict[str, UUID] | None = None) -> Iterator[ParsedReference]:
    """Every well-formed reference inside nested dicts, lists and tuples of ``value``.

    ``ids``: the memo of parsed ids to use and fill (see :func:`parse_reference`).
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            try:
                reference = parse_reference(item, ids)
            except ExternalStorageError:
                continue  # malformed: its validator reports it
            if reference is not None:
                yield reference
            else:
                stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


async def read_one(
    storage: Storage, url: StorageURL, class_name: str, id: UUID, model: Any = None
) -> StoredRecord | None:
    """One record, read directly (no prefetch needed for models without nested ones).

    ``model``, the class stored under ``class_name`` there, gives the limits to decode with.
    """
    backend = storage.ready(url) or await storage.connected(url)
    (record,) = await backend.load_records([(class_name, id)])
    if record is not None and is_encoded(record.data):
        record = await load_offloaded(storage, record, _codec_of(model))
    return record


async def decoded(
    storage: Storage,
    records: list[StoredRecord | None],
    codec_at: Callable[[int], CodecSettings | None],
) -> list[StoredRecord | None]:
    """``records`` with the encoded ones decoded, offloaded payloads fetched concurrently.

    ``codec_at(index)`` gives the codec of the model reading ``records[index]``.
    """
    # Most batches hold no encoded record: one pass in C says so (a Python call per record
    # costs a batch load of 10 fields about 3% more).
    if not any_encoded(map(_DATA, filter(None, records))):
        return records
    encoded = [
        (index, record)
        for index, record in enumerate(records)
        if record is not None and is_encoded(record.data)
    ]
    done = await asyncio.gather(
        *(load_offloaded(storage, record, codec_at(index)) for index, record in encoded)
    )
    records = list(records)
    for (index, _), record in zip(encoded, done, strict=True):
        records[index] = record
    return records


_DATA = attrgetter("data")


def _codec_of(model: Any) -> CodecSettings | None:
    return None if model is None else model._toast_settings().codec
