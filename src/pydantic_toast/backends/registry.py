"""The URL-scheme registry: which backend class serves which scheme.

Each :class:`~pydantic_toast.Storage` owns one :class:`BackendRegistry`. Built-in backends are
known by import path, so ``import pydantic_toast`` imports no database driver; a backend's module
is imported the first time a model uses its scheme. Installed packages add schemes through
entry points in the ``pydantic_toast.backends`` group (name: the scheme, value:
``module:Class``), loaded the same way, on first use.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import threading
from typing import TYPE_CHECKING

from pydantic_toast._exceptions import StorageConfigurationError, UnknownSchemeError, shorten
from pydantic_toast.backends.base import REQUIRED_METHODS, Capability, StorageBackend

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ENTRY_POINT_GROUP",
    "EXTRA_REQUIRES",
    "POSTGRESQL_SCHEMES",
    "BackendRegistry",
    "backend_class_for",
    "known_schemes",
    "missing_extra",
    "sqlalchemy_driver_hint",
]

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*$")

ENTRY_POINT_GROUP = "pydantic_toast.backends"
"""The entry-point group of installed backends: each entry's name is its URL scheme."""

POSTGRESQL_SCHEMES = (
    "postgresql",
    "postgres",
    "postgresql+asyncpg",
    # SQLAlchemy's libpq drivers: their URLs' options are libpq's, which the backend reads
    # the same way (it connects with asyncpg whatever the URL names).
    "postgresql+psycopg",
    "postgresql+psycopg2",
)
"""The schemes of ``postgresql://`` URLs: libpq-style, as SQLAlchemy configurations write them."""

# scheme -> ("module:Class", the extra that installs its driver)
_BUILTINS: dict[str, tuple[str, str | None]] = {
    "memory": ("pydantic_toast.backends.memory:MemoryBackend", None),
    "sqlite": ("pydantic_toast.backends.sqlite:SQLiteBackend", "sqlite"),
    "sqlite+aiosqlite": ("pydantic_toast.backends.sqlite:SQLiteBackend", "sqlite"),
    **dict.fromkeys(
        POSTGRESQL_SCHEMES, ("pydantic_toast.backends.postgresql:PostgreSQLBackend", "postgresql")
    ),
    "redis": ("pydantic_toast.backends.redis:RedisBackend", "redis"),
    "rediss": ("pydantic_toast.backends.redis:RedisBackend", "redis"),
    "s3": ("pydantic_toast.backends.s3:S3Backend", "s3"),
    "redis+cluster": ("pydantic_toast.backends.redis_cluster:RedisClusterBackend", "redis"),
    "rediss+cluster": ("pydantic_toast.backends.redis_cluster:RedisClusterBackend", "redis"),
    "redis+sentinel": ("pydantic_toast.backends.redis_sentinel:RedisSentinelBackend", "redis"),
}
# extra -> the modules it installs. Backends import some drivers lazily (aiosqlite inside
# SQLAlchemy's dialect), so importing the backend module alone does not prove they are there.
EXTRA_REQUIRES: dict[str, tuple[str, ...]] = {
    "sqlite": ("sqlalchemy", "aiosqlite", "alembic"),
    "postgresql": ("sqlalchemy", "asyncpg", "alembic"),
    "redis": ("redis",),
    "s3": ("aiobotocore", "botocore", "aiohttp"),
    "fastapi": ("fastapi",),
}


class BackendRegistry:
    """Backend classes by URL scheme: the built-ins plus those registered here."""

    def __init__(self, registered: Mapping[str, type[StorageBackend]] | None = None) -> None:
        self._registered: dict[str, type[StorageBackend]] = dict(registered or {})
        self._removed: set[str] = set()
        self._lock = threading.Lock()

    def copy(self) -> BackendRegistry:
        """A registry that starts with this one's registrations."""
        with self._lock:
            copy = BackendRegistry(self._registered)
            copy._removed = set(self._removed)
        return copy

    def register(self, scheme: str, backend_class: type[StorageBackend]) -> None:
        """Make ``scheme://...`` storage URLs use ``backend_class``.

        Register before defining the models that use the scheme: a model's URL is checked when
        its class is defined. Registering a scheme again replaces the previous class, built-ins
        included.

        Raises:
            StorageConfigurationError: The scheme is malformed, or the class is not a complete
                backend (the message lists the missing methods).
        """
        if not isinstance(scheme, str) or not _SCHEME.match(scheme):
            raise StorageConfigurationError(
                f"cannot register scheme {scheme!r}: a scheme is lowercase letters, digits, '+', "
                "'-' or '.', starting with a letter (write 'file', not 'file://')"
            )
        _check_backend_class(backend_class)
        with self._lock:
            self._registered[scheme] = backend_class
            self._removed.discard(scheme)

    def unregister(self, scheme: str) -> None:
        """Forget ``scheme`` (a built-in or installed one too); models defined later cannot use it.

        Raises:
            StorageConfigurationError: No backend serves ``scheme``.
        """
        installed = any(entry.name == scheme for entry in _entry_points())
        with self._lock:
            if scheme not in self._registered and (
                (scheme not in _BUILTINS and not installed) or scheme in self._removed
            ):
                raise StorageConfigurationError(f"no backend is registered for {scheme!r}")
            self._registered.pop(scheme, None)
            if scheme in _BUILTINS or installed:
                self._removed.add(scheme)

    def class_for(self, scheme: str) -> type[StorageBackend]:
        """The backend class for ``scheme``, importing a built-in backend on first use.

        A scheme neither registered nor built in is looked up among the installed packages'
        entry points (:data:`ENTRY_POINT_GROUP`); the class found is checked as
        :meth:`register` checks it, and kept.

        Raises:
            UnknownSchemeError: No backend serves the scheme.
            StorageConfigurationError: The scheme's optional driver is missing, or its
                installed entry point cannot be loaded or is not a complete backend.
        """
        registered = self._registered.get(scheme)
        if registered is not None:
            return registered
        builtin = None if scheme in self._removed else _BUILTINS.get(scheme)
        if builtin is None and scheme not in self._removed:
            installed = _installed_backend(scheme)
            if installed is not None:
                with self._lock:  # a concurrent first use keeps the class loaded first
                    return self._registered.setdefault(scheme, installed)
        if builtin is None:
            close = difflib.get_close_matches(scheme, self.schemes(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if scheme == "rediss+sentinel":  # not a typo: redis+sentinel would drop TLS
                hint = (
                    " (TLS through Redis Sentinel is not supported: redis+sentinel:// does not "
                    "encrypt; use rediss:// to the primary, or rediss+cluster://)"
                )
            elif (driver := sqlalchemy_driver_hint(scheme)) is not None:
                hint = f" ({driver})"
            raise UnknownSchemeError(
                f"no storage backend is registered for scheme {shorten(scheme, 30)!r}{hint}: "
                f"use one of {', '.join(self.schemes())}, or register yours first with "
                f"register_backend({shorten(scheme, 30)!r}, YourBackend) (or install a package "
                f"declaring it in the {ENTRY_POINT_GROUP!r} entry-point group)",
                scheme=scheme,
            )
        path, extra = builtin
        missing = missing_extra(scheme)
        if missing is not None:
            driver, needed = missing
            raise StorageConfigurationError(
                f"the {scheme}:// backend needs {driver}, which is not installed: "
                f"run pip install 'pydantic-toast[{needed}]'"
            )
        module_name, class_name = path.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise StorageConfigurationError(
                f"the {scheme}:// backend needs a driver that is not installed ({exc.name}): "
                f"run pip install 'pydantic-toast[{extra}]'"
            ) from None
        backend_class: type[StorageBackend] = getattr(module, class_name)
        return backend_class

    def schemes(self) -> list[str]:
        """Every scheme with a backend, sorted."""
        installed = {entry.name for entry in _entry_points()}
        with self._lock:
            return sorted((set(_BUILTINS) | installed) - self._removed | set(self._registered))


def missing_extra(scheme: str) -> tuple[str, str] | None:
    """For a built-in scheme whose driver is not installed: (the missing module, the extra).

    ``None`` when everything is installed, or when the scheme is not built in.
    """
    if scheme not in _BUILTINS:
        return None
    extra = _BUILTINS[scheme][1]
    if extra is None:
        return None
    for module in EXTRA_REQUIRES.get(extra, ()):
        if importlib.util.find_spec(module) is None:
            return module, extra
    return None


def sqlalchemy_driver_hint(scheme: str) -> str | None:
    """For a ``postgresql+driver`` scheme no backend serves: what to write instead."""
    if not scheme.startswith(("postgresql+", "postgres+")):  # copied from SQLAlchemy
        return None
    return (
        "a SQLAlchemy driver this library does not use: it connects with asyncpg and reads "
        f"libpq-style options such as sslmode=; write the URL with postgresql:// instead of "
        f"{shorten(scheme, 30)}://, and its options as libpq takes them"
    )


def backend_class_for(scheme: str) -> type[StorageBackend]:
    """The backend class for ``scheme`` in the current storage's registry."""
    from pydantic_toast.runtime.storage import current_storage

    return current_storage().registry.class_for(scheme)


def known_schemes() -> list[str]:
    """Every scheme with a backend in the current storage's registry, sorted."""
    from pydantic_toast.runtime.storage import current_storage

    return current_storage().registry.schemes()


def _entry_points() -> importlib.metadata.EntryPoints:
    """The backends installed packages declare (read from their metadata on every call)."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _installed_backend(scheme: str) -> type[StorageBackend] | None:
    """The class an installed package declares for ``scheme``, or ``None`` when none does.

    Raises:
        StorageConfigurationError: Two packages declare the scheme, the entry point cannot be
            loaded, or it does not name a complete backend class.
    """
    if not _SCHEME.match(scheme):
        return None
    found = {
        (entry.value, entry.dist.name if entry.dist else "?"): entry
        for entry in _entry_points()
        if entry.name == scheme
    }
    if not found:
        return None
    where = ", ".join(f"{value!r} from {package}" for value, package in sorted(found))
    if len({value for value, _ in found}) > 1:
        raise StorageConfigurationError(
            f"installed packages declare different backends for scheme {scheme!r} ({where}): "
            f"uninstall one, or choose with register_backend({scheme!r}, TheBackend)"
        )
    entry = next(iter(found.values()))
    try:
        backend_class = entry.load()
    except Exception as exc:  # an import error, a typo in the entry point, its module failing
        raise StorageConfigurationError(
            f"the backend installed for scheme {scheme!r} ({where}) cannot be loaded "
            f"({type(exc).__name__}: {shorten(str(exc), 200)}): fix or reinstall that package"
        ) from exc
    try:
        _check_backend_class(backend_class)
    except StorageConfigurationError as exc:
        raise StorageConfigurationError(
            f"the backend installed for scheme {scheme!r} ({where}) is refused: {exc}"
        ) from None
    result: type[StorageBackend] = backend_class
    return result


def _check_backend_class(backend_class: object) -> None:
    if not isinstance(backend_class, type):
        raise StorageConfigurationError(
            f"register_backend() takes a class, not {type(backend_class).__name__}"
        )
    missing = [
        name for name in REQUIRED_METHODS if not callable(getattr(backend_class, name, None))
    ]
    if not issubclass(backend_class, StorageBackend):
        detail = f"; it also lacks {', '.join(missing)}" if missing else ""
        raise StorageConfigurationError(
            f"{backend_class.__name__} is not a StorageBackend subclass{detail}: "
            "subclass pydantic_toast.StorageBackend and implement "
            f"{', '.join(REQUIRED_METHODS)}"
        )
    abstract = sorted(getattr(backend_class, "__abstractmethods__", ()))
    if abstract:
        raise StorageConfigurationError(
            f"{backend_class.__name__} is not a complete storage backend: it does not implement "
            f"{', '.join(abstract)}"
        )
    not_async = [
        name
        for name in REQUIRED_METHODS
        if not inspect.iscoroutinefunction(getattr(backend_class, name))
    ]
    if not_async:
        raise StorageConfigurationError(
            f"{backend_class.__name__}.{', '.join(not_async)} must be coroutine functions "
            "(async def)"
        )

    declared = backend_class.capabilities
    if not isinstance(declared, frozenset) or not all(isinstance(c, Capability) for c in declared):
        raise StorageConfigurationError(
            f"{backend_class.__name__}.capabilities must be a frozenset of "
            "pydantic_toast.Capability members"
        )
    unbacked = [
        f"{capability.value} (implement {' or '.join(methods)})"
        for capability, methods in _CAPABILITY_METHODS.items()
        if capability in declared
        and all(getattr(backend_class, m) is getattr(StorageBackend, m) for m in methods)
    ]
    if unbacked:
        raise StorageConfigurationError(
            f"{backend_class.__name__} declares capabilities it does not implement: "
            f"{', '.join(unbacked)}"
        )


# Each capability is backed when the class overrides one of its methods. A record's ttl and
# expected revision travel on the StoredRecord given to save_records, not in save's document.
_CAPABILITY_METHODS = {
    Capability.DELETE: ("delete",),
    Capability.LIST: ("list_records", "list_ids"),
    Capability.COUNT: ("count",),
    Capability.TTL: ("save_records",),
    Capability.REVISIONS: ("save_records",),
}
