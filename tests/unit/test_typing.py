"""The public API is typed for users: mypy --strict checks a small program that uses it.

The program assigns results to annotated variables, so a result typed ``Any`` or wrongly
would pass or fail visibly; a second program must fail, so the check can fail at all.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

USER_PROGRAM = """
import asyncio
from uuid import UUID

import pydantic_toast
from pydantic import BaseModel
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, Page


class Order(ExternalBaseModel):
    product: str
    quantity: int
    model_config = ExternalConfigDict(storage="memory://typing")


class Basket(BaseModel):
    orders: list[Order]


def blocking(reference: dict[str, str]) -> None:
    order: Order = Order.model_validate(reference)
    quantity: int = order.quantity
    first: Page[Order] = pydantic_toast.page(Order, limit=10)
    items: list[Order] = first.items
    basket: Basket = pydantic_toast.validate(Basket, {"orders": [reference]})
    orders: list[Order] = pydantic_toast.validate(list[Order], [reference])
    total: int = pydantic_toast.count(Order)
    for loaded in first:
        pydantic_toast.delete(Order, loaded)
    size: int = len(first)
    print(quantity, items, basket, orders, total, size)


async def non_blocking(id: UUID) -> None:
    order: Order = await Order.aload(id)
    product: str = order.product
    page: Page[Order] = await pydantic_toast.apage(Order)
    again: Order = await Order.aload(order)
    await pydantic_toast.adelete(Order, again, revision=again.external_revision)
    basket: Basket = await pydantic_toast.avalidate(Basket, {"orders": []})
    print(product, page, basket)


asyncio.run(non_blocking(UUID(int=1)))
"""

WRONG_PROGRAM = """
from pydantic_toast import ExternalBaseModel, ExternalConfigDict


class Order(ExternalBaseModel):
    product: str
    model_config = ExternalConfigDict(storage="memory://typing")


name: str = Order.model_validate({"class_name": "Order", "id": "x"})
"""


BACKEND_PROGRAM = """
from collections.abc import Hashable, Sequence
from typing import Any
from uuid import UUID

from pydantic_toast import (
    Capability,
    PageCursor,
    RecordKey,
    StorageBackend,
    StorageConfigurationError,
    StorageURL,
    StoredRecord,
    register_backend,
)
from pydantic_toast.runtime.boundary import connecting


class KeyValueBackend(StorageBackend):
    capabilities = frozenset({Capability.BATCH, Capability.LIST, Capability.COUNT})

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        if not url.path:
            raise StorageConfigurationError(f"{url.masked}: name a folder")

    @classmethod
    def store_identity(cls, url: StorageURL) -> Hashable:
        return (url.scheme, url.path)

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.folder: str = StorageURL.parse(url).path
        self.records: dict[RecordKey, StoredRecord] = {}

    async def connect(self) -> None:
        try:
            self.records.clear()
        except RuntimeError as exc:
            raise connecting(exc) from None

    async def disconnect(self) -> None:
        self.records.clear()

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        await self.save_records([StoredRecord.from_document(class_name, id, data)])

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        record = self.records.get((class_name, id))
        return None if record is None else record.to_document()

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int] | None:
        for record in records:
            self.records[record.key] = record
        return None

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        return [self.records.get(key) for key in keys]

    async def list_records(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[StoredRecord]:
        found = [r for (name, _), r in self.records.items() if name == class_name]
        found.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return [r for r in found if after is None or (r.created_at, r.id) < after][:limit]

    async def count(self, class_name: str) -> int:
        return sum(1 for name, _ in self.records if name == class_name)


register_backend("kv", KeyValueBackend)
"""


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for both programs (pydantic's stubs are checked once)."""
    return tmp_path_factory.mktemp("mypy_cache")


def mypy(tmp_path: Path, source: str, cache: Path) -> subprocess.CompletedProcess[str]:
    program = tmp_path / "user_program.py"
    program.write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), str(program)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_user_program_passes_mypy_strict(tmp_path: Path, mypy_cache: Path) -> None:
    """aload, model_validate, page (iterated too) and validate give typed results under mypy
    --strict."""
    result = mypy(tmp_path, USER_PROGRAM, mypy_cache)
    assert result.returncode == 0, result.stdout
    assert "Success" in result.stdout


def test_wrong_assignment_fails_mypy_strict(tmp_path: Path, mypy_cache: Path) -> None:
    """Assigning Order.model_validate(...) to a str is a mypy error (the check can fail)."""
    result = mypy(tmp_path, WRONG_PROGRAM, mypy_cache)
    assert result.returncode == 1, result.stdout
    assert 'Incompatible types in assignment (expression has type "Order"' in result.stdout


def test_a_backend_typed_with_public_names_passes_mypy_strict(
    tmp_path: Path, mypy_cache: Path
) -> None:
    """A backend overriding every hook (check_url and store_identity take a StorageURL)
    type-checks under mypy --strict importing nothing private."""
    result = mypy(tmp_path, BACKEND_PROGRAM, mypy_cache)
    assert result.returncode == 0, result.stdout
    assert "Success" in result.stdout
