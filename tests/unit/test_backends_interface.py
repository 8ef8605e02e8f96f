"""The backend interface, the scheme registry and the public API surface."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

import pydantic_toast
from pydantic_toast import (
    Capability,
    ExternalBaseModel,
    ExternalConfigDict,
    StorageBackend,
    StorageConfigurationError,
    StorageUsageError,
    register_backend,
)
from pydantic_toast.backends import registry


class FileBackend(StorageBackend):
    """The quickstart's FileBackend, as written there: four methods."""

    def __init__(self, url: str):
        super().__init__(url)
        self._base_path = url.replace("file://", "")

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        path = Path(self._base_path) / f"{class_name}_{id}.json"
        path.write_text(json.dumps(data))

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        path = Path(self._base_path) / f"{class_name}_{id}.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_four_method_backend_works_end_to_end(tmp_path: Path) -> None:
    """A backend with only the four required methods stores, updates and loads models."""
    register_backend("file", FileBackend)

    class MyModel(ExternalBaseModel):
        data: str
        model_config = ExternalConfigDict(
            storage=f"file://{tmp_path}", concurrency="last-write-wins"
        )

    item = MyModel(data="hello")
    reference = item.model_dump()
    stored = json.loads((tmp_path / f"MyModel_{reference['id']}.json").read_text())
    assert stored["data"] == {"data": "hello"}
    assert stored["schema_version"] == 1
    item.data = "again"
    item.model_dump()
    assert MyModel.model_validate(reference).data == "again"


def test_optional_capabilities_have_clear_defaults(tmp_path: Path) -> None:
    """delete/list/count on a minimal backend say what to implement."""
    backend = FileBackend(f"file://{tmp_path}")
    import asyncio

    with pytest.raises(StorageUsageError, match="does not support delete: implement"):
        asyncio.run(backend.delete(UUID(int=1), "X"))
    with pytest.raises(StorageUsageError, match="count"):
        asyncio.run(backend.count("X"))


def test_incomplete_backend_is_rejected_listing_missing_methods() -> None:
    """Registering a backend that lacks required methods names them."""

    class Half(StorageBackend):
        async def connect(self) -> None: ...

        async def disconnect(self) -> None: ...

    with pytest.raises(StorageConfigurationError, match="does not implement load, save"):
        register_backend("half", Half)  # type: ignore[type-abstract]


def test_non_backend_class_and_sync_methods_are_rejected() -> None:
    """A class that is not a StorageBackend, or has sync methods, is refused with the fix."""

    class Duck:
        async def connect(self) -> None: ...

    with pytest.raises(StorageConfigurationError, match=r"not a StorageBackend subclass.*lacks"):
        register_backend("duck", Duck)  # type: ignore[arg-type]

    class Sync(StorageBackend):
        async def connect(self) -> None: ...

        async def disconnect(self) -> None: ...

        def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:  # type: ignore[override]
            ...

        async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
            return None

    with pytest.raises(StorageConfigurationError, match=r"Sync\.save must be coroutine"):
        register_backend("sync", Sync)
    with pytest.raises(StorageConfigurationError, match="not 'file://'"):
        register_backend("file://", FileBackend)


@pytest.mark.parametrize("capability", [Capability.TTL, Capability.REVISIONS])
def test_ttl_and_revisions_need_save_records(capability: Capability) -> None:
    """A backend declaring ttl or revisions on save/load alone is refused at registration:
    save's document carries neither, so its records never expired, and its first save stored
    the expected revision 0 that every load then refused as damaged."""

    class Declared(FileBackend):
        capabilities = frozenset({capability})

    with pytest.raises(StorageConfigurationError, match=rf"{capability.value} \(implement save"):
        register_backend("declared", Declared)


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A built-in backend whose driver is missing says which extra to install."""
    monkeypatch.setitem(registry._BUILTINS, "fakedb", ("no_such_driver_mod:Backend", "fakedb"))
    with pytest.raises(StorageConfigurationError, match=r"pip install 'pydantic-toast\[fakedb\]'"):

        class NeedsDriver(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage="fakedb://host/db")


def test_backend_repr_masks_password() -> None:
    """Backends show their URL without the password."""
    backend = FileBackend("file://user:topsecret@host/path")
    assert repr(backend) == "<FileBackend file://user:***@host/path>"


def test_import_loads_no_database_driver() -> None:
    """import pydantic_toast imports neither SQLAlchemy, asyncpg, redis nor aiosqlite."""
    code = (
        "import sys, pydantic_toast; "
        "print(sorted(m for m in ('sqlalchemy', 'asyncpg', 'redis', 'aiosqlite', 'alembic') "
        "if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


def test_public_api_is_pinned() -> None:
    """__all__ lists exactly the public names, sorted, and each one resolves."""
    expected = {
        "AcceptReference",
        "BlockingStorageCallWarning",
        "Capability",
        "Expanded",
        "Ref",
        "SignedReference",
        "SigningKeys",
        "sign_reference",
        "verify_reference",
        "to_data",
        "ConcurrencyError",
        "EncryptionKeyError",
        "EncryptionKeys",
        "ReencryptReport",
        "areencrypt",
        "reencrypt",
        "ExternalBaseModel",
        "ExternalConfigDict",
        "ExternalReference",
        "ExternalStorageError",
        "InvalidReferenceError",
        "OrphanReport",
        "OutcomeUnknownError",
        "Owned",
        "Page",
        "PageCursor",
        "RecordKey",
        "RecordNotFoundError",
        "Storage",
        "StorageAuthenticationError",
        "StorageBackend",
        "StorageBusyError",
        "StorageConfigurationError",
        "StorageConnectTimeoutError",
        "StorageConnectionError",
        "StorageOperationError",
        "StoragePoolTimeoutError",
        "StorageSchemaError",
        "StorageTimeoutError",
        "StorageURL",
        "StorageUsageError",
        "StorageValidationError",
        "StoredDataError",
        "StoredRecord",
        "UnknownSchemeError",
        "UnreadReferrersError",
        "aclose_storage",
        "acount",
        "adelete",
        "adump",
        "afind_orphaned_payloads",
        "afind_orphans",
        "apage",
        "apurge_expired",
        "avalidate",
        "close_storage",
        "count",
        "current_storage",
        "delete",
        "disable_telemetry",
        "dump",
        "enable_telemetry",
        "find_orphaned_payloads",
        "find_orphans",
        "last_write_wins",
        "page",
        "purge_expired",
        "read_primary",
        "register_backend",
        "transaction",
        "unregister_backend",
        "use_engine",
        "validate",
    }
    assert set(pydantic_toast.__all__) == expected
    assert pydantic_toast.__all__ == sorted(pydantic_toast.__all__)
    public = {
        name
        for name, value in vars(pydantic_toast).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == expected
    for name in expected:
        assert getattr(pydantic_toast, name) is not None


def test_storage_errors_never_derive_from_value_error() -> None:
    """Errors leave validation as themselves, never as a Pydantic ValidationError."""
    for name in pydantic_toast.__all__:
        obj = getattr(pydantic_toast, name)
        if isinstance(obj, type) and issubclass(obj, pydantic_toast.ExternalStorageError):
            assert not issubclass(obj, ValueError), name


def test_only_a_named_created_at_parameter_gets_created_at_on_checked_deletes() -> None:
    """A ``delete_checked`` wrapped by a decorator taking ``(*args, **kwargs)`` around an older
    method is not handed ``created_at`` (the older method would fail with a TypeError on every
    checked delete); one naming the parameter is."""
    import functools

    from pydantic_toast.backends.base import checks_created_at_on_delete
    from pydantic_toast.backends.memory import MemoryBackend

    def logged(method: Any) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await method(*args, **kwargs)

        return wrapper

    class Older(MemoryBackend):
        @logged
        async def delete_checked(self, id: Any, class_name: str, revision: int) -> bool:
            return await super().delete_checked(id, class_name, revision)

    class Wrapped(MemoryBackend):
        @functools.wraps(MemoryBackend.delete_checked)
        async def delete_checked(self, *args: Any, **kwargs: Any) -> bool:
            return await super().delete_checked(*args, **kwargs)

    assert not checks_created_at_on_delete(Older)
    assert checks_created_at_on_delete(Wrapped)  # functools.wraps shows the named parameter
    assert checks_created_at_on_delete(MemoryBackend)
