"""The exception tree of pydantic-toast.

Every error the library raises derives from :class:`ExternalStorageError`::

    ExternalStorageError
    ├── StorageConfigurationError       a model, URL or environment variable is set up wrongly
    │   └── UnknownSchemeError          no backend serves the URL's scheme (also a
    │                                   StorageValidationError, as the seeds' T062 asks)
    ├── StorageConnectionError          the store cannot be reached (also ConnectionError)
    │   ├── StorageAuthenticationError  it refused the credentials, or wants some
    │   ├── StorageConnectTimeoutError  connecting took longer than connect_timeout
    │   ├── StoragePoolTimeoutError     every pooled connection stayed busy for pool_timeout
    │   ├── StorageBusyError            it is starting, loading or full: retry later
    │   └── OutcomeUnknownError         lost after a write was sent: whether it was applied is
    │                                   unknown (reload and check; it was not repeated)
    ├── StorageTimeoutError             one statement or lock wait ran out of time (not an
    │                                   outage: the other connections stay; also TimeoutError)
    ├── StorageSchemaError              reachable but not prepared (run the migration)
    ├── StorageOperationError           the store refused the operation, or a backend failed
    ├── StorageUsageError               the API was called where it cannot work (also RuntimeError)
    ├── RecordNotFoundError             no record under this class name and id (also LookupError)
    ├── ConcurrencyError                the record changed (or went) since this instance read or
    │                                   wrote it: nothing was written
    ├── StorageValidationError          data cannot be stored faithfully, or a reference is bad
    │   └── InvalidReferenceError       a reference is malformed or names another class
    └── StoredDataError                 a stored record cannot be read back (a server-side
        │                               problem: old data, damage, or another writer)
        └── EncryptionKeyError          an encrypted record's key is missing or wrong

None of them derives from ``ValueError``: Pydantic turns a ``ValueError`` raised during
validation into a ``ValidationError`` (a client error in FastAPI), and a missing record or an
unreachable database must leave ``model_validate`` as itself.

Driver exceptions are translated in one place, :mod:`pydantic_toast.runtime.errors`. The
driver's exception is kept as ``__cause__`` only as a summary (its type, SQLSTATE or error code),
so that no chain carries a password or the model's data. Messages name the cause and the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from pydantic_toast._records import PageCursor

__all__ = [
    "ConcurrencyError",
    "EncryptionKeyError",
    "ExternalStorageError",
    "InvalidReferenceError",
    "OutcomeUnknownError",
    "RecordNotFoundError",
    "StorageAuthenticationError",
    "StorageBusyError",
    "StorageConfigurationError",
    "StorageConnectTimeoutError",
    "StorageConnectionError",
    "StorageOperationError",
    "StoragePoolTimeoutError",
    "StorageSchemaError",
    "StorageTimeoutError",
    "StorageUsageError",
    "StorageValidationError",
    "StoredDataError",
    "UnknownSchemeError",
    "UnreadReferrersError",
    "shorten",
]

_MAX_QUOTED = 80


def shorten(text: object, limit: int = _MAX_QUOTED) -> str:
    """``text`` cut to ``limit`` characters for a message (inputs can be arbitrarily long)."""
    value = str(text)
    if len(value) <= limit:
        return value
    return f"{value[: limit - 1]}… ({len(value)} characters)"


class ExternalStorageError(Exception):
    """Root of every error raised by pydantic-toast.

    Every one pickles with its message and attributes (for multiprocessing, Celery and the
    like): unpickling restores them as they were instead of calling ``__init__`` again, whose
    arguments (keyword-only ones, a message it builds) are not the exception's ``args``.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _unpickled, (type(self), self.args), self.__dict__ or None


def _unpickled(kind: type[ExternalStorageError], args: tuple[Any, ...]) -> ExternalStorageError:
    """An instance of ``kind`` with ``args``, made without ``__init__`` (pickle then sets its
    attributes)."""
    error = kind.__new__(kind)
    error.args = args
    return error


class StorageConfigurationError(ExternalStorageError):
    """A model class, storage URL or environment variable is configured wrongly."""


class UnreadReferrersError(StorageConfigurationError):
    """Deleting orphans was refused: records the scan cannot read may reference them.

    Attributes:
        unread: The stored class names whose records were not read, or ``None`` when the
            store cannot list its class names.
    """

    def __init__(self, message: str, unread: list[str] | None) -> None:
        super().__init__(message)
        self.unread = unread


class StorageConnectionError(ExternalStorageError, ConnectionError):
    """The storage backend could not be reached, or the connection was lost.

    Attributes:
        url: The storage URL with its password masked.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class StorageAuthenticationError(StorageConnectionError):
    """The store refused the credentials in the URL, or needs credentials the URL lacks."""


class StorageConnectTimeoutError(StorageConnectionError, TimeoutError):
    """Opening a connection took longer than the URL's connect timeout."""


class StoragePoolTimeoutError(StorageConnectionError, TimeoutError):
    """Every pooled connection stayed busy for the pool timeout: raise the pool size or wait."""


class StorageBusyError(StorageConnectionError):
    """The store answers but cannot serve now (starting, loading its data, out of connections)."""


class OutcomeUnknownError(StorageConnectionError):
    """The connection was lost after a write was sent: whether the store applied it is unknown.

    A save, delete or purge that may have reached the store is never repeated blindly: a
    repeated save would find its own first attempt's revision and report a conflict, a repeated
    delete would report the record missing. A save whose reply was lost is read back first
    and reported as written when the store holds exactly what it wrote; this error is what
    remains when reading back cannot tell (the record changed since, or could not be read).
    Load the record, check its revision and data, and write again if the change is not there.

    Attributes:
        url: The storage URL with its password masked.
        operation: ``"save"``, ``"delete"`` or ``"purge"``.
        keys: The ``(class_name, id)`` of the records whose outcome is unknown (empty for
            a purge).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        operation: str,
        keys: tuple[tuple[str, UUID], ...] = (),
    ) -> None:
        super().__init__(message, url=url)
        self.operation = operation
        self.keys = keys


class StorageTimeoutError(ExternalStorageError, TimeoutError):
    """One statement or lock wait exceeded its timeout; the store itself is up.

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


class StorageOperationError(ExternalStorageError):
    """The store refused the operation (permissions, limits), or its backend failed."""


class StorageUsageError(ExternalStorageError, RuntimeError):
    """The library was called in a way that cannot work, such as a blocking call on its own loop."""


class RecordNotFoundError(ExternalStorageError, LookupError):
    """No record is stored under this class name and id.

    Attributes:
        class_name: The stored class name that was looked up.
        id: The id that was looked up (a string when it was not a valid UUID).
    """

    def __init__(self, class_name: str, id: UUID | str, *, detail: str = "") -> None:
        message = f"no {shorten(class_name)} record with id {shorten(id)} exists in storage"
        super().__init__(f"{message}{detail}")
        self.class_name = class_name
        self.id = id


class ConcurrencyError(ExternalStorageError):
    """Another writer changed or deleted the record since this instance loaded or saved it.

    Nothing of the write was stored (nor anything else of the same store in that dump), with
    one exception: a Redis batch larger than its ``batch_size`` is written in chunks after a
    check of the whole batch, and a record changed by another writer between that check and
    its chunk's write leaves the earlier chunks written (``written`` lists them; their models
    remember the new revisions, so saving again writes only the rest). Load the record again,
    apply the change again and save; or write regardless with ``asave(force=True)`` or inside
    ``with last_write_wins():``.

    Attributes:
        class_name: The stored class name of the record.
        id: The record id.
        expected: The revision this instance last saw (``0``: it was never stored).
        current: The stored revision now, or ``None`` when the record no longer exists. It
            may equal ``expected``: the record was deleted and created again since (a new
            ``created_at``), and its revisions started again from 1.
        ttl: The record's ttl in seconds when its model has one (a missing record may have
            expired rather than been deleted), else ``None``.
        written: The records of the same save that were written anyway, with their new
            revisions (empty but in the case above).
    """

    def __init__(
        self,
        class_name: str,
        id: UUID,
        *,
        expected: int,
        current: int | None,
        deleting: bool = False,
        ttl: float | None = None,
    ) -> None:
        if current is None and ttl is not None:
            what = f"was deleted or expired (a ttl of {ttl:g} s may have passed)"
        elif current is None:
            what = "was deleted"
        elif expected == 0:
            what = f"already exists (revision {current})"
        elif current == expected:  # the revision matched, the record did not
            what = f"was deleted and created again since (now at revision {current})"
        else:
            what = f"is at revision {current}"
        if deleting:
            outcome = (
                f"the delete expected revision {expected}: another writer changed it since it "
                "was read and nothing was deleted. Load it again and decide, or delete "
                "without revision= to delete whatever is stored"
            )
        elif current is None and ttl is not None:
            outcome = (
                f"this instance expected revision {expected}, and nothing was written: save it "
                "with force=True to store it again (expired), or drop it (deleted)"
            )
        elif current is None:
            outcome = (
                f"this instance expected revision {expected}: another writer deleted it, and "
                "nothing was written. Drop this instance, or save it with force=True (or inside "
                "pydantic_toast.last_write_wins()) to store it again"
            )
        else:
            who = "another writer got there first"
            if current == expected + 1:  # one write ahead: maybe this instance's own
                who += (
                    ", or an earlier save of this instance landed although it was cancelled "
                    "or failed on the way (a cancelled batch leaves the chunks it sent "
                    "written)"
                )
            outcome = (
                f"this instance expected revision {expected}: {who}, and nothing was written. "
                "Load it again, reapply the change and save, or save with force=True (or "
                "inside pydantic_toast.last_write_wins()) to overwrite"
            )
        super().__init__(f"the stored {shorten(class_name)} record {id} {what}, but {outcome}")
        self.class_name = class_name
        self.id = id
        self.expected = expected
        self.current = current
        self.ttl = ttl
        self.written: dict[tuple[str, UUID], int] = {}


class StorageValidationError(ExternalStorageError):
    """A reference is malformed or names another class, or data cannot be stored faithfully.

    Attributes:
        class_name: The model's stored class name, when known.
        id: The record id involved, when known.
        field: The dotted path of the field involved (``"items.0.price"``), when known.
    """

    def __init__(
        self,
        message: str,
        *,
        class_name: str | None = None,
        id: UUID | str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.class_name = class_name
        self.id = id
        self.field = field


class InvalidReferenceError(StorageValidationError):
    """A reference given to the library is malformed or names another class (a client error)."""


class StoredDataError(ExternalStorageError):
    """A stored record cannot be read back as its model: old data, damage, or another writer.

    This is the server's problem, not the caller's: FastAPI answers it with 500.

    Attributes:
        class_name: The stored class name of the record.
        id: The record id.
        field: The dotted path of the field that cannot be read, when known.
        resume_after: Raised by a listing (a backend's ``list_records``) for a record it
            cannot read at all: the page cursor just past that record, from which a caller
            that leaves it out lists on; ``None`` otherwise.
    """

    resume_after: PageCursor | None = None

    def __init__(
        self, message: str, *, class_name: str, id: UUID | str, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.class_name = class_name
        self.id = id
        self.field = field


class EncryptionKeyError(StoredDataError):
    """An encrypted record cannot be decrypted with the keys its model holds.

    Either the model has no ``encryption``, or the key id it was written with is missing from
    the model's :class:`EncryptionKeys`, or the key under that id is not the one it was
    written with (or the record was changed). The record is left untouched.

    Attributes:
        key_id: The id of the key the record was encrypted with.
    """

    def __init__(self, message: str, *, class_name: str, id: UUID | str, key_id: str) -> None:
        super().__init__(message, class_name=class_name, id=id)
        self.key_id = key_id


class UnknownSchemeError(StorageConfigurationError, StorageValidationError):
    """No storage backend is registered for a URL's scheme (``postgressql://``, a typo).

    Both a configuration error (where it is detected) and a validation error (the URL itself is
    invalid), as the seeds' T062 asks.

    Attributes:
        scheme: The unknown scheme.
    """

    def __init__(self, message: str, *, scheme: str) -> None:
        StorageValidationError.__init__(self, message)
        self.scheme = scheme
