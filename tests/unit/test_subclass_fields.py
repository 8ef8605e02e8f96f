"""A field typed as an external model class holds its subclasses: saved, and loaded as them."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    InvalidReferenceError,
    Owned,
    RecordNotFoundError,
    StorageConfigurationError,
)
from tests.conftest import CALL_LOGS


def zoo_on(url: str, *, abstract: bool = False) -> tuple[Any, Any, Any]:
    """``Animal`` (abstract or not), its subclass ``Dog`` and ``Owner`` with a ``pet: Animal``."""

    class Animal(ExternalBaseModel):
        __abstract__ = abstract
        name: str
        model_config = ExternalConfigDict(storage=url)

    class Dog(Animal):
        breed: str

    class Owner(ExternalBaseModel):
        pet: Animal
        model_config = ExternalConfigDict(storage=url)

    return Animal, Dog, Owner


@pytest.mark.parametrize("abstract", [False, True])
def test_a_subclass_in_a_field_loads_as_the_subclass(memory_url: str, abstract: bool) -> None:
    """The bug: Owner(pet=Dog(...)) was saved, then could never be loaded."""
    _, dog, owner = zoo_on(memory_url, abstract=abstract)
    saved = owner(pet=dog(name="rex", breed="lab"))
    loaded = owner.model_validate(saved.model_dump())
    assert type(loaded.pet) is dog
    assert loaded.pet == saved.pet
    assert loaded.pet.external_id == saved.pet.external_id
    assert owner.model_validate_json(saved.model_dump_json()).pet == saved.pet


@pytest.mark.parametrize("abstract", [False, True])
async def test_a_subclass_in_a_field_loads_with_aload(memory_url: str, abstract: bool) -> None:
    _, dog, owner = zoo_on(memory_url, abstract=abstract)
    saved = owner(pet=dog(name="rex", breed="lab"))
    loaded = await owner.aload(await saved.asave())
    assert type(loaded.pet) is dog
    assert loaded.pet == saved.pet


def test_the_base_class_itself_still_loads_in_its_field(memory_url: str) -> None:
    animal, _, owner = zoo_on(memory_url)
    loaded = owner.model_validate(owner(pet=animal(name="generic")).model_dump())
    assert type(loaded.pet) is animal
    assert loaded.pet.name == "generic"


@pytest.mark.parametrize("abstract", [False, True])
async def test_the_base_class_loads_a_reference_to_a_subclass(
    memory_url: str, abstract: bool
) -> None:
    """Animal.aload(dog_ref) and Animal.model_validate(dog_ref): a Dog is an Animal."""
    animal, dog, _ = zoo_on(memory_url, abstract=abstract)
    rex = dog(name="rex", breed="lab")
    reference = await rex.asave()
    by_aload = await animal.aload(reference)
    by_validate = await pydantic_toast.avalidate(animal, reference)
    assert type(by_aload) is dog
    assert by_aload == rex
    assert type(by_validate) is dog
    assert by_validate == rex


@pytest.mark.parametrize("abstract", [False, True])
def test_the_base_class_model_validate_loads_a_subclass(memory_url: str, abstract: bool) -> None:
    animal, dog, _ = zoo_on(memory_url, abstract=abstract)
    rex = dog(name="rex", breed="lab")
    for loaded in (
        animal.model_validate(rex.model_dump()),
        animal.model_validate_json(rex.model_dump_json()),
        TypeAdapter(animal).validate_python(rex.model_dump()),
        pydantic_toast.validate(animal, rex.model_dump()),
    ):
        assert type(loaded) is dog
        assert loaded == rex


def test_a_subclass_nested_in_a_plain_model_loads(memory_url: str) -> None:
    animal, dog, owner = zoo_on(memory_url)

    class Household(BaseModel):
        owner: owner
        pets: list[animal]

    saved = Household(
        owner=owner(pet=dog(name="rex", breed="lab")),
        pets=[animal(name="cat-ish"), dog(name="fido", breed="pug")],
    )
    data = pydantic_toast.dump(saved)
    for loaded in (Household.model_validate(data), pydantic_toast.validate(Household, data)):
        assert type(loaded.owner.pet) is dog
        assert loaded.owner.pet == saved.owner.pet
        assert [type(pet) for pet in loaded.pets] == [animal, dog]
        assert loaded.pets == saved.pets


@pytest.mark.parametrize("abstract", [False, True])
async def test_a_list_of_the_base_class_loads_subclasses_with_one_read(
    counting_url: str, abstract: bool
) -> None:
    """list[Animal] of 1,200 records, Dogs among them: one load_records call, all as saved.

    The batch fast path takes the general path when a class name differs; its prefetch still
    reads every record at once (the subclass is one of the type's routes).
    """
    animal, dog, _ = zoo_on(counting_url, abstract=abstract)
    pets = [
        dog(name=f"dog{i}", breed="lab") if abstract or i % 3 else animal(name=f"a{i}")
        for i in range(1200)
    ]
    references = await pydantic_toast.adump(pets)
    CALL_LOGS[counting_url].calls.clear()
    loaded = await pydantic_toast.avalidate(list[animal], references)
    assert [type(pet) for pet in loaded] == [type(pet) for pet in pets]
    assert loaded == pets
    assert [(c.method, c.size) for c in CALL_LOGS[counting_url].calls] == [("load", 1200)]
    assert await asyncio.to_thread(pydantic_toast.validate, list[animal], references) == pets


async def test_owners_load_their_subclass_pets_in_one_round_per_level(counting_url: str) -> None:
    """The tree's prefetch follows a reference to a subclass: no read per pet."""
    _, dog, owner = zoo_on(counting_url)
    owners = [owner(pet=dog(name=f"dog{i}", breed="lab")) for i in range(50)]
    references = await pydantic_toast.adump(owners)
    CALL_LOGS[counting_url].calls.clear()
    loaded = await pydantic_toast.avalidate(list[owner], references)
    assert [o.pet for o in loaded] == [o.pet for o in owners]
    assert [(c.method, c.size) for c in CALL_LOGS[counting_url].calls] == [
        ("load", 50),
        ("load", 50),
    ]


async def test_a_subclass_defined_after_a_load_is_prefetched_too(counting_url: str) -> None:
    """Routes cached before the subclass existed are worked out again."""
    animal, _, owner = zoo_on(counting_url)
    first = await owner(pet=animal(name="first")).asave()
    await owner.aload(first)  # the class's routes cached
    await pydantic_toast.avalidate(list[owner], [first])  # the type's adapter and routes cached

    class Cat(animal):
        indoor: bool

    saved = [owner(pet=Cat(name=f"cat{i}", indoor=True)) for i in range(3)]
    references = await pydantic_toast.adump(saved)
    CALL_LOGS[counting_url].calls.clear()
    loaded = await pydantic_toast.avalidate(list[owner], references)
    assert [o.pet for o in loaded] == [o.pet for o in saved]
    assert [(c.method, c.size) for c in CALL_LOGS[counting_url].calls] == [
        ("load", 3),
        ("load", 3),
    ]  # the owners, then their cats
    CALL_LOGS[counting_url].calls.clear()
    assert (await owner.aload(references[0])).pet == saved[0].pet
    assert [(c.method, c.size) for c in CALL_LOGS[counting_url].calls] == [
        ("load", 1),
        ("load", 1),
    ]


async def test_a_subclass_is_read_from_its_own_store(memory_url: str) -> None:
    animal, _, owner = zoo_on(memory_url)
    other_url = f"{memory_url}-dogs"

    class Puppy(animal):
        age: int
        model_config = ExternalConfigDict(storage=other_url)

    saved = owner(pet=Puppy(name="bit", age=1))
    loaded = await owner.aload(await saved.asave())
    assert type(loaded.pet) is Puppy
    assert loaded.pet == saved.pet
    assert await pydantic_toast.avalidate(list[animal], [saved.pet.model_dump()]) == [saved.pet]


async def test_a_subclass_with_external_fields_loads_its_own_tree(memory_url: str) -> None:
    animal, _, owner = zoo_on(memory_url)

    class Toy(ExternalBaseModel):
        kind: str
        model_config = ExternalConfigDict(storage=memory_url)

    class Terrier(animal):
        toys: list[Toy]

    saved = owner(pet=Terrier(name="jack", toys=[Toy(kind="ball"), Toy(kind="rope")]))
    loaded = await owner.aload(await saved.asave())
    assert type(loaded.pet) is Terrier
    assert [type(t) for t in loaded.pet.toys] == [Toy, Toy]
    assert loaded.pet == saved.pet
    reference = saved.model_dump()
    assert (await asyncio.to_thread(owner.model_validate, reference)).pet == saved.pet


async def test_a_deeper_subclass_loads_too(memory_url: str) -> None:
    _, dog, owner = zoo_on(memory_url, abstract=True)

    class Puppy(dog):
        age: int

    saved = owner(pet=Puppy(name="bit", breed="lab", age=1))
    loaded = await owner.aload(await saved.asave())
    assert type(loaded.pet) is Puppy
    assert loaded.pet == saved.pet


def test_a_reference_to_a_class_that_is_not_a_subclass_is_still_refused(memory_url: str) -> None:
    animal, _, owner = zoo_on(memory_url)

    class Rock(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=memory_url)

    rock = Rock(name="granite").model_dump()
    with pytest.raises(
        InvalidReferenceError, match=r"names class 'Rock', but .*Animal is stored as 'Animal'"
    ):
        animal.model_validate(rock)
    with pytest.raises(ValidationError, match=r"validate it with .*Rock"):
        owner.model_validate({"pet": rock})


async def test_an_abstract_base_refuses_a_class_that_is_not_a_subclass(memory_url: str) -> None:
    animal, _, owner = zoo_on(memory_url, abstract=True)
    stranger = {"class_name": "Stranger", "id": "0b6f1e0c-5a8e-4d59-9a8f-6a7f3c1d2e4b"}
    with pytest.raises(InvalidReferenceError, match=r"Animal is abstract and none of its"):
        await animal.aload(stranger)
    with pytest.raises(ValidationError, match=r"Animal is abstract and none of its"):
        owner.model_validate({"pet": stranger})
    with pytest.raises(StorageConfigurationError, match=r"abstract"):
        await animal.aload("0b6f1e0c-5a8e-4d59-9a8f-6a7f3c1d2e4b")  # an id names no subclass


def test_two_subclasses_stored_under_one_name_are_refused_with_the_fix(memory_url: str) -> None:
    animal, _, owner = zoo_on(memory_url)

    class Bird(animal):
        model_config = ExternalConfigDict(storage=f"{memory_url}-a", external_name="Bird")

    class Parrot(animal):
        model_config = ExternalConfigDict(storage=f"{memory_url}-b", external_name="Bird")

    reference = owner(pet=Bird(name="tweety")).model_dump()
    with pytest.raises(StorageConfigurationError, match=r"both .*Bird and .*Parrot.*external_name"):
        owner.model_validate(reference)


async def test_adelete_through_the_base_names_the_subclass(memory_url: str) -> None:
    """Deleting is exact: a reference to a subclass's record names the class to delete with."""
    animal, dog, _ = zoo_on(memory_url)
    reference = await dog(name="rex", breed="lab").asave()
    with pytest.raises(InvalidReferenceError, match=r"a subclass of .*Animal: pass .*Dog instead"):
        await pydantic_toast.adelete(animal, reference)
    await pydantic_toast.adelete(dog, reference)


async def test_an_owned_field_deletes_its_subclass_child(memory_url: str) -> None:
    """Deleting the parent deletes the owned child stored as the subclass (its own record)."""
    animal, dog, _ = zoo_on(memory_url)

    class Keeper(ExternalBaseModel):
        pet: Annotated[animal, Owned]
        model_config = ExternalConfigDict(storage=memory_url)

    rex = dog(name="rex", breed="lab")
    reference = await Keeper(pet=rex).asave()
    await pydantic_toast.adelete(Keeper, reference)
    with pytest.raises(RecordNotFoundError):
        await dog.aload(rex.model_dump())


async def test_a_subclass_record_held_in_a_base_class_field_is_no_orphan(memory_url: str) -> None:
    _, dog, owner = zoo_on(memory_url)
    held = owner(pet=dog(name="rex", breed="lab"))
    await held.asave()
    loose = dog(name="stray", breed="mutt")
    await loose.asave()
    report = await pydantic_toast.afind_orphans(dog)
    assert "Owner" in report.referencing
    assert report.orphans == [loose.external_id]


def test_a_discriminated_union_routes_a_subclass_to_its_member(memory_url: str) -> None:
    class Cat(ExternalBaseModel):
        kind: Literal["cat"] = "cat"
        name: str
        model_config = ExternalConfigDict(storage=memory_url)

    class Dog(ExternalBaseModel):
        kind: Literal["dog"] = "dog"
        name: str
        model_config = ExternalConfigDict(storage=memory_url)

    class Puppy(Dog):
        age: int

    class Home(ExternalBaseModel):
        pet: Annotated[Cat | Dog, Field(discriminator="kind")]
        model_config = ExternalConfigDict(storage=memory_url)

    for pet in (Puppy(name="bit", age=1), Cat(name="tom")):
        saved = Home(pet=pet)
        loaded = Home.model_validate(saved.model_dump())
        assert type(loaded.pet) is type(pet)
        assert loaded.pet == pet
    stranger = {"class_name": "Stranger", "id": "0b6f1e0c-5a8e-4d59-9a8f-6a7f3c1d2e4b"}
    with pytest.raises(ValidationError, match=r"none of this union's external models"):
        Home.model_validate({"pet": stranger})


def test_a_plain_union_loads_a_subclass_through_its_base(memory_url: str) -> None:
    animal, dog, _ = zoo_on(memory_url)

    class Rock(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=memory_url)

    class Shelf(ExternalBaseModel):
        thing: Rock | animal
        model_config = ExternalConfigDict(storage=memory_url)

    saved = Shelf(thing=dog(name="rex", breed="lab"))
    loaded = Shelf.model_validate(saved.model_dump())
    assert type(loaded.thing) is dog
    assert loaded.thing == saved.thing
