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
    StorageUsageError,
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
        spares: Annotated[dict[str, Part], Owned] = {}
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


def _two_orders(classes: dict[str, type[ExternalBaseModel]]) -> tuple[Any, Any, Any]:
    """An order owning one part, an order owning none, both stored; and the part."""
    customer = classes["Customer"](name="ada")
    one = classes["Order"](customer=customer, parts=[_part(classes, "a")])
    two = classes["Order"](customer=customer)
    pydantic_toast.dump([one, two])
    return one, two, one.parts[0]


def _skus(order_class: type[ExternalBaseModel], order: Any) -> list[str]:
    """The skus of ``order``'s stored parts (read by its id: its fields may not be stored)."""
    reference = {"class_name": order_class._toast_settings().external_name, "id": order.external_id}
    return [p.sku for p in order_class.model_validate(reference).parts]


def test_moving_an_owned_child_to_a_parent_saved_before_the_old_one_is_refused(
    storage_url: str,
) -> None:
    """A part moved into another order saved alone is refused (the old order would delete it),
    naming the part, both orders and the fix; nothing is written, and the fix works."""
    classes = _classes(storage_url)
    one, two, moved = _two_orders(classes)
    two.parts = [moved]
    with pytest.raises(StorageUsageError) as caught:
        two.model_dump()
    message = str(caught.value)
    for named in (moved.external_id, one.external_id, two.external_id, "'parts'"):
        assert str(named) in message
    assert "pydantic_toast.dump([old_parent, new_parent])" in message
    assert _skus(classes["Order"], two) == []  # nothing written
    one.parts = []
    pydantic_toast.dump([one, two])  # the documented move
    assert _skus(classes["Order"], two) == ["a"]
    assert _skus(classes["Order"], one) == []
    assert _exists(classes["Label"], moved.label.model_dump())


def test_moving_a_loaded_owned_child_alone_is_refused(storage_url: str) -> None:
    """A part loaded with its order knows that order: moved to another order saved alone, it is
    refused as well."""
    classes = _classes(storage_url)
    one, two, _ = _two_orders(classes)
    loaded_one = classes["Order"].model_validate(one.model_dump())
    loaded_two = classes["Order"].model_validate(two.model_dump())
    loaded_two.parts = [loaded_one.parts[0]]
    with pytest.raises(StorageUsageError, match="dump both parents together"):
        loaded_two.model_dump()
    loaded_one.parts = []
    pydantic_toast.dump([loaded_one, loaded_two])
    assert _skus(classes["Order"], two) == ["a"]


def test_an_owned_child_the_old_parent_already_deleted_is_refused(storage_url: str) -> None:
    """Saved first, the old order deletes the part it dropped; the part's instance then put in
    another order is refused (it would reference a deleted record) until stored again."""
    classes = _classes(storage_url)
    one, two, moved = _two_orders(classes)
    one.parts = []
    one.model_dump()  # deletes the part and its label
    assert not _exists(classes["Part"], moved.model_dump())  # (unchanged: no I/O)
    two.parts = [moved]
    with pytest.raises(StorageUsageError) as caught:
        two.model_dump()
    message = str(caught.value)
    assert "deleted" in message
    assert "force=True" in message
    assert str(moved.external_id) in message
    assert str(one.external_id) in message
    assert _skus(classes["Order"], two) == []  # nothing written
    pydantic_toast.dump(moved, force=True)  # stored again, with its label
    two.model_dump()
    loaded = classes["Order"].model_validate(two.model_dump())
    assert [(p.sku, p.label.text) for p in loaded.parts] == [("a", "label a")]


def test_an_owned_child_in_two_parents_of_one_dump_is_refused(storage_url: str) -> None:
    """One part held in the owned fields of two orders dumped together is refused: owned
    children are not shared."""
    classes = _classes(storage_url)
    customer = classes["Customer"](name="ada")
    part = _part(classes, "a")
    one = classes["Order"](customer=customer, parts=[part])
    two = classes["Order"](customer=customer, parts=[part])
    with pytest.raises(StorageUsageError, match="must not be shared"):
        pydantic_toast.dump([one, two])
    assert pydantic_toast.count(classes["Order"]) == 0


def test_an_owned_child_moves_between_fields_of_its_parent(storage_url: str) -> None:
    """A part moved from one owned field of its order to another stays stored."""
    classes = _classes(storage_url)
    one, _, moved = _two_orders(classes)
    one.parts, one.spares = [], {"spare": moved}
    reference = one.model_dump()
    loaded = classes["Order"].model_validate(reference)
    assert loaded.parts == []
    assert loaded.spares["spare"].sku == "a"
    assert one.model_dump() == reference  # unchanged again


def test_a_moved_child_can_move_on_after_the_together_dump(storage_url: str) -> None:
    """After a move dumped with both orders, the part belongs to its new order: that order
    may drop it (deleting it), and the old order's later updates do not touch it."""
    classes = _classes(storage_url)
    one, two, moved = _two_orders(classes)
    one.parts, two.parts = [], [moved]
    pydantic_toast.dump([one, two])
    one.customer = classes["Customer"](name="bob")
    one.model_dump()
    assert _skus(classes["Order"], two) == ["a"]
    one.parts = [moved]  # back to the old order without the new one: refused
    with pytest.raises(StorageUsageError, match="dump both parents together"):
        one.model_dump()
