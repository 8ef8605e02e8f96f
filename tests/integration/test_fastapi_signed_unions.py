"""Signed references to discriminated unions of external models, on every backend.

A discriminated union picks its member by a tag that a reference does not carry: signed
references (``{"class_name", "id", "signature"}``) and references with keys added were refused
with Pydantic's ``union_tag_not_found``, never verified nor loaded.

No ``from __future__ import annotations`` here: FastAPI resolves route annotations at runtime.
"""

import secrets
from typing import Annotated, Any, Literal, Optional

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field, TypeAdapter

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    InvalidReferenceError,
    Ref,
    SigningKeys,
    sign_reference,
)
from pydantic_toast.fastapi import install
from tests.integration.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("storage_url", BACKENDS, indirect=True)


class Shop:
    """Two members of a discriminated union, an order holding one, and an app signing them."""

    def __init__(self, url: str, keys: SigningKeys) -> None:
        class Tea(ExternalBaseModel):
            kind: Literal["tea"] = "tea"
            name: str = "green"
            model_config = ExternalConfigDict(storage=url)

        class Cake(ExternalBaseModel):
            kind: Literal["cake"] = "cake"
            name: str = "plain"
            model_config = ExternalConfigDict(storage=url)

        choice = Annotated[Tea | Cake, Field(discriminator="kind")]

        class Order(ExternalBaseModel):  # its own stored name: other tests' Order share url
            item: choice  # type: ignore[valid-type]
            model_config = ExternalConfigDict(storage=url, external_name="SignedUnionOrder")

        class OrderRequest(BaseModel):
            item: Ref[choice]  # type: ignore[valid-type]
            extras: list[Ref[choice]] = []  # type: ignore[valid-type]
            maybe: Ref[Optional[choice]] = None  # type: ignore[valid-type]  # noqa: UP045
            either: Ref[Tea | Cake] | None = None

        app = FastAPI()
        install(app, signing=keys)

        @app.post("/teas")
        async def add_tea(tea: Tea) -> Tea:
            return tea

        @app.post("/cakes")
        async def add_cake(cake: Cake) -> Cake:
            return cake

        @app.post("/orders")
        async def add_order(body: OrderRequest) -> dict[str, Any]:
            await Order(item=body.item).asave()
            chosen = [body.item, *body.extras, body.maybe, body.either]
            return {"items": [None if x is None else [type(x).__name__, x.name] for x in chosen]}

        self.Tea, self.Cake, self.Order, self.choice, self.app = Tea, Cake, Order, choice, app

    def counts(self) -> tuple[int, int, int]:
        return (
            pydantic_toast.count(self.Tea),
            pydantic_toast.count(self.Cake),
            pydantic_toast.count(self.Order),
        )


def test_a_signed_reference_loads_the_member_it_names(storage_url: str) -> None:
    """A signed reference routes to its class's member and loads it, alone, in a list, in an
    Optional and in a plain union; the order is saved holding it."""
    shop = Shop(storage_url, SigningKeys(secrets.token_bytes(32)))
    with TestClient(shop.app) as client:
        tea = client.post("/teas", json={"name": "oolong"}).json()
        cake = client.post("/cakes", json={"name": "lemon"}).json()
        assert set(tea) == {"class_name", "id", "signature"}
        body = {"item": cake, "extras": [tea, cake], "maybe": tea, "either": cake}
        response = client.post("/orders", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["items"] == [
            ["Cake", "lemon"],
            ["Tea", "oolong"],
            ["Cake", "lemon"],
            ["Tea", "oolong"],
            ["Cake", "lemon"],
        ]
    assert shop.counts() == (1, 1, 1)
    (order,) = pydantic_toast.page(shop.Order, limit=10).items
    assert isinstance(order.item, shop.Cake)


def test_altered_unsigned_and_extended_references_are_refused(storage_url: str) -> None:
    """As in a field of one model: an unsigned or altered reference is unknown, one with keys
    added is invalid naming the keys, wherever the union is; nothing is saved."""
    keys = SigningKeys(secrets.token_bytes(32))
    shop = Shop(storage_url, keys)
    with TestClient(shop.app) as client:
        tea = client.post("/teas", json={}).json()
        cake = client.post("/cakes", json={}).json()
        before = shop.counts()
        unknown = {
            "flipped": {**tea, "signature": tea["signature"][::-1]},
            "swapped": {**tea, "id": cake["id"], "class_name": "Cake"},  # Tea's signature
            "unsigned": {"class_name": "Tea", "id": tea["id"]},
            "forged": sign_reference(
                {"class_name": "Tea", "id": tea["id"]}, SigningKeys(secrets.token_bytes(32))
            ),
        }
        for label, reference in unknown.items():
            for field, value, loc in _placements(reference):
                response = client.post("/orders", json={"item": cake, field: value})
                assert response.status_code == 422, (label, field, response.text)
                (error,) = response.json()["detail"]
                assert error["type"] == "external_reference_unknown", (label, field, error)
                assert error["loc"][: len(loc)] == loc
        extended = {**tea, "note": "x", "kind": "tea"}, {**cake, "note": "x"}
        for reference in extended:
            for field, value, loc in _placements(reference):
                response = client.post("/orders", json={"item": cake, field: value})
                assert response.status_code == 422, (field, response.text)
                (error, *_) = response.json()["detail"]
                assert error["type"] == "external_reference_invalid", (field, error)
                assert "unexpected keys 'note'" in error["msg"]
                assert error["loc"][: len(loc)] == loc
    assert shop.counts() == before


def _placements(reference: dict[str, Any]) -> list[tuple[str, Any, list[Any]]]:
    """``reference`` in each union field of the request, with where its error is reported."""
    member = "tea" if reference["class_name"] == "Tea" else "cake"
    return [
        ("item", reference, ["body", "item", member]),
        ("extras", [reference], ["body", "extras", 0, member]),
        ("maybe", reference, ["body", "maybe", member]),
    ]


def test_outside_fastapi_unsigned_references_load_and_added_keys_are_refused(
    storage_url: str,
) -> None:
    """TypeAdapter and pydantic_toast.validate load plain references to the union's members and
    refuse one with keys added (or signed, unverified) with InvalidReferenceError."""
    keys = SigningKeys(secrets.token_bytes(32))
    shop = Shop(storage_url, keys)
    tea = pydantic_toast.dump(shop.Tea(name="sencha"))
    cake = pydantic_toast.dump(shop.Cake(name="carrot"))
    listed = list[shop.choice]  # type: ignore[name-defined]
    loaded = pydantic_toast.validate(listed, [tea, cake])
    assert [(type(x).__name__, x.name) for x in loaded] == [("Tea", "sencha"), ("Cake", "carrot")]
    assert TypeAdapter(Optional[shop.choice]).validate_python(cake).name == "carrot"  # noqa: UP045
    before = shop.counts()
    for bad in ({**cake, "note": 1}, dict(sign_reference(cake, keys))):
        with pytest.raises(InvalidReferenceError, match="the Cake reference") as raised:
            pydantic_toast.validate(listed, [tea, bad])
        assert raised.value.class_name == "Cake"
        with pytest.raises(InvalidReferenceError, match="the Cake reference"):
            TypeAdapter(shop.choice).validate_python(bad)
    assert shop.counts() == before
