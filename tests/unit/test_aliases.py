"""Every Pydantic alias form works in external models, and none may spell 'class_name'."""

from __future__ import annotations

import json
from uuid import UUID

import pytest
from pydantic import AliasChoices, AliasGenerator, AliasPath, BaseModel, Field, TypeAdapter
from pydantic.alias_generators import to_camel

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageConfigurationError
from tests.conftest import memory_store_of as _store_for


def define(url: str) -> type[ExternalBaseModel]:
    class Customer(ExternalBaseModel):
        full_name: str = Field(validation_alias=AliasChoices("fullName", "name"))
        city: str = Field(validation_alias=AliasPath("address", "city"))
        email: str = Field(serialization_alias="mail")
        phone_number: str = Field(alias="tel")
        vip_level: int = 0
        model_config = ExternalConfigDict(
            storage=url,
            alias_generator=AliasGenerator(validation_alias=to_camel),
            validate_by_name=True,
        )

    return Customer


DATA = {
    "name": "Ada",
    "address": {"city": "Paris"},
    "email": "a@example.org",
    "tel": "123",
    "vipLevel": 2,
}


def test_every_alias_form_validates_stores_by_name_and_round_trips(memory_url: str) -> None:
    """Full data validates through each alias form; the record holds field names; it loads back."""
    model = define(memory_url)
    customer = model.model_validate(DATA)
    reference = customer.model_dump()
    record = _store_for(memory_url).get(("Customer", UUID(reference["id"])))
    assert record is not None
    assert json.loads(record.data) == {
        "full_name": "Ada",
        "city": "Paris",
        "email": "a@example.org",
        "phone_number": "123",
        "vip_level": 2,
    }
    assert model.model_validate(reference) == customer
    assert model.model_validate_json(customer.model_dump_json()) == customer


def test_aliases_round_trip_nested_and_through_type_adapter(memory_url: str) -> None:
    """Inside a plain model and a TypeAdapter, aliased external models dump and load."""
    model = define(memory_url)

    class Order(BaseModel):
        customer: model  # type: ignore[valid-type]
        others: list[model]  # type: ignore[valid-type]

    order = Order.model_validate({"customer": DATA, "others": [DATA | {"fullName": "Bob"}]})
    assert order.others[0].full_name == "Bob"
    dumped = order.model_dump(mode="json", by_alias=True)
    assert dumped["customer"].keys() == {"class_name", "id"}
    assert Order.model_validate(dumped) == order
    adapter = TypeAdapter(list[model])  # type: ignore[valid-type]
    dumped_list = adapter.dump_python([order.customer], by_alias=True)
    assert adapter.validate_python(dumped_list) == [order.customer]
    assert adapter.validate_json(adapter.dump_json(order.others)) == order.others


@pytest.mark.parametrize(
    "field",
    [
        Field(alias="class_name"),
        Field(validation_alias="class_name"),
        Field(serialization_alias="class_name"),
        Field(validation_alias=AliasChoices("kind", "class_name")),
        Field(validation_alias=AliasPath("class_name", 0)),
        Field(validation_alias=AliasChoices("kind", AliasPath("class_name", "x"))),
    ],
)
def test_class_name_is_refused_in_every_alias_form(memory_url: str, field: object) -> None:
    """A field read or written under 'class_name' would make data look like a reference."""
    with pytest.raises(StorageConfigurationError, match="named or aliased 'class_name'"):

        class Tagged(ExternalBaseModel):
            label: str = field  # type: ignore[assignment]
            model_config = ExternalConfigDict(storage=memory_url)


def test_an_alias_generator_that_yields_class_name_is_refused(memory_url: str) -> None:
    """alias_generator output is checked like a hand-written alias."""
    with pytest.raises(StorageConfigurationError, match="'kind' named or aliased"):

        class Tagged(ExternalBaseModel):
            kind: str
            model_config = ExternalConfigDict(
                storage=memory_url, alias_generator=lambda name: "class_name"
            )


def test_alias_paths_deeper_than_the_top_level_may_contain_class_name(memory_url: str) -> None:
    """Only the top-level key matters: AliasPath('meta', 'class_name') is allowed."""

    class Tagged(ExternalBaseModel):
        kind: str = Field(validation_alias=AliasPath("meta", "class_name"))
        model_config = ExternalConfigDict(storage=memory_url)

    tagged = Tagged.model_validate({"meta": {"class_name": "x"}})
    assert Tagged.model_validate(tagged.model_dump()).kind == "x"
