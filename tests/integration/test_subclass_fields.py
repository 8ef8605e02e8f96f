"""A subclass held in a field typed as its base class, on PostgreSQL and Redis (and SQLite)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from tests.integration.conftest import BACKENDS

SERVERS = [param for param in BACKENDS if param.id in ("postgresql", "redis", "sqlite")]


def zoo_on(url: str, *, abstract: bool) -> tuple[Any, Any, Any]:
    """``Animal`` (abstract or not), its subclass ``Dog``, and ``Owner`` with ``pet: Animal``.

    Stored names of this test's own: the server's store is shared by every test.
    """
    tag = uuid4().hex[:8]

    class Animal(ExternalBaseModel):
        __abstract__ = abstract
        name: str
        model_config = ExternalConfigDict(storage=url, external_name=f"Animal{tag}")

    class Dog(Animal):
        breed: str
        model_config = ExternalConfigDict(external_name=f"Dog{tag}")

    class Owner(ExternalBaseModel):
        pet: Animal
        model_config = ExternalConfigDict(storage=url, external_name=f"Owner{tag}")

    return Animal, Dog, Owner


@pytest.mark.parametrize("abstract", [False, True])
@pytest.mark.parametrize("storage_url", SERVERS, indirect=True)
async def test_a_subclass_in_a_base_class_field_round_trips(
    storage_url: str, abstract: bool
) -> None:
    """Owner(pet=Dog(...)) saved, then loaded with the Dog: sync, async, and a batch of 1,000."""
    animal, dog, owner = zoo_on(storage_url, abstract=abstract)
    saved = owner(pet=dog(name="rex", breed="lab"))
    reference = await saved.asave()

    loaded = await owner.aload(reference)
    assert type(loaded.pet) is dog
    assert loaded.pet == saved.pet
    assert loaded.pet.external_revision == 1
    synced = await asyncio.to_thread(owner.model_validate, reference)
    assert type(synced.pet) is dog
    assert synced.pet == saved.pet

    pets = [
        dog(name=f"d{i}", breed="lab") if abstract or i % 2 else animal(name=f"a{i}")
        for i in range(1000)
    ]
    references = await pydantic_toast.adump(pets)
    batch = await pydantic_toast.avalidate(list[animal], references)
    assert [type(pet) for pet in batch] == [type(pet) for pet in pets]
    assert batch == pets
    assert await animal.aload(references[1]) == pets[1]
