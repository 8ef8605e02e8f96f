"""``ExternalConfigDict`` and the per-class settings checked when a model class is defined."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import AliasChoices, AliasPath, ConfigDict

from pydantic_toast._class_spelling import qualified_spelling
from pydantic_toast._codecs import CodecSettings, codec_settings
from pydantic_toast._encryption import EncryptionKeys
from pydantic_toast._exceptions import ExternalStorageError, StorageConfigurationError, shorten
from pydantic_toast._url import ENV_PREFIX, MaskedURL, StorageURL, check_env_spec, resolve_storage
from pydantic_toast.backends.base import Capability
from pydantic_toast.runtime.boundary import check_url
from pydantic_toast.runtime.storage import Storage, current_storage

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

__all__ = ["ExternalConfigDict", "ModelSettings", "check_config_keys", "settings_for"]

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
            write; every write sets the expiry afresh, and an expired record is missing.
            Only backends that support expiry accept it (``redis://``, ``memory://``,
            ``postgresql://``, ``sqlite://``).
        concurrency: ``"optimistic"`` (the default): a write checks that the stored revision
            is still the one this instance read or wrote, and raises ``ConcurrencyError``
            otherwise. ``"last-write-wins"``: writes overwrite whatever is stored (and write
            a deleted record back); the only choice on a backend without revisions.
        compression: ``"zstd"`` stores records whose JSON is at least ``compress_above``
            bytes compressed, with a SHA-256 of the stored bytes checked on every load (see
            the Compression page). Default ``None``: plain JSON. Records written either way
            keep loading when the setting changes.
        compress_above: Bytes of JSON below which a record stays plain (default 2048).
        max_decompressed_size: A load refuses a compressed record that would decompress to
            more bytes than this (default 64 MiB), against decompression bombs.
        offload: A storage URL (``"s3://bucket/prefix"``) for the payloads of large records:
            the record keeps a pointer, its size and SHA-256 (TOAST-style tiering).
        offload_above: Stored bytes (after compression) from which a record is offloaded
            (default 256,000).
        encryption: ``EncryptionKeys({key id: key}, current=...)``: every record is stored
            encrypted with AES-GCM (after compression), its key id recorded; records written
            before, plain or under older ids still held, keep loading (see the Compression
            page). ``EncryptionKeys.decrypt_only(...)``: the keys only decrypt, records are
            written unencrypted (the way to turn encryption off). Default ``None``.
    """

    storage: str
    schema_version: int
    external_name: str
    ttl: float | timedelta
    concurrency: Literal["optimistic", "last-write-wins"]
    compression: Literal["zstd"] | None
    compress_above: int
    max_decompressed_size: int
    offload: str
    offload_above: int
    encryption: EncryptionKeys | None


_CONCURRENCY = ("optimistic", "last-write-wins")
# The keys this library reads, and every key Pydantic knows (its current ones, and the V1 names
# it answers with a message of its own).
_OWN_KEYS = tuple(
    key for key in ExternalConfigDict.__annotations__ if key not in ConfigDict.__optional_keys__
)
_KNOWN_KEYS = frozenset(_OWN_KEYS) | ConfigDict.__optional_keys__ | ConfigDict.__required_keys__
try:  # private to Pydantic: without them, its V1 names are simply not exempted
    from pydantic._internal._config import V2_REMOVED_KEYS, V2_RENAMED_KEYS
except ImportError:  # pragma: no cover
    pass
else:
    _KNOWN_KEYS |= frozenset(V2_REMOVED_KEYS) | frozenset(V2_RENAMED_KEYS)


def check_config_keys(cls: type[BaseModel]) -> None:
    """Refuse a ``model_config`` key that neither Pydantic nor pydantic-toast knows.

    Pydantic ignores unknown keys, so a typo such as ``storge=`` would silently leave a
    setting at its default (or, for ``storage``, fail later with a misleading message).

    Raises:
        StorageConfigurationError: Naming the key, a close match, and the valid keys.
    """
    unknown = [key for key in cls.model_config if key not in _KNOWN_KEYS]
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, [*_OWN_KEYS, *sorted(_KNOWN_KEYS)], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise StorageConfigurationError(
        f"{cls.__qualname__}: unknown model_config key {shorten(repr(key))}{hint}; "
        f"ExternalConfigDict's own keys are {', '.join(_OWN_KEYS)}, besides Pydantic's "
        "ConfigDict keys"
    )


@dataclass(slots=True)
class ModelSettings:
    """What pydantic-toast knows about one concrete external model class.

    Attributes:
        storage: The storage setting as written (a URL or ``env:NAME``); its repr is masked.
        external_name: The stored class name.
        schema_version: Written with every record.
        ttl: Seconds until a record expires, or ``None``.
        last_write_wins: Writes do not check the stored revision.
        codec: How records are encoded (compression, limits), or ``None`` for plain JSON.
        owns_children: Whether the class has ``Owned`` fields (``None``: not computed yet; a
            save reads it here, cheaper than through the class).
    """

    storage: MaskedURL
    external_name: str
    schema_version: int
    ttl: float | None
    last_write_wins: bool = False
    codec: CodecSettings | None = None
    _owner: type[BaseModel] | None = field(default=None, repr=False)
    _url: StorageURL | None = field(default=None, repr=False)
    owns_children: bool | None = field(default=None, repr=False)

    def url(self) -> StorageURL:
        """The storage URL, resolving ``env:NAME`` the first time it is needed.

        Raises:
            StorageConfigurationError: The variable is unset, or its URL cannot work.
        """
        url = self._url
        if url is None:
            url = self._url = _resolve(self)
        return url


def settings_for(cls: type[BaseModel]) -> ModelSettings:
    """Check ``cls``'s configuration and claim its stored name in the current storage.

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
    masked = MaskedURL(storage)
    config["storage"] = masked  # type: ignore[typeddict-unknown-key]  # repr stays masked
    ttl = ttl_seconds(config.get("ttl"), owner)
    schema_version = config.get("schema_version", 1)
    if type(schema_version) is not int or schema_version < 1:
        raise StorageConfigurationError(
            f"{owner}: schema_version must be an int of 1 or more, got "
            f"{shorten(repr(schema_version))}"
        )
    external_name = config.get("external_name", cls.__name__)
    if not isinstance(external_name, str) or not external_name:
        raise StorageConfigurationError(f"{owner}: external_name must be a non-empty string")

    for name, info in cls.model_fields.items():
        if _RESERVED_FIELD in _names_of_field(name, info):
            raise StorageConfigurationError(
                f"{owner} has a field {name!r} named or aliased 'class_name', which would make "
                "its data look like a reference {'class_name': ..., 'id': ...}: rename the field "
                "or change its alias"
            )

    concurrency = config.get("concurrency", "optimistic")
    if concurrency not in _CONCURRENCY:
        raise StorageConfigurationError(
            f"{owner}: concurrency must be 'optimistic' or 'last-write-wins', got "
            f"{shorten(repr(concurrency))}"
        )
    settings = ModelSettings(
        masked,
        external_name,
        schema_version,
        ttl,
        concurrency == "last-write-wins",
        codec_settings(owner, config),
        cls,
    )
    if storage.startswith(ENV_PREFIX):
        try:
            check_env_spec(storage)
        except StorageConfigurationError as exc:
            raise StorageConfigurationError(f"{owner}: {exc}") from None
    else:
        settings._url = _resolve(settings)
    return settings


def _resolve(settings: ModelSettings) -> StorageURL:
    """Parse and check the settings' URL against its backend, and claim the stored name."""
    owner = settings._owner.__qualname__ if settings._owner is not None else "a model"
    storage = current_storage()
    try:
        url = StorageURL.parse(resolve_storage(settings.storage))
        backend_class = storage.registry.class_for(url.scheme)
        check_url(backend_class, url, settings.external_name)
    except StorageConfigurationError as exc:
        exc.args = (f"{owner}: {exc}",)  # keep the subclass (UnknownSchemeError) and its data
        raise
    except ExternalStorageError as exc:
        raise StorageConfigurationError(f"{owner}: {exc}") from None
    if settings.ttl is not None and Capability.TTL not in backend_class.capabilities:
        raise StorageConfigurationError(
            f"{owner}: ttl is set but {backend_class.__name__} ({url.masked}) does not expire "
            "records: remove ttl, or use a backend that does (one declaring Capability.TTL, "
            "such as redis://, postgresql://, sqlite:// or memory://)"
        )
    if not settings.last_write_wins and Capability.REVISIONS not in backend_class.capabilities:
        raise StorageConfigurationError(
            f"{owner}: {backend_class.__name__} ({url.masked}) keeps no record revisions, so "
            "concurrent writes could silently overwrite each other: set "
            "concurrency='last-write-wins' in its ExternalConfigDict to accept that, or add "
            "revision checks to the backend (Capability.REVISIONS)"
        )
    if settings._owner is not None:
        _claim(storage, settings._owner, url, settings.external_name)
    return url


def _claim(storage: Storage, cls: type[BaseModel], url: StorageURL, name: str) -> None:
    store = storage.store_identity(url)
    origin = cls.__pydantic_generic_metadata__["origin"]
    if origin is None:
        storage.catalog.claim(cls, store, name, where=url.masked)
        return
    # Pydantic names a parametrization by its arguments' bare names, so Box[billing.Item] and
    # Box[warehouse.Item] are both 'Box[Item]': their qualified spellings tell them apart.
    fix = (
        f"Pydantic names parametrizations of {origin.__qualname__} by their arguments' bare "
        "names: rename one of the argument classes, or give "
        f"{origin.__qualname__} a model_parametrized_name classmethod that names them apart "
        f"(records already stored as {name!r} load only through a class stored under that name)"
    )
    storage.catalog.claim(
        cls, store, name, where=url.masked, qualified=qualified_spelling(cls), fix=fix
    )


_MOST_TTL = 1000 * 365 * 86400
"""The longest ``ttl``, 1,000 years: an infinite one, or one whose expiry falls past the year
9999 (about 8,000 years), failed every save on PostgreSQL and SQLite (``OverflowError``)."""


def ttl_seconds(ttl: object, owner: str) -> float | None:
    """``ttl`` as positive seconds, or ``None``; ``owner`` (what took it) leads the error."""
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        ttl = ttl.total_seconds()
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= _MOST_TTL:
        raise StorageConfigurationError(
            f"{owner}: ttl must be a positive number of seconds or a timedelta, at most 1,000 "
            f"years (for records that never expire, set no ttl), got {shorten(repr(ttl))}"
        )
    return float(ttl)


def _names_of_field(name: str, info: FieldInfo) -> list[str]:
    """Every key the field is read or written under: its name, aliases and alias choices.

    ``AliasChoices`` and ``AliasPath`` count by their string parts (a path's first key is the
    one that appears at the top level of the data).
    """
    names = [name]
    for alias in (info.alias, info.validation_alias, info.serialization_alias):
        if isinstance(alias, str):
            names.append(alias)
        elif isinstance(alias, AliasPath):
            names.extend(part for part in alias.path[:1] if isinstance(part, str))
        elif isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    names.append(choice)
                else:
                    names.extend(part for part in choice.path[:1] if isinstance(part, str))
    return names
