"""Every public exception of the library survives pickle, as multiprocessing and Celery use it."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from uuid import UUID, uuid4

import pytest

import pydantic_toast
import pydantic_toast.fastapi
from pydantic_toast import (
    BlockingStorageCallWarning,
    ConcurrencyError,
    EncryptionKeyError,
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalStorageError,
    InvalidReferenceError,
    OutcomeUnknownError,
    RecordNotFoundError,
    StorageConfigurationError,
    StorageUsageError,
    StoredDataError,
    UnknownSchemeError,
    UnreadReferrersError,
)
from pydantic_toast._url import StorageURL
from pydantic_toast.runtime import errors
from pydantic_toast.runtime.errors import DriverError, Failure, summary, translate
from pydantic_toast.runtime.storage import current_storage

ID = UUID("0b6c3e58-2c1a-4bb8-9d3c-7a1f2e0c9d41")
URL = StorageURL.parse("postgresql://app:s3cret@db.example:5432/shop")


class Pet(ExternalBaseModel):
    """A model on the memory backend, for errors raised by real calls."""

    name: str
    model_config = ExternalConfigDict(storage="memory://pickled-errors")


class _PostgresError(Exception):
    """What asyncpg raises, as far as the error map reads it: a SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"driver text with user data ({sqlstate})")
        self.sqlstate = sqlstate


def _translated(cause: BaseException, *, connecting: bool = False) -> ExternalStorageError:
    failure = Failure("PostgreSQL", URL, "save", connecting=connecting, class_name="Pet")
    return translate(cause, failure)[0]


def _pool_timeout() -> ExternalStorageError:
    sqlalchemy_timeout = type("TimeoutError", (Exception,), {"__module__": "sqlalchemy.exc"})
    return _translated(sqlalchemy_timeout())


def _not_found() -> ExternalStorageError:
    try:
        Pet.model_validate({"class_name": "Pet", "id": str(ID)})
    except RecordNotFoundError as exc:
        return exc
    raise AssertionError("loaded a record never saved")


def _conflict() -> ExternalStorageError:
    reference = Pet(name="Rex").model_dump()
    fresh, stale = Pet.model_validate(reference), Pet.model_validate(reference)
    fresh.name = "Max"
    fresh.model_dump()
    stale.name = "Bo"
    try:
        stale.model_dump()
    except ConcurrencyError as exc:
        exc.written = {("Pet", ID): 3}  # as a chunked Redis batch reports what it wrote
        return exc
    raise AssertionError("a stale save went through")


def _unknown_scheme() -> ExternalStorageError:
    try:
        current_storage().registry.class_for("postgressql")
    except UnknownSchemeError as exc:
        exc.args = (f"Pet: {exc}",)  # as a model's definition rewrites it
        return exc
    raise AssertionError("a misspelt scheme was accepted")


MADE: dict[type[BaseException], Callable[[], BaseException]] = {
    ExternalStorageError: lambda: ExternalStorageError("something failed"),
    StorageConfigurationError: lambda: StorageConfigurationError("Pet: ttl must be positive"),
    UnknownSchemeError: _unknown_scheme,
    pydantic_toast.StorageConnectionError: lambda: _translated(_PostgresError("3D000")),
    pydantic_toast.StorageAuthenticationError: lambda: _translated(_PostgresError("28P01")),
    pydantic_toast.StorageConnectTimeoutError: lambda: _translated(TimeoutError(), connecting=True),
    pydantic_toast.StoragePoolTimeoutError: _pool_timeout,
    pydantic_toast.StorageBusyError: lambda: _translated(_PostgresError("57P03")),
    OutcomeUnknownError: lambda: OutcomeUnknownError(
        "lost after sending", url=URL.masked, operation="save", keys=(("Pet", ID),)
    ),
    pydantic_toast.StorageTimeoutError: lambda: _translated(_PostgresError("57014")),
    pydantic_toast.StorageSchemaError: lambda: _translated(_PostgresError("42P01")),
    pydantic_toast.StorageOperationError: lambda: _translated(_PostgresError("42501")),
    StorageUsageError: lambda: StorageUsageError("a blocking call on the library's own loop"),
    RecordNotFoundError: _not_found,
    ConcurrencyError: _conflict,
    pydantic_toast.StorageValidationError: lambda: _translated(_PostgresError("22P05")),
    InvalidReferenceError: lambda: InvalidReferenceError(
        "malformed reference", class_name="Pet", id="not-a-uuid"
    ),
    StoredDataError: lambda: StoredDataError(
        "cannot be read", class_name="Pet", id=ID, field="name"
    ),
    EncryptionKeyError: lambda: EncryptionKeyError(
        "unknown key id", class_name="Pet", id=ID, key_id="2026-01"
    ),
    BlockingStorageCallWarning: lambda: BlockingStorageCallWarning("Pet.save() on a loop"),
    UnreadReferrersError: lambda: UnreadReferrersError("refusing to delete", ["Post"]),
    DriverError: lambda: summary(_PostgresError("23505")),
}


@pytest.mark.parametrize("kind", MADE, ids=lambda kind: kind.__name__)
def test_an_exception_round_trips_through_pickle(kind: type[BaseException]) -> None:
    """Unpickled, an error is of its class, with its message, args and attributes unchanged."""
    error = MADE[kind]()
    assert type(error) is kind

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is kind
    assert (str(copy), copy.args, vars(copy)) == (str(error), error.args, vars(error))
    assert "s3cret" not in pickle.dumps(error).decode("latin-1")


def test_every_public_exception_is_covered() -> None:
    """The cases above are every exception class the public modules export (and DriverError,
    the summary chained to translated driver errors)."""
    exported = {
        value
        for module in (pydantic_toast, pydantic_toast.fastapi, errors)
        for value in map(module.__dict__.get, module.__all__)
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert exported == set(MADE)


def test_a_conflict_keeps_its_revisions_through_pickle() -> None:
    """A ConcurrencyError's data, as a worker's caller reads it, comes back whole."""
    error = ConcurrencyError("Pet", ID, expected=2, current=None, ttl=30.0)
    error.written = {("Pet", uuid4()): 1}

    copy = pickle.loads(pickle.dumps(error))

    assert (copy.class_name, copy.id, copy.expected, copy.current, copy.ttl) == (
        "Pet",
        ID,
        2,
        None,
        30.0,
    )
    assert copy.written == error.written
    assert "expired" in str(copy)
