"""Generic models' parametrizations named alike by Pydantic never share records in a real store."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import pytest
from pydantic import BaseModel, create_model

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageConfigurationError
from tests.integration.conftest import BACKENDS

T = TypeVar("T")
REAL_BACKENDS = [param for param in BACKENDS if param.id != "memory"]


def _items(module: str, field: str) -> type[BaseModel]:
    """A plain model class named ``Item`` in ``module``, with ``name`` and ``field``."""
    return create_model("Item", __module__=module, name=(str, ...), **{field: (Any, None)})


@pytest.mark.parametrize("own_store_url", REAL_BACKENDS, indirect=True)
def test_same_named_arguments_never_share_records(own_store_url: str) -> None:
    """Box[warehouse.Item], stored as 'Box[Item]' like Box[billing.Item], is refused before it
    can read, count or overwrite the billing records, which load unchanged."""
    billing, warehouse = _items("billing", "cents"), _items("warehouse", "shelf")

    class Box(ExternalBaseModel, Generic[T]):
        value: T
        model_config = ExternalConfigDict(storage=own_store_url)

    bill_box = Box[billing]
    reference = bill_box(value=billing(name="invoice-7", cents=999)).model_dump()
    with pytest.raises(StorageConfigurationError, match=r"Box\[billing\.Item\] is already"):
        Box[warehouse]
    assert bill_box.model_validate(reference).value.cents == 999  # type: ignore[attr-defined]
    assert pydantic_toast.count(bill_box) == 1
