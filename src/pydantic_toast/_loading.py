"""Loading: fetching the records behind references, one round trip per nesting level.

Validation is synchronous Pydantic code, so records are fetched *before* it runs: the
references in the input are gathered, fetched in one ``load_records`` call per store, the
references inside those records are gathered and fetched in the next round, and so on. The
records wait in a :class:`LoadSession`; each external model's validator takes its record from
there. A reference the prefetch could not foresee is fetched on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any
from uuid import UUID

import pydantic_core

from pydantic_toast._config import classes_named, storages_named
from pydantic_toast._exceptions import ExternalStorageError
from pydantic_toast._records import RecordKey, StoredRecord
from pydantic_toast._reference import ExternalReference, as_reference
from pydantic_toast._url import resolve_storage
from pydantic_toast.runtime.connections import backend_for

__all__ = ["LoadSession", "active_session", "find_references", "read_one", "wanted_for"]

SessionKey = tuple[str, str, UUID]
"""``(storage URL, class_name, id)``."""

Wanted = dict[str, set[RecordKey]]
"""Record keys to fetch, grouped by storage URL."""

_active_session: ContextVar[LoadSession | None] = ContextVar(
    "pydantic_toast_load_session", default=None
)


class LoadSession:
    """Records fetched ahead of validation; ``None`` marks a record that does not exist."""

    __slots__ = ("_nested", "_urls", "records")

    def __init__(self) -> None:
        self.records: dict[SessionKey, StoredRecord | None] = {}
        self._urls: dict[str, list[str]] = {}  # class name -> storage URLs
        self._nested: dict[str, bool] = {}  # class name -> can hold references

    async def fetch(self, wanted: Wanted, *, follow: bool) -> None:
        """Fetch ``wanted``; with ``follow``, then the references inside them, level by level."""
        while wanted:
            urls = list(wanted)
            batches = [list(wanted[url]) for url in urls]
            if len(urls) == 1:  # no task per read when there is one store
                results = [await _read(urls[0], batches[0])]
            else:
                results = await asyncio.gather(
                    *(_read(url, keys) for url, keys in zip(urls, batches, strict=True))
                )
            fetched: list[StoredRecord] = []
            for url, keys, records in zip(urls, batches, results, strict=True):
                for (class_name, id), record in zip(keys, records, strict=True):
                    self.records[(url, class_name, id)] = record
                    if record is not None:
                        fetched.append(record)
            wanted = {}
            if follow:
                for record in fetched:
                    if self._may_hold_references(record.class_name):
                        data = pydantic_core.from_json(record.data, allow_inf_nan=True)
                        self._add_unfetched(wanted, find_references(data))

    def _add_unfetched(self, wanted: Wanted, references: Iterator[ExternalReference]) -> None:
        for reference in references:
            name = reference.class_name
            urls = self._urls.get(name)
            if urls is None:
                urls = self._urls[name] = _urls_named(name)
            for url in urls:
                if (url, name, reference.id) not in self.records:
                    wanted.setdefault(url, set()).add((name, reference.id))

    def _may_hold_references(self, class_name: str) -> bool:
        nested = self._nested.get(class_name)
        if nested is None:
            nested = self._nested[class_name] = any(
                model._toast_has_nested()  # type: ignore[attr-defined]
                for model in classes_named(class_name)
            )
        return nested

    def activate(self) -> Any:
        """Make this the session validators read from; returns the token for :meth:`deactivate`."""
        return _active_session.set(self)

    @staticmethod
    def deactivate(token: Any) -> None:
        """Undo :meth:`activate`."""
        _active_session.reset(token)


def active_session() -> LoadSession | None:
    """The session of the validation running now, if any."""
    return _active_session.get()


def wanted_for(value: object) -> Wanted:
    """The records that the references anywhere inside ``value`` point to."""
    wanted: Wanted = {}
    LoadSession()._add_unfetched(wanted, find_references(value))
    return wanted


def find_references(value: object) -> Iterator[ExternalReference]:
    """Every well-formed reference inside nested dicts, lists and tuples of ``value``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            try:
                reference = as_reference(item)
            except ExternalStorageError:
                continue  # malformed: its validator reports it
            if reference is not None:
                yield reference
            else:
                stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, ExternalReference):
            yield item


async def read_one(url: str, class_name: str, id: UUID) -> StoredRecord | None:
    """One record, read directly (no prefetch needed for models without nested ones)."""
    backend = await backend_for(url)
    (record,) = await backend.load_records([(class_name, id)])
    return record


async def _read(url: str, keys: list[RecordKey]) -> list[StoredRecord | None]:
    backend = await backend_for(url)
    return await backend.load_records(keys)


def _urls_named(class_name: str) -> list[str]:
    urls = []
    for storage in storages_named(class_name):
        try:
            urls.append(resolve_storage(storage))
        except ExternalStorageError:
            continue  # env var unset: the model's own validator reports it
    return urls
