"""FastAPI at the trust boundary: references as capabilities, full data, errors, lifespans.

No ``from __future__ import annotations`` here: FastAPI resolves route annotations at runtime.
"""

import dataclasses
import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID, uuid4

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

import pydantic_toast
from pydantic_toast import (
    AcceptReference,
    BlockingStorageCallWarning,
    Expanded,
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalReference,
    Ref,
    StorageConnectionError,
    to_data,
)
from pydantic_toast.fastapi import (
    conditional,
    install,
    install_error_handlers,
    loader,
    storage_lifespan,
)
from pydantic_toast.runtime.blocking import forget_call_sites, report_blocking_call
from tests.conftest import CALL_LOGS, memory_store_of
from tests.unit.test_runtime import DownBackend  # noqa: F401  (registers down://)

URL = f"counting://fastapi-boundary-{uuid4().hex}"
TENANTS: dict[str, set[UUID]] = {"a": set(), "b": set()}
AUTHORIZED: list[ExternalReference] = []


class Customer(ExternalBaseModel):
    """A customer record (one tenant's)."""

    name: str
    model_config = ExternalConfigDict(storage=URL)


class Order(ExternalBaseModel):
    """An order; its customer arrives as full data only."""

    product: str
    customer: Customer
    model_config = ExternalConfigDict(storage=URL)


async def same_tenant(reference: ExternalReference, request: Request) -> bool:
    """Only the caller's tenant's customers may be referenced."""
    AUTHORIZED.append(reference)
    return reference.uuid in TENANTS.get(request.headers.get("X-Tenant", ""), set())


class NewOrder(BaseModel):
    """A request body that accepts a customer as a reference of the caller's tenant."""

    product: str
    customer: Annotated[Customer, AcceptReference(authorize=same_tenant)]


class Gift(BaseModel):
    """A request body that accepts any customer reference (no hook)."""

    customer: Ref[Customer]


def make_app() -> FastAPI:
    app = FastAPI()
    install(app)

    @app.post("/orders", status_code=201)
    async def create(body: NewOrder) -> dict[str, str]:
        order = Order(product=body.product, customer=body.customer)
        await order.asave()
        return {"customer": body.customer.name}

    @app.post("/raw-orders", status_code=201)
    async def create_raw(order: Order) -> dict[str, str]:
        await order.asave()
        return {"customer": order.customer.name}

    @app.post("/gifts")
    async def gift(body: Gift) -> dict[str, str]:
        return {"customer": body.customer.name}

    @app.get("/customers/{id}")
    async def read(customer: Annotated[Customer, Depends(loader(Customer))]) -> Expanded[Customer]:
        return customer

    @app.put("/customers/{id}")
    async def rename(
        customer: Annotated[Customer, Depends(conditional(Customer, require=True))], name: str
    ) -> dict[str, str]:
        customer.name = name
        await customer.asave()
        return {"name": customer.name}

    @app.delete("/customers/{id}", status_code=204)
    async def delete(id: UUID) -> None:
        await pydantic_toast.adelete(Customer, id)

    return app


async def saved_customer(name: str, tenant: str) -> ExternalReference:
    reference = await Customer(name=name).asave()
    TENANTS[tenant].add(reference.uuid)
    return reference


def loads() -> int:
    return len(CALL_LOGS[URL].of("load")) if URL in CALL_LOGS else 0


@pytest.fixture
def client() -> Any:
    """The test app on its own counting store."""
    with TestClient(make_app()) as client:
        yield client


def test_accepted_reference_is_authorized_and_loaded_without_blocking(client: TestClient) -> None:
    """An accepted field loads a reference the hook allows; refused and missing look the same."""
    ada = client.portal.call(saved_customer, "Ada", "a")  # type: ignore[union-attr]
    bob = client.portal.call(saved_customer, "Bob", "b")  # type: ignore[union-attr]
    AUTHORIZED.clear()
    headers = {"X-Tenant": "a"}
    ok = client.post("/orders", json={"product": "tea", "customer": ada}, headers=headers)
    assert ok.status_code == 201, ok.text
    assert ok.json() == {"customer": "Ada"}
    assert [ada] == AUTHORIZED
    before = loads()
    refused = client.post("/orders", json={"product": "tea", "customer": bob}, headers=headers)
    assert loads() == before  # refused without reading it
    ghost = {"class_name": "Customer", "id": str(uuid4())}
    missing = client.post("/orders", json={"product": "tea", "customer": ghost}, headers=headers)
    assert refused.status_code == missing.status_code == 422
    for response, reference in ((refused, bob), (missing, ghost)):
        (problem,) = response.json()["detail"]
        assert problem["loc"] == ["body", "customer"]
        assert problem["msg"] == "Unknown Customer reference"
        assert problem["type"] == "external_reference_unknown"
        assert problem["input"] == reference
    full = client.post("/orders", json={"product": "tea", "customer": {"name": "New"}})
    assert full.status_code == 201, full.text


def test_references_are_refused_where_not_accepted_without_touching_storage(
    client: TestClient,
) -> None:
    """A reference in a field without the opt-in is a 422 at that field; nothing is read."""
    ada = client.portal.call(saved_customer, "Ada", "a")  # type: ignore[union-attr]
    before = loads()
    nested = client.post("/raw-orders", json={"product": "tea", "customer": ada})
    assert loads() == before
    assert nested.status_code == 422
    (problem,) = nested.json()["detail"]
    assert problem["loc"] == ["body", "customer"]
    assert problem["type"] == "external_reference_not_accepted"
    order = client.portal.call(Order(product="x", customer=Customer(name="c")).asave)  # type: ignore[union-attr]
    whole = client.post("/raw-orders", json=order)
    assert whole.status_code == 422
    assert whole.json()["detail"][0]["loc"] == ["body"]
    assert loads() == before
    malformed = client.post("/gifts", json={"customer": {"class_name": "Customer", "id": "x"}})
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["msg"] == "Invalid Customer reference"


def test_ref_without_hook_loads_any_reference_and_plain_python_still_loads(
    client: TestClient,
) -> None:
    """Ref[...] accepts any existing reference; model_validate outside a request loads as ever."""
    ada = client.portal.call(saved_customer, "Ada", "b")  # type: ignore[union-attr]
    assert client.post("/gifts", json={"customer": ada}).json() == {"customer": "Ada"}
    assert Customer.model_validate(ada).name == "Ada"
    assert Gift.model_validate({"customer": ada}).customer.name == "Ada"


def test_expanded_response_is_full_data_without_a_write(client: TestClient) -> None:
    """Expanded[Customer] answers the fields, writes nothing, and OpenAPI shows CustomerData."""
    ada = client.portal.call(saved_customer, "Ada", "a")  # type: ignore[union-attr]
    saves = len(CALL_LOGS[URL].of("save"))
    response = client.get(f"/customers/{ada['id']}")
    assert response.status_code == 200
    assert response.json() == {"name": "Ada"}
    assert len(CALL_LOGS[URL].of("save")) == saves
    schema = client.get("/openapi.json").json()
    ok = schema["paths"]["/customers/{id}"]["get"]["responses"]
    assert ok["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CustomerData"
    }
    assert schema["components"]["schemas"]["CustomerData"]["properties"] == {
        "name": {"title": "Name", "type": "string"}
    }
    assert {"404", "422", "500", "503"} <= set(ok)
    assert ok["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}


class Node(ExternalBaseModel):
    """A model that can hold itself (a cycle in the schema)."""

    name: str
    next: "Node | None" = None
    model_config = ExternalConfigDict(storage=URL)


class Line(BaseModel):
    """A plain model holding an external one."""

    node: Node
    quantity: int


class Basket(ExternalBaseModel):
    """External models nested directly, through a plain model, twice, and in a cycle."""

    lines: list[Line]
    owner: Node
    buyer: Customer
    model_config = ExternalConfigDict(storage=URL)


def test_expanded_schema_shows_nested_external_models_as_data() -> None:
    """OrderData documents its nested customer as CustomerData, matching what it serializes."""
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(Expanded[Basket])
    basket = Basket(
        lines=[Line(node=Node(name="a", next=Node(name="b")), quantity=2)],
        owner=Node(name="o"),
        buyer=Customer(name="Ada"),
    )
    data = adapter.dump_python(basket, mode="json")
    assert data == {
        "lines": [{"node": {"name": "a", "next": {"name": "b", "next": None}}, "quantity": 2}],
        "owner": {"name": "o", "next": None},
        "buyer": {"name": "Ada"},
    }
    assert basket.external_id is None
    schema = adapter.json_schema(mode="serialization")
    defs = schema["$defs"]
    assert schema["properties"]["owner"] == {"$ref": "#/$defs/NodeData"}
    assert schema["properties"]["buyer"] == {"$ref": "#/$defs/CustomerData"}
    assert defs["LineData"]["properties"]["node"] == {"$ref": "#/$defs/NodeData"}
    assert defs["NodeData"]["properties"]["next"]["anyOf"][0] == {"$ref": "#/$defs/NodeData"}
    assert "class_name" not in str(schema)  # no reference anywhere in the expanded tree
    # The plain types keep their reference schemas.
    plain = TypeAdapter(Line).json_schema(mode="serialization")
    assert plain["properties"]["node"] == {"$ref": "#/$defs/Node"}
    assert plain["$defs"]["Node"]["required"] == ["class_name", "id"]

    app = FastAPI()
    install(app)

    @app.post("/orders")
    async def place(order: Order) -> Expanded[Order]:
        return order

    with TestClient(app) as client:
        answered = client.post("/orders", json={"product": "tea", "customer": {"name": "Bo"}})
        components = client.get("/openapi.json").json()["components"]["schemas"]
    assert answered.json() == {"product": "tea", "customer": {"name": "Bo"}}
    assert components["OrderData"]["properties"]["customer"] == {
        "$ref": "#/components/schemas/CustomerData"
    }


def test_ref_in_a_query_parameter_is_refused_when_the_route_is_defined() -> None:
    """A reference cannot arrive in a query: the route definition says so, loudly."""
    from fastapi import Query

    app = FastAPI()
    install(app)
    with pytest.raises(pydantic_toast.StorageUsageError, match="only a JSON body can carry"):

        @app.get("/by-customer")
        async def by_customer(customer: Annotated[Ref[Customer], Query()]) -> None:
            return None

    @app.get("/by-name")  # a plain query model of an external model's data is fine
    async def by_name(customer: Annotated[Customer, Query()]) -> dict[str, str]:
        return {"name": customer.name}

    with TestClient(app) as client:
        assert client.get("/by-name", params={"name": "Bo"}).json() == {"name": "Bo"}


def test_a_dependencys_accepting_body_parameter_is_authorized_and_loaded() -> None:
    """A Ref/AcceptReference body parameter of a dependency works as one of the route's own.

    FastAPI reads a dependency's body parameters from the same request body; they were never
    prefetched, so every reference there, even one the hook allows, was "Unknown".
    """
    from fastapi import Body, Query

    async def customer_of(
        customer: Annotated[Customer, AcceptReference(authorize=same_tenant), Body(embed=True)],
    ) -> Customer:
        return customer

    app = FastAPI()
    install(app)

    @app.post("/by-dependency")
    async def by_dependency(customer: Annotated[Customer, Depends(customer_of)]) -> dict[str, str]:
        return {"customer": customer.name}

    async def by_query(customer: Annotated[Ref[Customer], Query()]) -> None:
        return None

    with pytest.raises(pydantic_toast.StorageUsageError, match="only a JSON body can carry"):

        @app.get("/query-dependency")
        async def query_dependency(_: Annotated[None, Depends(by_query)]) -> None:
            return None

    with TestClient(app) as client:
        ada = client.portal.call(saved_customer, "Ada", "a")  # type: ignore[union-attr]
        bob = client.portal.call(saved_customer, "Bob", "b")  # type: ignore[union-attr]
        AUTHORIZED.clear()
        headers = {"X-Tenant": "a"}
        ok = client.post("/by-dependency", json={"customer": ada}, headers=headers)
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"customer": "Ada"}
        refused = client.post("/by-dependency", json={"customer": bob}, headers=headers)
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["msg"] == "Unknown Customer reference"
        assert [ada, bob] == AUTHORIZED


def test_background_tasks_run_as_trusted_code() -> None:
    """A response's background tasks (the application's own code, run after the response)
    validate stored data holding references: they ran inside the request's boundary, where
    every such validation failed with "A reference is not accepted here"."""
    from fastapi import BackgroundTasks

    class Invoice(BaseModel):
        customer: Customer

    done: list[str] = []

    async def bill(stored: dict[str, Any]) -> None:
        invoice = await pydantic_toast.avalidate(Invoice, stored)
        done.append(invoice.customer.name)

    app = FastAPI()
    install(app)

    @app.post("/bill", status_code=202)
    async def queue_bill(tasks: BackgroundTasks) -> None:
        stored = await pydantic_toast.adump(Invoice(customer=Customer(name="Ada")))
        tasks.add_task(bill, stored)

    with TestClient(app) as client:
        assert client.post("/bill").status_code == 202
    assert done == ["Ada"]


def test_accepting_fields_are_found_through_fastapis_public_field_info() -> None:
    """The one dependency on FastAPI's field objects: route.dependant.*_params[].field_info.

    If a FastAPI release changes it, this fails here rather than references being silently
    refused (or accepted without their authorization hook).
    """
    from fastapi.routing import APIRoute

    from pydantic_toast.fastapi._routes import _accepted_in, field_schema

    app = make_app()
    route = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/orders")
    (body,) = route.dependant.body_params
    assert body.field_info.annotation is NewOrder
    assert "pydantic_toast_accept" in str(field_schema(body))
    accepted, routes = _accepted_in(route)
    assert list(accepted) == ["Customer"]
    assert accepted["Customer"][0].authorize is same_tenant
    assert "Customer" in routes


def test_requests_build_no_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Response adapters are built with the app: no request does schema work on the loop."""
    import pydantic_toast.fastapi._routes as routes

    app = make_app()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a TypeAdapter built while serving a request")

    monkeypatch.setattr(routes, "TypeAdapter", refuse)
    saved = Customer(name="Ada")
    saved.model_dump()
    with TestClient(app) as client:
        response = client.get(f"/customers/{saved.external_id}")
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Ada"


def test_to_data_serializes_the_tree_and_stores_nothing() -> None:
    """to_data() gives the fields of the model and of external models in it, with no I/O."""
    order = Order(product="tea", customer=Customer(name="Ada"))
    assert to_data(order) == {"product": "tea", "customer": {"name": "Ada"}}
    assert to_data(order, mode="json") == {"product": "tea", "customer": {"name": "Ada"}}
    assert order.external_id is None
    assert order.customer.external_id is None


def test_not_found_has_one_wording_for_loader_and_delete(client: TestClient) -> None:
    """An unknown id in a path is a 404 with the same detail from the loader and from delete."""
    id = uuid4()
    read = client.get(f"/customers/{id}")
    deleted = client.delete(f"/customers/{id}")
    assert read.status_code == deleted.status_code == 404
    assert read.json() == deleted.json() == {"detail": "Customer not found"}


def test_stored_data_that_no_longer_validates_is_a_logged_500(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged record gives 500 without internal hints; the log has the cause and request id."""
    ada = client.portal.call(saved_customer, "Ada", "a")  # type: ignore[union-attr]
    store = memory_store_of(URL)
    key = ("Customer", ada.uuid)
    record = store.get(key)
    assert record is not None
    store.put(dataclasses.replace(record, data=b'{"name": 42}'), None)
    with caplog.at_level(logging.ERROR, logger="pydantic_toast.fastapi"):
        response = client.get(f"/customers/{ada['id']}", headers={"X-Request-ID": "req-123"})
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}
    assert "schema_version" not in response.text
    (logged,) = [r for r in caplog.records if r.name == "pydantic_toast.fastapi"]
    assert "req-123" in logged.getMessage()
    assert "does not validate" in logged.getMessage()


class Offline(ExternalBaseModel):
    """A model whose store refuses connections."""

    x: int
    model_config = ExternalConfigDict(storage="down://user:secret@db.internal:5432/x")


def test_outage_is_a_logged_503_with_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    """An unreachable store answers 503 with Retry-After; the cause goes to the log only."""
    app = FastAPI()
    install(app)

    @app.get("/offline/{id}")
    async def get(item: Annotated[Offline, Depends(loader(Offline))]) -> dict[str, int]:
        return {"x": item.x}

    @app.post("/offline")
    async def post(item: Offline) -> dict[str, str]:
        return await item.asave()

    with caplog.at_level(logging.ERROR, logger="pydantic_toast.fastapi"), TestClient(app) as c:
        loaded = c.get(f"/offline/{uuid4()}", headers={"X-Request-ID": "r-1"})
        saved = c.post("/offline", json={"x": 1}, headers={"X-Request-ID": "r-2"})
    for response in (loaded, saved):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert "secret" not in response.text
        assert "db.internal" not in response.text
    messages = [r.getMessage() for r in caplog.records if r.name == "pydantic_toast.fastapi"]
    assert any("r-1" in m and "could not connect" in m for m in messages)
    assert any("r-2" in m and "could not connect" in m for m in messages)
    assert not any("secret" in m for m in messages)
    assert issubclass(StorageConnectionError, ConnectionError)


def test_storage_lifespan_composes_with_the_apps_lifespan() -> None:
    """The app's own lifespan runs inside the storage one, and its state reaches requests."""
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        await Customer(name="seed").asave()  # storage is open here
        events.append("start")
        yield {"greeting": "hello"}
        events.append("stop")

    app = FastAPI(lifespan=storage_lifespan(Customer, lifespan=app_lifespan))

    @app.get("/greeting")
    async def greeting(request: Request) -> dict[str, str]:
        return {"greeting": request.state.greeting}

    with TestClient(app) as client:
        assert client.get("/greeting").json() == {"greeting": "hello"}
        assert events == ["start"]
    assert events == ["start", "stop"]


def test_blocking_call_warns_once_per_call_site_or_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync call on a running loop warns once per line, at the caller; log and off modes."""
    import asyncio

    forget_call_sites()
    model = Customer(name="x")

    async def twice() -> None:
        for _ in range(2):
            model.name += "x"  # a change: an unchanged dump does no I/O, hence no blocking
            model.model_dump()  # the line the warning points at

    with pytest.warns(BlockingStorageCallWarning, match=r"Customer.model_dump\(\).*asave") as w:
        asyncio.run(twice())
    assert len(w) == 1
    assert w[0].filename == __file__
    monkeypatch.setenv("PYDANTIC_TOAST_BLOCKING_CALLS", "log")
    forget_call_sites()
    with caplog.at_level(logging.WARNING, logger="pydantic_toast"), warnings.catch_warnings():
        warnings.simplefilter("error")
        asyncio.run(twice())
    assert sum("blocked the running event loop" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setenv("PYDANTIC_TOAST_BLOCKING_CALLS", "off")
    forget_call_sites()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report_blocking_call("x()", "await ax()")


def test_blocking_response_serialization_names_the_route_and_install() -> None:
    """An async def route of a plain FastAPI app returning an unsaved model blocks while FastAPI
    serializes it: the warning points at the route and names install(app), once per route.

    (It pointed at the first frame outside the library, the server's or the test client's
    thread, so every route of the app shared one unhelpful warning.)
    """
    forget_call_sites()
    app = FastAPI()

    @app.post("/first")
    async def first() -> Customer:
        return Customer(name="first")

    @app.post("/second")
    async def second() -> Customer:
        return Customer(name="second")

    @app.post("/third")
    def third(customer: Customer) -> dict[str, str]:
        return {"name": customer.name}

    def requests(client: TestClient) -> None:
        for _ in range(2):
            assert client.post("/first").status_code == 200
            assert client.post("/second").status_code == 200
            reference = client.portal.call(Customer(name="Ada").asave)  # type: ignore[union-attr]
            assert client.post("/third", json=reference).json() == {"name": "Ada"}

    with TestClient(app) as client, pytest.warns(BlockingStorageCallWarning) as warned:
        requests(client)
    assert [(w.filename, w.lineno) for w in warned] == [
        (__file__, route.__code__.co_firstlineno) for route in (first, second, third)
    ]
    serialized, _, validated = (str(w.message) for w in warned)
    assert "serialized the response of the async def route first" in serialized
    assert "await obj.asave()" in serialized
    assert "validated the request for third" in validated
    assert all("pydantic_toast.fastapi.install(app)" in str(w.message) for w in warned)


def test_required_if_match_is_a_428_and_a_stale_one_a_412(client: TestClient) -> None:
    """conditional(require=True) refuses writes without If-Match, and with a stale one."""
    ada = client.portal.call(saved_customer, "Ada", "a")  # type: ignore[union-attr]
    missing = client.put(f"/customers/{ada['id']}", params={"name": "Eve"})
    assert missing.status_code == 428
    assert "If-Match is required" in missing.json()["detail"]
    stale = client.put(
        f"/customers/{ada['id']}", params={"name": "Eve"}, headers={"If-Match": '"x.1"'}
    )
    assert stale.status_code == 412
    assert client.get(f"/customers/{ada['id']}").json() == {"name": "Ada"}
    responses = client.get("/openapi.json").json()["paths"]["/customers/{id}"]["put"]["responses"]
    assert {"404", "409", "412", "428", "500", "503"} <= set(responses)


class Bundle(BaseModel):
    """Ref inside containers and an optional, and a plain list that takes data only."""

    many: Ref[list[Customer]] = []
    named: Ref[dict[str, Customer]] = {}
    maybe: Ref[Customer] | None = None
    plain: list[Customer] = []


def test_openapi_of_container_fields_documents_what_they_take() -> None:
    """Each body documented by the schema if and only if the route accepts it."""
    import jsonschema_rs

    app = FastAPI()
    install(app)

    @app.post("/bundles")
    async def take(bundle: Bundle) -> dict[str, int]:
        return {"customers": len(bundle.many) + len(bundle.named) + len(bundle.plain)}

    with TestClient(app) as client:
        reference = dict(client.portal.call(Customer(name="Ada").asave))
        openapi = client.get("/openapi.json").json()
        schema = {**openapi["components"]["schemas"]["Bundle"], "components": openapi["components"]}
        validator = jsonschema_rs.validator_for(schema)
        data = {"name": "Bo"}
        cases: list[dict[str, Any]] = [
            {"many": [data, reference]},
            {"named": {"x": reference, "y": data}},
            {"maybe": reference},
            {"maybe": None},
            {"plain": [data]},
            {"plain": [reference]},
            {"many": [reference], "plain": [data, reference]},
        ]
        documented = [validator.is_valid(body) for body in cases]
        accepted = [client.post("/bundles", json=body).status_code == 200 for body in cases]
    assert documented == [True, True, True, True, True, False, False]
    assert accepted == documented


def test_ref_in_a_labelled_union_member_is_accepted() -> None:
    """A Ref inside a labelled union member (a ``(schema, label)`` choice) is found too."""
    from pydantic import Tag, TypeAdapter

    from pydantic_toast.fastapi._routes import _accepting_models

    schema = TypeAdapter(Annotated[list[Ref[Customer]], Tag("customers")] | int).core_schema

    assert [model for _, model in _accepting_models(schema)] == [Customer]


def test_a_malformed_id_a_route_loads_is_an_invalid_reference_where_it_was_sent() -> None:
    """install_error_handlers alone: a route's aload() of a bad id answers 422 "Invalid
    reference or id" at the path or query parameter holding it (it said "Value cannot be
    stored" at ["body"]); an id from elsewhere gets an empty loc, never a made-up one."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/customers-by-path/{customer_id}")
    async def by_path(customer_id: str) -> dict[str, str]:
        return {"name": (await Customer.aload(customer_id)).name}

    @app.get("/customers-by-query")
    async def by_query(customer: str) -> dict[str, str]:
        return {"name": (await Customer.aload(customer)).name}

    @app.get("/customers-by-header")
    async def by_header(request: Request) -> dict[str, str]:
        reference = {"class_name": "Other", "id": request.headers["X-Customer"]}
        return {"name": (await Customer.aload(reference)).name}

    other = str(uuid4())
    with TestClient(app) as client:
        for url, headers, loc in [
            ("/customers-by-path/not-a-uuid", {}, ["path", "customer_id"]),
            ("/customers-by-query?customer=not-a-uuid", {}, ["query", "customer"]),
            ("/customers-by-header", {"X-Customer": other}, []),
        ]:
            response = client.get(url, headers=headers)
            assert response.status_code == 422, url
            assert response.json() == {
                "detail": [
                    {"loc": loc, "msg": "Invalid reference or id", "type": "invalid_reference"}
                ]
            }


def test_plain_routes_holding_external_models_are_named_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Routes of an APIRouter made without route_class, or added before install(), are
    logged once, by method and path, when they hold external models; others are not."""
    from fastapi import APIRouter

    from pydantic_toast.fastapi import ToastRoute

    app = FastAPI()

    @app.get("/early")
    async def early() -> Customer:
        return Customer(name="made before install")

    install(app)
    plain = APIRouter(prefix="/plain")

    @plain.post("/orders")
    async def create(order: Order) -> dict[str, str]:
        return {}

    @plain.get("/health")
    async def health() -> dict[str, str]:
        return {"ok": "yes"}

    routed = APIRouter(route_class=ToastRoute)

    @routed.get("/customer")
    async def customer() -> Customer:
        return Customer(name="fine")

    app.include_router(plain)
    app.include_router(routed)
    with caplog.at_level(logging.WARNING, logger="pydantic_toast"), TestClient(app) as client:
        assert client.get("/plain/health").json() == {"ok": "yes"}
        assert client.get("/plain/health").status_code == 200
    named = [
        record.getMessage() for record in caplog.records if "plain APIRoutes" in record.getMessage()
    ]
    assert len(named) == 1
    assert "GET /early, POST /plain/orders." in named[0]
    assert "route_class=ToastRoute" in named[0]
