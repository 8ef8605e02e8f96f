"""The URL-scheme registry: which backend class serves which scheme.

Built-in backends are registered by import path, so ``import pydantic_toast`` imports no
database driver; a backend's module is imported the first time a model uses its scheme.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import threading

from pydantic_toast._exceptions import StorageConfigurationError
from pydantic_toast.backends.base import REQUIRED_METHODS, StorageBackend

__all__ = [
    "EXTRA_REQUIRES",
    "backend_class_for",
    "known_schemes",
    "missing_extra",
    "register_backend",
]

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*$")

# scheme -> ("module:Class", the extra that installs its driver)
_BUILTINS: dict[str, tuple[str, str | None]] = {
    "memory": ("pydantic_toast.backends.memory:MemoryBackend", None),
    "sqlite": ("pydantic_toast.backends.sqlite:SQLiteBackend", "sqlite"),
    "sqlite+aiosqlite": ("pydantic_toast.backends.sqlite:SQLiteBackend", "sqlite"),
    "postgresql": ("pydantic_toast.backends.postgresql:PostgreSQLBackend", "postgresql"),
    "postgres": ("pydantic_toast.backends.postgresql:PostgreSQLBackend", "postgresql"),
    "postgresql+asyncpg": ("pydantic_toast.backends.postgresql:PostgreSQLBackend", "postgresql"),
    "redis": ("pydantic_toast.backends.redis:RedisBackend", "redis"),
    "rediss": ("pydantic_toast.backends.redis:RedisBackend", "redis"),
}
# extra -> the modules it installs. Backends import some drivers lazily (aiosqlite inside
# SQLAlchemy's dialect), so importing the backend module alone does not prove they are there.
EXTRA_REQUIRES: dict[str, tuple[str, ...]] = {
    "sqlite": ("sqlalchemy", "aiosqlite", "alembic"),
    "postgresql": ("sqlalchemy", "asyncpg", "alembic"),
    "redis": ("redis",),
    "fastapi": ("fastapi",),
}
_registered: dict[str, type[StorageBackend]] = {}
_lock = threading.Lock()


def register_backend(scheme: str, backend_class: type[StorageBackend]) -> None:
    """Make ``scheme://...`` storage URLs use ``backend_class``.

    Register before defining the models that use the scheme: a model's URL is checked when its
    class is defined. Registering a scheme again replaces the previous class, built-ins included.

    Args:
        scheme: The URL scheme, such as ``"file"`` or ``"s3"`` (lowercase).
        backend_class: A complete :class:`StorageBackend` subclass.

    Raises:
        StorageConfigurationError: The scheme is malformed, or the class is not a complete
            backend (the message lists the missing methods).
    """
    if not isinstance(scheme, str) or not _SCHEME.match(scheme):
        raise StorageConfigurationError(
            f"cannot register scheme {scheme!r}: a scheme is lowercase letters, digits, '+', '-' "
            "or '.', starting with a letter (write 'file', not 'file://')"
        )
    _check_backend_class(backend_class)
    with _lock:
        _registered[scheme] = backend_class


def backend_class_for(scheme: str) -> type[StorageBackend]:
    """The backend class for ``scheme``, importing a built-in backend on first use.

    Raises:
        StorageConfigurationError: The scheme is unknown, or its optional driver is missing.
    """
    registered = _registered.get(scheme)
    if registered is not None:
        return registered
    builtin = _BUILTINS.get(scheme)
    if builtin is None:
        raise StorageConfigurationError(
            f"no storage backend is registered for scheme {scheme!r}: use one of "
            f"{', '.join(known_schemes())}, or register yours first with "
            f"register_backend({scheme!r}, YourBackend)"
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
        ) from exc
    backend_class: type[StorageBackend] = getattr(module, class_name)
    return backend_class


def missing_extra(scheme: str) -> tuple[str, str] | None:
    """For a built-in scheme whose driver is not installed: (the missing module, the extra).

    ``None`` when everything is installed, or when the scheme is not built in.
    """
    if scheme in _registered or scheme not in _BUILTINS:
        return None
    extra = _BUILTINS[scheme][1]
    if extra is None:
        return None
    for module in EXTRA_REQUIRES.get(extra, ()):
        if importlib.util.find_spec(module) is None:
            return module, extra
    return None


def known_schemes() -> list[str]:
    """Every scheme with a backend: built-in and registered, sorted."""
    return sorted(set(_BUILTINS) | set(_registered))


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
