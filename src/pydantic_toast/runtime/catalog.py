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


_FIX = "give one of them another name with ExternalConfigDict(external_name='...')"


class NameCatalog:
    """Stored names claimed by model classes, per store."""

    def __init__(self) -> None:
        # (store, name) -> (the class holding it, its qualified spelling)
        self._holders: dict[tuple[Hashable, str], tuple[weakref.ref[type[Any]], str]] = {}
        self._by_name: dict[str, weakref.WeakSet[type[Any]]] = {}
        self._lock = threading.Lock()

    def claim(
        self,
        cls: type[Any],
        store: Hashable,
        name: str,
        where: str,
        *,
        qualified: str | None = None,
        fix: str = _FIX,
    ) -> None:
        """Record that ``cls`` stores its records as ``name`` in ``store``.

        A class redefined under the same qualified spelling (a reloaded module) takes the
        name over. ``qualified`` is that spelling (default: module and qualified name; a
        generic model's parametrization passes its arguments' modules too); ``fix`` ends the
        refusal.

        Raises:
            StorageConfigurationError: Another live class holds ``name`` in that store.
        """
        if qualified is None:
            qualified = f"{cls.__module__}.{cls.__qualname__}"
        holder = self._holder(store, name)
        if holder is not None and holder[0] is not cls and holder[1] != qualified:
            del holder
            gc.collect()  # a collectable class (say, one defined inside an ended test) frees it
            holder = self._holder(store, name)
        if holder is not None and holder[0] is not cls and holder[1] != qualified:
            raise StorageConfigurationError(
                f"{qualified} would be stored as {name!r} in {where}, where {holder[1]} is "
                f"already stored under that name: {fix}"
            )
        with self._lock:
            self._holders[(store, name)] = (weakref.ref(cls), qualified)
            self._by_name.setdefault(name, weakref.WeakSet()).add(cls)

    def classes_named(self, name: str) -> list[type[Any]]:
        """Every live class stored under ``name``, in any store."""
        with self._lock:
            return list(self._by_name.get(name, ()))

    def classes(self) -> list[type[Any]]:
        """Every live class that claimed a stored name."""
        with self._lock:
            return list({id(c): c for held in self._by_name.values() for c in held}.values())

    def _holder(self, store: Hashable, name: str) -> tuple[type[Any], str] | None:
        """The live class holding ``name`` in ``store``, and its qualified spelling."""
        with self._lock:
            held = self._holders.get((store, name))
        if held is None:
            return None
        holder = held[0]()
        return None if holder is None else (holder, held[1])
