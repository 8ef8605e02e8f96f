"""The exception tree of pydantic-toast.

Every error the library raises derives from :class:`ExternalStorageError`::

    ExternalStorageError
    ├── StorageConfigurationError   a model or URL is set up wrongly (class definition, env var)
    ├── StorageConnectionError      the store cannot be reached or refused us (also ConnectionError)
    ├── StorageSchemaError          the store is reachable but not prepared (run the migration)
    ├── StorageUsageError           the API was called where it cannot work (e.g. on our own loop)
    ├── RecordNotFoundError         no record under this class name and id (also LookupError)
    └── StorageValidationError      a reference is malformed, names another class, or stored
                                    data cannot be written or read back faithfully

None of them derives from ``ValueError``: Pydantic turns a ``ValueError`` raised during
validation into a ``ValidationError`` (a client error in FastAPI), and a missing record or an
unreachable database must leave ``model_validate`` as itself.

Messages name the cause and the fix. They never contain a password (URLs are masked) nor the
model's data.
"""

from __future__ import annotations

from uuid import UUID

__all__ = [
    "ExternalStorageError",
    "RecordNotFoundError",
    "StorageConfigurationError",
    "StorageConnectionError",
    "StorageSchemaError",
    "StorageUsageError",
    "StorageValidationError",
]


class ExternalStorageError(Exception):
    """Root of every error raised by pydantic-toast."""


class StorageConfigurationError(ExternalStorageError):
    """A model class, storage URL or environment variable is configured wrongly."""


class StorageConnectionError(ExternalStorageError, ConnectionError):
    """The storage backend could not be reached, timed out, or rejected the credentials.

    Attributes:
        url: The storage URL with its password masked.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class StorageSchemaError(ExternalStorageError):
    """The store answers but is not prepared for pydantic-toast (for example, not migrated).

    Attributes:
        url: The storage URL with its password masked.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class StorageUsageError(ExternalStorageError, RuntimeError):
    """The library was called in a way that cannot work, such as a blocking call on its own loop."""


class RecordNotFoundError(ExternalStorageError, LookupError):
    """No record is stored under this class name and id.

    Attributes:
        class_name: The stored class name that was looked up.
        id: The id that was looked up (a string when it was not a valid UUID).
    """

    def __init__(self, class_name: str, id: UUID | str, *, detail: str = "") -> None:
        message = f"no {class_name} record with id {id} exists in storage"
        super().__init__(f"{message}{detail}")
        self.class_name = class_name
        self.id = id


class StorageValidationError(ExternalStorageError):
    """A reference is malformed or names another class, or data cannot be stored faithfully.

    Attributes:
        class_name: The model's stored class name, when known.
        id: The record id involved, when known.
    """

    def __init__(
        self, message: str, *, class_name: str | None = None, id: UUID | str | None = None
    ) -> None:
        super().__init__(message)
        self.class_name = class_name
        self.id = id
