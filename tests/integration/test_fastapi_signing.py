"""Signed references over HTTP on real PostgreSQL: forged, unsigned, expired and rotated keys.

No ``from __future__ import annotations`` here: FastAPI resolves route annotations at runtime.
"""

import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import jsonschema_rs
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    Ref,
    SigningKeys,
    sign_reference,
)
from pydantic_toast.fastapi import install

pytestmark = pytest.mark.postgresql

NEW_KEY, OLD_KEY, RETIRED_KEY = (secrets.token_bytes(32) for _ in range(3))


class SignedCustomer(ExternalBaseModel):
    """A customer on the session's PostgreSQL database."""

    name: str
    model_config = ExternalConfigDict(storage="env:TOAST_TEST_SIGNING_URL")


class SignedOrder(ExternalBaseModel):
    """An order holding its customer (stored as a plain reference inside the order)."""

    product: str
    customer: SignedCustomer
    model_config = ExternalConfigDict(storage="env:TOAST_TEST_SIGNING_URL")


class OrderRequest(BaseModel):
    """A body taking the customer as a (signed) reference."""

    product: str
    customer: Ref[SignedCustomer]


def make_app(keys: SigningKeys) -> FastAPI:
    app = FastAPI()
    install(app, signing=keys)

    @app.post("/customers", status_code=201)
    async def create_customer(customer: SignedCustomer) -> SignedCustomer:
        return customer

    @app.post("/orders", status_code=201)
    async def create_order(body: OrderRequest) -> SignedOrder:
        return SignedOrder(product=body.product, customer=body.customer)

    @app.post("/unannotated-customers", status_code=201)
    async def create_unannotated(customer: SignedCustomer):  # type: ignore[no-untyped-def]
        return {"customer": customer}  # no response model: saved and signed all the same

    @app.get("/orders")
    def list_orders() -> list[SignedOrder]:  # a sync route: serialized the same way
        return list(pydantic_toast.page(SignedOrder, limit=100).items)

    return app


class Spans:
    """Storage operations, counted through the library's telemetry (one span per call)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        pydantic_toast.enable_telemetry(tracer_provider=provider)

    def count(self) -> int:
        return len(self.exporter.get_finished_spans())


@pytest.fixture
def spans() -> Iterator[Spans]:
    state = Spans()
    try:
        yield state
    finally:
        pydantic_toast.disable_telemetry()


@pytest.fixture
def signing_url(postgres_database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TOAST_TEST_SIGNING_URL", postgres_database_url)
    yield postgres_database_url
    pydantic_toast.close_storage()


def test_responses_are_signed_and_only_verified_references_are_read(
    signing_url: str, spans: Spans
) -> None:
    """Unsigned, altered and forged references get a missing record's answer, with no read."""
    keys = SigningKeys(NEW_KEY, OLD_KEY)
    with TestClient(make_app(keys)) as client:
        ada = client.post("/customers", json={"name": "Ada"}).json()
        bob = client.post("/customers", json={"name": "Bob"}).json()
        assert set(ada) == {"class_name", "id", "signature"}
        assert pydantic_toast.verify_reference(ada, keys) == {
            "class_name": "SignedCustomer",
            "id": ada["id"],
        }

        before = spans.count()
        created = client.post("/orders", json={"product": "tea", "customer": ada})
        assert created.status_code == 201, created.text
        assert set(created.json()) == {"class_name", "id", "signature"}
        assert spans.count() > before  # the accepted reference was read, the order written

        unsigned = {"class_name": "SignedCustomer", "id": bob["id"]}
        altered = {**ada, "id": bob["id"]}  # Ada's signature on Bob's id
        flipped = {**ada, "signature": ada["signature"][::-1]}
        forged = sign_reference(unsigned, SigningKeys(secrets.token_bytes(32)))
        missing = sign_reference({"class_name": "SignedCustomer", "id": str(uuid4())}, keys)
        answers: list[dict[str, Any]] = []
        for reference in (unsigned, altered, flipped, forged):
            before = spans.count()
            response = client.post("/orders", json={"product": "x", "customer": reference})
            assert spans.count() == before, "a refused reference must not touch storage"
            assert response.status_code == 422
            answers.append(response.json()["detail"][0])
        response = client.post("/orders", json={"product": "x", "customer": missing})
        answers.append(response.json()["detail"][0])
        for answer in answers:  # refused and missing look the same
            assert {k: v for k, v in answer.items() if k != "input"} == {
                "type": "external_reference_unknown",
                "loc": ["body", "customer"],
                "msg": "Unknown SignedCustomer reference",
                "ctx": {"class_name": "SignedCustomer"},
            }

        # Without a response model: saved with the async API (a blocking call would warn, an
        # error here) and signed, so it can come back.
        loose = client.post("/unannotated-customers", json={"name": "Cy"}).json()["customer"]
        assert set(loose) == {"class_name", "id", "signature"}
        back = client.post("/orders", json={"product": "pen", "customer": loose})
        assert back.status_code == 201, back.text

        listed = client.get("/orders").json()
        assert {item["id"] for item in listed} == {created.json()["id"], back.json()["id"]}
        assert set(listed[0]) == {"class_name", "id", "signature"}

    # Stored data holds plain references: the order loads in plain Python, no key needed.
    order = SignedOrder.model_validate(pydantic_toast.verify_reference(created.json(), keys))
    assert order.customer.name == "Ada"


def test_key_rotation_and_expiry(signing_url: str, spans: Spans) -> None:
    """The newest key signs, every configured key verifies; dropped keys and expiry refuse."""
    old_keys = SigningKeys(OLD_KEY, RETIRED_KEY, expires_in=None)
    with TestClient(make_app(old_keys)) as client:
        signed_by_old = client.post("/customers", json={"name": "Cy"}).json()
    rotated = SigningKeys(NEW_KEY, OLD_KEY)
    with TestClient(make_app(rotated)) as client:
        accepted = client.post("/orders", json={"product": "a", "customer": signed_by_old})
        assert accepted.status_code == 201, accepted.text
        resigned = client.post("/customers", json={"name": "Di"}).json()
    assert pydantic_toast.verify_reference(resigned, SigningKeys(NEW_KEY)) is not None
    with pytest.raises(pydantic_toast.InvalidReferenceError, match="signature does not verify"):
        pydantic_toast.verify_reference(resigned, SigningKeys(OLD_KEY))

    # RETIRED_KEY dropped: what only it signed is refused.
    plain = {"class_name": "SignedCustomer", "id": signed_by_old["id"]}
    retired = sign_reference(plain, SigningKeys(RETIRED_KEY))
    with TestClient(make_app(rotated)) as client:
        refused = client.post("/orders", json={"product": "b", "customer": retired})
    assert refused.status_code == 422

    expiring = SigningKeys(NEW_KEY, expires_in=timedelta(minutes=5))
    with TestClient(make_app(expiring)) as client:
        fresh = client.post("/customers", json={"name": "Ed"}).json()
        assert time.time() < fresh["expires_at"] <= time.time() + 301
        ok = client.post("/orders", json={"product": "c", "customer": fresh})
        assert ok.status_code == 201, ok.text
        # An expired reference, correctly signed: refused before any read.
        past = int(time.time()) - 1
        expired = {**fresh, "expires_at": past}
        expired["signature"] = expiring._signature("SignedCustomer", UUID(fresh["id"]), past)
        with pytest.raises(pydantic_toast.InvalidReferenceError, match="expired"):
            pydantic_toast.verify_reference(expired, expiring)
        before = spans.count()
        late = client.post("/orders", json={"product": "d", "customer": expired})
        assert spans.count() == before
        assert late.status_code == 422
        # Moving expires_at later breaks the signature.
        extended = {**fresh, "expires_at": fresh["expires_at"] + 3600}
        assert (
            client.post("/orders", json={"product": "e", "customer": extended}).status_code == 422
        )


def test_openapi_documents_the_signed_shape(signing_url: str) -> None:
    """The OpenAPI schema of a signing app requires the signature; responses validate against it."""
    keys = SigningKeys(NEW_KEY)
    with TestClient(make_app(keys)) as client:
        schema = client.get("/openapi.json").json()
        created = client.post("/customers", json={"name": "Fay"}).json()
    components = schema["components"]["schemas"]
    output = components["SignedCustomerReference"]  # the response and request shape, one name
    assert output["required"] == ["class_name", "id", "signature"]
    assert output["additionalProperties"] is False
    assert jsonschema_rs.is_valid(output, created)
    unsigned = {"class_name": "SignedCustomer", "id": created["id"]}
    assert not jsonschema_rs.is_valid(output, unsigned)
    assert schema["paths"]["/customers"]["post"]["responses"]["201"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/SignedCustomerReference"}
    # The Ref field takes the two shapes, named components (readable generated classes); a
    # plain body takes the data only, as the route refuses references there.
    request = components["OrderRequest"]["properties"]["customer"]
    assert request == {
        "anyOf": [
            {"$ref": "#/components/schemas/SignedCustomerData"},
            {"$ref": "#/components/schemas/SignedCustomerReference"},
        ]
    }
    assert schema["paths"]["/customers"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/SignedCustomerData"}
    assert components["SignedCustomerData"]["required"] == ["name"]
    assert "x-pydantic-toast-data" not in str(schema)
    # An app without signing keeps the plain shape (schemas are generated per app).
    plain = FastAPI()
    install(plain)

    @plain.post("/customers")
    async def create(customer: SignedCustomer) -> SignedCustomer:
        return customer

    plain_output = plain.openapi()["components"]["schemas"]["SignedCustomerReference"]
    assert plain_output["required"] == ["class_name", "id"]
    assert "signature" not in plain_output["properties"]


def test_a_second_install_without_keys_keeps_the_signing_keys() -> None:
    """install(app) again (say, by a plugin) keeps the keys an earlier install(signing=) gave."""
    from fastapi import FastAPI

    from pydantic_toast.fastapi import install
    from pydantic_toast.fastapi._routes import SIGNING_STATE

    keys = SigningKeys(secrets.token_bytes(32))
    app = FastAPI()
    install(app, signing=keys)
    install(app)
    assert getattr(app.state, SIGNING_STATE) is keys
    bare = FastAPI()
    install(bare)
    assert getattr(bare.state, SIGNING_STATE) is None  # set, so requests raise nothing
