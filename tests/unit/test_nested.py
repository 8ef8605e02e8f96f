"""Nested external models: each is its own record; trees move in one batch per store."""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, TypeAdapter

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from tests.conftest import CALL_LOGS


def define(url: str) -> tuple[type[ExternalBaseModel], type[ExternalBaseModel], type[BaseModel]]:
    class Leaf(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=url)

    class Branch(ExternalBaseModel):
        leaves: list[Leaf]
        model_config = ExternalConfigDict(storage=url)

    class Holder(BaseModel):
        single: Leaf
        many: list[Leaf]
        by_key: dict[str, Leaf]
        maybe: Leaf | None = None
        branch: Branch | None = None

    return Leaf, Branch, Holder


def test_plain_model_dumps_each_external_field_as_its_own_reference(counting_url: str) -> None:
    """single, list, dict and optional fields all become references and load back."""
    leaf, _, holder = define(counting_url)
    value = holder(
        single=leaf(n=1),
        many=[leaf(n=2), leaf(n=3)],
        by_key={"k": leaf(n=4)},
        maybe=None,
    )
    dumped = value.model_dump()
    assert dumped["single"]["class_name"] == "Leaf"
    assert [item["class_name"] for item in dumped["many"]] == ["Leaf", "Leaf"]
    assert set(dumped["by_key"]["k"]) == {"class_name", "id"}
    assert dumped["maybe"] is None
    assert holder.model_validate(dumped) == value
    assert holder.model_validate_json(value.model_dump_json()) == value


def test_type_adapter_of_a_list(counting_url: str) -> None:
    """TypeAdapter(list[Leaf]) dumps references and validates them back."""
    leaf, _, _ = define(counting_url)
    adapter = TypeAdapter(list[leaf])  # type: ignore[valid-type]
    items = [leaf(n=i) for i in range(3)]
    dumped = adapter.dump_python(items)
    assert all(set(item) == {"class_name", "id"} for item in dumped)
    assert adapter.validate_python(dumped) == items
    assert adapter.validate_json(adapter.dump_json(items)) == items


def test_external_root_writes_whole_tree_in_one_batch(counting_url: str) -> None:
    """Dumping an external model that holds others is one save_records call."""
    leaf, branch, _ = define(counting_url)
    tree = branch(leaves=[leaf(n=i) for i in range(5)])
    reference = tree.model_dump()
    saves = CALL_LOGS[counting_url].of("save")
    assert [call.size for call in saves] == [6]
    loaded = branch.model_validate(reference)
    assert loaded == tree
    loads = CALL_LOGS[counting_url].of("load")
    assert [call.size for call in loads] == [1, 5], "one round per nesting level"


def test_tree_helpers_batch_plain_roots(counting_url: str) -> None:
    """dump()/validate() write and read a plain model's external fields in one call per level."""
    leaf, branch, holder = define(counting_url)
    value = holder(
        single=leaf(n=1),
        many=[leaf(n=2), leaf(n=3)],
        by_key={"k": leaf(n=4)},
        branch=branch(leaves=[leaf(n=5), leaf(n=6)]),
    )
    dumped = pydantic_toast.dump(value)
    log = CALL_LOGS[counting_url]
    assert [call.size for call in log.of("save")] == [7]
    assert pydantic_toast.validate(holder, dumped) == value
    assert [call.size for call in log.of("load")] == [5, 2]


async def test_async_tree_helpers_and_methods_batch_too(counting_url: str) -> None:
    """adump/avalidate/asave/aload batch like their sync forms."""
    leaf, branch, holder = define(counting_url)
    value = holder(single=leaf(n=1), many=[leaf(n=2)], by_key={})
    dumped = await pydantic_toast.adump(value, mode="json")
    assert await pydantic_toast.avalidate(holder, dumped) == value
    tree = branch(leaves=[leaf(n=1), leaf(n=2)])
    reference = await tree.asave()
    assert await branch.aload(reference) == tree
    assert await branch.aload(reference.uuid) == tree
    assert await branch.aload(reference["id"]) == tree
    log = CALL_LOGS[counting_url]
    assert [call.size for call in log.of("save")] == [2, 3]
    assert [call.size for call in log.of("load")] == [2, 1, 2, 1, 2, 1, 2]


def test_same_instance_twice_in_a_tree_is_one_record(counting_url: str) -> None:
    """A model appearing twice is stored once and both references agree."""
    leaf, branch, _ = define(counting_url)
    shared = leaf(n=9)
    tree = branch(leaves=[shared, shared])
    tree.model_dump()
    assert [call.size for call in CALL_LOGS[counting_url].of("save")] == [2]
    assert shared.external_id is not None


def test_nested_records_are_independent(counting_url: str) -> None:
    """A nested model loaded alone by its own reference is the same data."""
    leaf, branch, _ = define(counting_url)
    child = leaf(n=42)
    branch(leaves=[child]).model_dump()
    assert child.external_id is not None
    alone = leaf.model_validate({"class_name": "Leaf", "id": str(child.external_id)})
    assert alone == child
    assert isinstance(alone.external_id, UUID)


def test_recursive_models(memory_url: str) -> None:
    """A self-referencing external model stores each node as its own record."""

    class Node(ExternalBaseModel):
        name: str
        children: list[Node] = []
        model_config = ExternalConfigDict(storage=memory_url)

    tree = Node(name="root", children=[Node(name="a", children=[Node(name="a1")]), Node(name="b")])
    loaded = Node.model_validate(tree.model_dump())
    assert loaded == tree
    assert loaded.children[0].children[0].external_id is not None


def test_a_subclass_in_a_field_of_its_base_class_is_refused_before_anything_is_written(
    memory_url: str,
) -> None:
    """A Dog in a field declared as Animal would be stored as 'Dog', which the Animal field
    cannot load: the holder could never be loaded again. Refused, nothing written; a field
    declared as the subclass, or as a union naming it, stores and loads it."""
    import pytest

    from pydantic_toast import StorageValidationError

    class Animal(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=memory_url)

    class Dog(Animal):
        breed: str

    class Shared(ExternalBaseModel):
        __abstract__ = True
        model_config = ExternalConfigDict(storage=memory_url)

    class Cat(Shared):
        lives: int = 9

    class Owner(ExternalBaseModel):
        pet: Animal
        pets: list[Animal] = []
        model_config = ExternalConfigDict(storage=memory_url)

    class CatOwner(ExternalBaseModel):
        cat: Shared
        model_config = ExternalConfigDict(storage=memory_url)

    class Either(ExternalBaseModel):
        pet: Animal | Dog
        model_config = ExternalConfigDict(storage=memory_url)

    rex = Dog(name="rex", breed="lab")
    for holder in (Owner(pet=rex), Owner(pet=Animal(name="a"), pets=[rex]), CatOwner(cat=Cat())):
        with pytest.raises(StorageValidationError, match=r"base class of it.*nothing was written"):
            holder.model_dump()
    counts = [pydantic_toast.count(model) for model in (Owner, Dog, Cat)]
    assert counts == [0, 0, 0]
    loaded = Either.model_validate(Either(pet=rex).model_dump())
    assert type(loaded.pet) is Dog
    assert loaded.pet == rex
    plain = Owner.model_validate(Owner(pet=Animal(name="a")).model_dump())
    assert type(plain.pet) is Animal


def test_a_subclass_in_a_plain_field_of_its_base_class_is_refused_at_any_depth(
    memory_url: str,
) -> None:
    """A plain model or dataclass subclass where its base is declared (in a list, in a
    recursive model, in a union not naming it) would come back as the base class: refused
    unwritten; a union naming the subclass, and a generic model's parametrization, store."""
    import dataclasses
    from typing import Generic, TypeVar

    import pytest
    from pydantic import BaseModel

    from pydantic_toast import StorageValidationError

    T = TypeVar("T")

    class Animal(BaseModel):
        name: str

    class Dog(Animal):
        bark: str

    class Puppy(Dog):
        age: int = 0

    @dataclasses.dataclass
    class Span:
        start: int

    @dataclasses.dataclass
    class Range(Span):
        end: int = 0

    class Tree(BaseModel):
        kids: list[Tree] = []

    class Leafy(Tree):
        leaf: str = "x"

    class Box(BaseModel, Generic[T]):
        value: T

    class Holder(ExternalBaseModel):
        pets: list[Animal | Dog] = []
        span: Span | None = None
        tree: Tree | None = None
        box: Box[int] | None = None
        any_box: Box | None = None  # type: ignore[type-arg]
        model_config = ExternalConfigDict(storage=memory_url)

    refused = {
        "pets": Holder(pets=[Dog(name="a", bark="w"), Puppy(name="b", bark="w")]),
        "span": Holder(span=Range(1, 2)),
        "tree": Holder(tree=Tree(kids=[Tree(kids=[Leafy()])])),
    }
    for field, holder in refused.items():
        with pytest.raises(StorageValidationError, match="a base class of it") as raised:
            holder.model_dump()
        assert raised.value.field == field
    assert pydantic_toast.count(Holder) == 0
    kept = Holder(
        pets=[Dog(name="a", bark="w"), Animal(name="b")],
        span=Span(1),
        tree=Tree(kids=[Tree()]),
        box=Box[int](value=1),
        any_box=Box[int](value=2),  # a parametrization of the declared class, not a subclass
    )
    loaded = Holder.model_validate(kept.model_dump())
    assert loaded == kept
    assert [type(pet) for pet in loaded.pets] == [Dog, Animal]
