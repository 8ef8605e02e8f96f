"""Owned children (``Annotated[Child, Owned]``) on every backend: deleted with their parent."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import (
    ConcurrencyError,
    ExternalBaseModel,
    ExternalConfigDict,
    Owned,
    RecordNotFoundError,
)


def _classes(url: str) -> dict[str, type[ExternalBaseModel]]:
    """Line -> Part (owned, itself owning a Label); Order -> Line (owned) and a Customer (not)."""
    suffix = uuid4().hex

    def config(name: str) -> ExternalConfigDict:
        return ExternalConfigDict(storage=url, external_name=f"{name}{suffix}")

    class Label(ExternalBaseModel):
        text: str
        model_config = config("Label")

    class Part(ExternalBaseModel):
        sku: str
        label: Annotated[Label, Owned]
        model_config = config("Part")

    class Customer(ExternalBaseModel):
        name: str
        model_config = config("Customer")

    class Order(ExternalBaseModel):
        customer: Customer
        parts: Annotated[list[Part], Owned] = []
        model_config = config("Order")

    return {"Label": Label, "Part": Part, "Customer": Customer, "Order": Order}


def _exists(model: type[ExternalBaseModel], reference: dict[str, Any]) -> bool:
    try:
        model.model_validate(reference)
    except RecordNotFoundError:
        return False
    return True


def _part(classes: dict[str, type[ExternalBaseModel]], sku: str) -> Any:
    return classes["Part"](sku=sku, label=classes["Label"](text=f"label {sku}"))


def test_deleting_the_parent_deletes_what_it_owns_recursively(storage_url: str) -> None:
    """delete() removes the order, its parts and their labels; the unowned customer stays."""
    classes = _classes(storage_url)
    order = classes["Order"](
        customer=classes["Customer"](name="ada"), parts=[_part(classes, "a"), _part(classes, "b")]
    )
    reference = order.model_dump()
    parts = [p.model_dump() for p in order.parts]  # unchanged: references only, no I/O
    labels = [p.label.model_dump() for p in order.parts]
    customer = order.customer.model_dump()
    pydantic_toast.delete(classes["Order"], reference)
    assert not _exists(classes["Order"], reference)
    assert [_exists(classes["Part"], p) for p in parts] == [False, False]
    assert [_exists(classes["Label"], p) for p in labels] == [False, False]
    assert _exists(classes["Customer"], customer)


def test_an_update_deletes_the_owned_children_it_replaced(storage_url: str) -> None:
    """Replacing and removing parts deletes them (and their labels) once the update is written."""
    classes = _classes(storage_url)
    order = classes["Order"](
        customer=classes["Customer"](name="ada"), parts=[_part(classes, "a"), _part(classes, "b")]
    )
    reference = order.model_dump()
    old = [p.model_dump() for p in order.parts]
    old_label = order.parts[0].label.model_dump()
    kept = order.parts[1]
    loaded = classes["Order"].model_validate(reference)
    loaded.parts = [kept, _part(classes, "c")]  # "a" replaced, "b" kept
    loaded.model_dump()
    assert not _exists(classes["Part"], old[0])
    assert not _exists(classes["Label"], old_label)
    assert _exists(classes["Part"], old[1])
    assert [p.sku for p in classes["Order"].model_validate(reference).parts] == ["b", "c"]


def test_a_conflicting_update_deletes_nothing(storage_url: str) -> None:
    """A stale writer's update is refused, and the children the stored parent holds stay."""
    classes = _classes(storage_url)
    order = classes["Order"](customer=classes["Customer"](name="ada"), parts=[_part(classes, "a")])
    reference = order.model_dump()
    part = order.parts[0].model_dump()
    first = classes["Order"].model_validate(reference)
    stale = classes["Order"].model_validate(reference)
    first.customer = classes["Customer"](name="bob")
    first.model_dump()
    stale.parts = []
    with pytest.raises(ConcurrencyError):
        stale.model_dump()
    assert _exists(classes["Part"], part)


def test_a_child_moved_to_another_owner_in_the_same_dump_stays(storage_url: str) -> None:
    """A part taken from one order into another, both dumped together, is not deleted."""
    classes = _classes(storage_url)
    customer = classes["Customer"](name="ada")
    one = classes["Order"](customer=customer, parts=[_part(classes, "a")])
    two = classes["Order"](customer=customer)
    pydantic_toast.dump([one, two])
    moved = one.parts[0]
    one.parts, two.parts = [], [moved]
    pydantic_toast.dump([one, two])
    assert _exists(classes["Part"], moved.model_dump())
