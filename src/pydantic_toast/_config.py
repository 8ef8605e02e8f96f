"""``ExternalConfigDict`` and the per-class settings checked when a model class is defined."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from pydantic import ConfigDict

from pydantic_toast._exceptions import ExternalStorageError, StorageConfigurationError
from pydantic_toast._url import ENV_PREFIX, StorageURL, check_env_spec, mask_url, resolve_storage
from pydantic_toast.backends.registry import backend_class_for

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "ExternalConfigDict",
    "ModelSettings",
    "classes_named",
    "settings_for",
    "storages_named",
]

_RESERVED_FIELD = "class_name"


class ExternalConfigDict(ConfigDict, total=False):
    """Pydantic's ``ConfigDict`` plus the storage settings of an external model.

    Attributes:
        storage: Where records go: a URL such as ``"sqlite:///data.db"``,
            ``"postgresql://app@db:5432/shop"``, ``"redis://cache:6379/0"`` or ``"memory://"``;
            or ``"env:NAME"`` to read the URL from environment variable ``NAME`` at first use.
        schema_version: The version written with every record (default 1). Bump it when the
            fields change incompatibly and override ``migrate_stored_data`` to upgrade old data.
        external_name: The class name stored and put in references (default: the class's
            ``__name__``). Set it when two classes with the same name share one storage.
        ttl: Seconds (or a ``timedelta``) after which a record expires, counted from its last
            write. Only backends that support expiry accept it (``redis://``, ``memory://``).
    """

    storage: str
    schema_version: int
    external_name: str
    ttl: float | timedelta


@dataclass(slots=True)
class ModelSettings:
    """What pydantic-toast knows about one concrete external model class."""

    storage: str
    external_name: str
    schema_version: int
    ttl: float | None
    _url: str | None = field(default=None, repr=False)

    def url(self) -> str:
        """The storage URL, resolving ``env:NAME`` the first time it is needed."""
        if self._url is None:
            url = resolve_storage(self.storage)
            if self.storage.startswith(ENV_PREFIX):
                _check_url(url, self.ttl, owner=f"storage {self.storage!r}")
            self._url = url
        return self._url


_catalog: dict[tuple[str, str], str] = {}
_names: dict[str, set[str]] = {}
_classes: dict[str, weakref.WeakSet[type[BaseModel]]] = {}
_catalog_lock = threading.Lock()


def settings_for(cls: type[BaseModel]) -> ModelSettings:
    """Check ``cls``'s configuration and register its stored name.

    Raises:
        StorageConfigurationError: The message names the class, the problem and the fix.
    """
    config = cls.model_config
    owner = cls.__qualname__
    storage = config.get("storage")
    if storage is None:
        raise StorageConfigurationError(
            f"{owner} has no storage configured: add model_config = "
            "ExternalConfigDict(storage='sqlite:///data.db') (or storage='env:DATABASE_URL'), "
            "or set __abstract__ = True in its body if it is a base for other models"
        )
    if not isinstance(storage, str):
        raise StorageConfigurationError(
            f"{owner}: storage must be a URL string, got {type(storage).__name__}"
        )
    ttl = _ttl_seconds(owner, config.get("ttl"))
    try:
        if storage.startswith(ENV_PREFIX):
            check_env_spec(storage)
        else:
            _check_url(storage, ttl, owner="")
    except StorageConfigurationError as exc:
        raise StorageConfigurationError(f"{owner}: {exc}") from exc.__cause__

    schema_version = config.get("schema_version", 1)
    if type(schema_version) is not int or schema_version < 1:
        raise StorageConfigurationError(
            f"{owner}: schema_version must be an int of 1 or more, got {schema_version!r}"
        )
    external_name = config.get("external_name", cls.__name__)
    if not isinstance(external_name, str) or not external_name:
        raise StorageConfigurationError(f"{owner}: external_name must be a non-empty string")

    for name, info in cls.model_fields.items():
        aliases = {name, info.alias, info.validation_alias, info.serialization_alias}
        if _RESERVED_FIELD in aliases:
            raise StorageConfigurationError(
                f"{owner} has a field {name!r} named or aliased 'class_name', which would make "
                "its data look like a reference {'class_name': ..., 'id': ...}: rename the field"
            )

    _register_name(cls, storage, external_name)
    return ModelSettings(storage, external_name, schema_version, ttl)


def classes_named(external_name: str) -> list[type[BaseModel]]:
    """Every live model class stored under ``external_name``."""
    with _catalog_lock:
        return list(_classes.get(external_name, ()))


def storages_named(external_name: str) -> list[str]:
    """The storage settings of every model class stored under ``external_name``."""
    with _catalog_lock:
        return sorted(_names.get(external_name, ()))


def _check_url(raw: str, ttl: float | None, *, owner: str) -> None:
    prefix = f"{owner}: " if owner else ""
    url = StorageURL.parse(raw)
    try:
        backend_class = backend_class_for(url.scheme)
        backend_class.check_url(url)
    except ExternalStorageError as exc:
        raise StorageConfigurationError(f"{prefix}{exc}") from exc.__cause__
    if ttl is not None and not backend_class.supports_ttl:
        raise StorageConfigurationError(
            f"{prefix}ttl is set but {backend_class.__name__} ({mask_url(raw)}) does not expire "
            "records: remove ttl or use redis:// or memory://"
        )


def _ttl_seconds(owner: str, ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        ttl = ttl.total_seconds()
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
        raise StorageConfigurationError(
            f"{owner}: ttl must be a positive number of seconds or a timedelta, got {ttl!r}"
        )
    return float(ttl)


def _register_name(cls: type[BaseModel], storage: str, external_name: str) -> None:
    qualified = f"{cls.__module__}.{cls.__qualname__}"
    with _catalog_lock:
        holder = _catalog.get((storage, external_name))
        if holder is not None and holder != qualified:
            raise StorageConfigurationError(
                f"{cls.__qualname__} would be stored as {external_name!r} in {mask_url(storage)}, "
                f"where {holder} is already stored under that name: give one of them "
                "another name with ExternalConfigDict(external_name='...')"
            )
        _catalog[(storage, external_name)] = qualified
        _names.setdefault(external_name, set()).add(storage)
        _classes.setdefault(external_name, weakref.WeakSet()).add(cls)
