"""Stored names of generic models' parametrizations: the name Pydantic gives them, kept apart."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, List, Optional, TypeVar  # noqa: UP035  # the old spellings

import pytest
from pydantic import BaseModel, create_model

from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    InvalidReferenceError,
    StorageConfigurationError,
)
from pydantic_toast._class_spelling import qualified_spelling

T = TypeVar("T")


class Wrapper(BaseModel, Generic[T]):
    """A plain generic model, to hold an argument one level down."""

    inner: T


def _items(module: str, field: str) -> type[BaseModel]:
    """A plain model class named ``Item`` in ``module``, with ``name`` and ``field``."""
    return create_model("Item", __module__=module, name=(str, ...), **{field: (Any, None)})


def _box(url: str) -> type[ExternalBaseModel]:
    class Box(ExternalBaseModel, Generic[T]):
        value: T
        model_config = ExternalConfigDict(storage=url)

    return Box


def test_same_named_argument_classes_are_refused_and_the_first_keeps_its_records(
    memory_url: str,
) -> None:
    """Box[billing.Item] and Box[warehouse.Item] are both named 'Box[Item]': the second is
    refused, naming both with their modules and the fix, and the first's records stay intact."""
    billing, warehouse = _items("billing", "cents"), _items("warehouse", "shelf")
    box = _box(memory_url)
    bill_box = box[billing]
    reference = bill_box(value=billing(name="invoice-7", cents=999)).model_dump()

    for _ in range(2):  # a refused parametrization is not cached: asking again refuses again
        with pytest.raises(StorageConfigurationError) as info:
            box[warehouse]
        message = str(info.value)
        assert "Box[warehouse.Item] would be stored as 'Box[Item]'" in message
        assert "Box[billing.Item] is already stored under that name" in message
        assert "model_parametrized_name" in message
        assert "rename one of the argument classes" in message

    assert bill_box.model_validate(reference).value.cents == 999  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda item: list[item], id="list"),
        pytest.param(lambda item: dict[str, item], id="dict"),
        pytest.param(lambda item: item | None, id="optional"),
        pytest.param(lambda item: Wrapper[item], id="generic-model"),
    ],
)
def test_same_named_classes_deeper_in_the_arguments_are_refused(
    memory_url: str, spell: Callable[[type[BaseModel]], Any]
) -> None:
    """The argument classes are told apart at any depth of the arguments."""
    billing, warehouse = _items("billing", "cents"), _items("warehouse", "shelf")
    box = _box(memory_url)
    first = box[spell(billing)]
    with pytest.raises(StorageConfigurationError, match=r"warehouse\.Item") as info:
        box[spell(warehouse)]
    assert first._toast_settings().external_name in str(info.value)


def test_one_parametrization_made_again_keeps_its_stored_name(memory_url: str) -> None:
    """Classes Pydantic makes apart for one type (Optional[int] and int | None, an argument
    class redefined as in a reloaded module) share the stored name and each other's records,
    and simple parametrizations keep the names existing records carry."""
    box = _box(memory_url)
    optional, union = box[Optional[int]], box[int | None]  # noqa: UP045
    assert optional is not union
    assert optional._toast_settings().external_name == "Box[Union[int, NoneType]]"
    assert union._toast_settings().external_name == "Box[Union[int, NoneType]]"
    assert union.model_validate(optional(value=5).model_dump()).value == 5

    first, redefined = _items("billing", "cents"), _items("billing", "cents")
    reference = box[first](value=first(name="a", cents=1)).model_dump()
    assert box[redefined].model_validate(reference).value.cents == 1
    assert reference["class_name"] == "Box[Item]"

    assert box[int]._toast_settings().external_name == "Box[int]"
    assert box[dict[str, int]]._toast_settings().external_name == "Box[dict[str, int]]"


def test_list_and_List_are_different_stored_names(memory_url: str) -> None:
    """Pydantic names Box[List[int]] and Box[list[int]] as spelled, so each reads only the
    records written through its own spelling (documented in concepts.md, Generic models)."""
    box = _box(memory_url)
    old, new = box[List[int]], box[list[int]]  # noqa: UP006
    assert old._toast_settings().external_name == "Box[List[int]]"
    assert new._toast_settings().external_name == "Box[list[int]]"
    reference = old(value=[1]).model_dump()
    with pytest.raises(InvalidReferenceError, match=r"Box\[List\[int\]\]"):
        new.model_validate(reference)


def test_model_parametrized_name_keeps_same_named_arguments_apart(memory_url: str) -> None:
    """The fix the refusal suggests works: a model_parametrized_name spelling the arguments'
    modules gives each parametrization its own stored name and records."""
    billing, warehouse = _items("billing", "cents"), _items("warehouse", "shelf")

    class Box(ExternalBaseModel, Generic[T]):
        value: T
        model_config = ExternalConfigDict(storage=memory_url)

        @classmethod
        def model_parametrized_name(cls, params: tuple[Any, ...]) -> str:
            names = (f"{p.__module__}.{p.__qualname__}" for p in params)
            return f"{cls.__name__}[{', '.join(names)}]"

    bill_box, ware_box = Box[billing], Box[warehouse]
    assert bill_box._toast_settings().external_name == "Box[billing.Item]"
    assert ware_box._toast_settings().external_name == "Box[warehouse.Item]"
    reference = bill_box(value=billing(name="invoice-7", cents=999)).model_dump()
    with pytest.raises(InvalidReferenceError):
        ware_box.model_validate(reference)


@pytest.mark.parametrize(
    ("kinds", "same"),
    [
        pytest.param((Optional[int], int | None), True, id="optional-union"),  # noqa: UP045
        pytest.param((List[int], list[int]), True, id="List-list"),  # noqa: UP006
        pytest.param((Callable[[int], str], Callable[[int], str]), True, id="callable"),
        pytest.param((list[int], list[str]), False, id="list-arguments"),
        pytest.param((int, str), False, id="classes"),
    ],
)
def test_qualified_spelling(kinds: Sequence[Any], same: bool) -> None:
    """Spellings of one type are one; different types differ."""
    first, second = map(qualified_spelling, kinds)
    assert (first == second) is same
    assert "int" in first


def test_a_forward_reference_and_its_class_share_a_stored_name(memory_url: str) -> None:
    """``Box['Shelf']`` (a forward reference, as in a field declared before its class) and
    ``Box[Shelf]`` are one parametrization: Pydantic names both ``Box[Shelf]`` and resolves the
    first in this module, so they share the name and their records (the second was refused)."""
    box = _box(memory_url)
    ahead = box["Shelf"]
    ahead.model_rebuild(_types_namespace={"Shelf": Shelf})
    resolved = box[Shelf]
    assert ahead._toast_settings().external_name == "Box[Shelf]"
    assert resolved._toast_settings().external_name == "Box[Shelf]"
    reference = ahead(value=Shelf(rows=2)).model_dump()
    assert resolved.model_validate(reference).value.rows == 2  # type: ignore[attr-defined]
    # A reference naming a builtin or an expression of classes defined already, likewise.
    for text, kind in (("int", int), ("list[Shelf]", list[Shelf])):
        assert (
            box[text]._toast_settings().external_name == box[kind]._toast_settings().external_name
        )


class Shelf(BaseModel):
    """Defined after its forward reference, at module level as the reference names it."""

    rows: int
