"""Which model class is stored under which name, in which store.

Two live classes must not share a stored name in one store: their records would mix. The
catalog compares stores by identity (host, port, database, key prefix; see
:meth:`StorageBackend.store_identity`), not by URL spelling, and holds classes weakly, so a
class that was garbage collected frees its name.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Hashable
from typing import Any

from pydantic_toast._exceptions import StorageConfigurationError

__all__ = ["NameCatalog"]


def _qualified(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class NameCatalog:
    """Stored names claimed by model classes, per store."""

    def __init__(self) -> None:
        self._holders: dict[tuple[Hashable, str], weakref.ref[type[Any]]] = {}
        self._by_name: dict[str, weakref.WeakSet[type[Any]]] = {}
        self._lock = threading.Lock()

    def claim(self, cls: type[Any], store: Hashable, name: str, where: str) -> None:
        """Record that ``cls`` stores its records as ``name`` in ``store``.

        A class redefined under the same module and qualified name (a reloaded module) takes
        the name over.

        Raises:
            StorageConfigurationError: Another live class holds ``name`` in that store.
        """
        holder = self._holder(store, name)
        if holder is not None and holder is not cls and _qualified(holder) != _qualified(cls):
            del holder
            gc.collect()  # a collectable class (say, one defined inside an ended test) frees it
            holder = self._holder(store, name)
        if holder is not None and holder is not cls and _qualified(holder) != _qualified(cls):
            raise StorageConfigurationError(
                f"{cls.__qualname__} would be stored as {name!r} in {where}, where "
                f"{_qualified(holder)} is already stored under that name: give one of them "
                "another name with ExternalConfigDict(external_name='...')"
            )
        with self._lock:
            self._holders[(store, name)] = weakref.ref(cls)
            self._by_name.setdefault(name, weakref.WeakSet()).add(cls)

    def classes_named(self, name: str) -> list[type[Any]]:
        """Every live class stored under ``name``, in any store."""
        with self._lock:
            return list(self._by_name.get(name, ()))

    def classes(self) -> list[type[Any]]:
        """Every live class that claimed a stored name."""
        with self._lock:
            return list({id(c): c for held in self._by_name.values() for c in held}.values())

    def _holder(self, store: Hashable, name: str) -> type[Any] | None:
        with self._lock:
            reference = self._holders.get((store, name))
        return None if reference is None else reference()
