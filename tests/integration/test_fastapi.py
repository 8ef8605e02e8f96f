"""FastAPI: the integration helpers and the todo service from the seeds, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Literal
from uuid import uuid4

import httpx
import pytest
from fastapi import Cookie, Depends, FastAPI, Header
from fastapi.testclient import TestClient
from pydantic import AliasChoices, AliasGenerator, AliasPath, Field
from pydantic.alias_generators import to_camel

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.fastapi import install, install_error_handlers, loader, storage_lifespan
from pydantic_toast.runtime.blocking import BlockingStorageCallWarning, forget_call_sites
from tests import servers

pytestmark = pytest.mark.postgresql
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def todo_client(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The todo app on the session's database."""
    monkeypatch.setenv("DATABASE_URL", postgres_database_url)
    from examples.todo_api.app import app

    with TestClient(app) as client:
        yield client
    pydantic_toast.close_storage()


def test_todo_crud(todo_client: TestClient) -> None:
    """Create, read, patch, list and delete todos with the right statuses."""
    created = todo_client.post("/api/todos", json={"description": "  write tests  "})
    assert created.status_code == 201
    todo = created.json()
    assert todo["description"] == "write tests"
    assert todo["completed"] is False
    fetched = todo_client.get(f"/api/todos/{todo['id']}")
    assert fetched.json() == todo
    time.sleep(0.01)
    patched = todo_client.patch(f"/api/todos/{todo['id']}", json={"completed": True}).json()
    assert patched["completed"] is True
    assert patched["created_at"] == todo["created_at"]
    assert patched["updated_at"] > todo["updated_at"]
    assert todo_client.get(f"/api/todos/{todo['id']}").json() == patched
    assert todo_client.delete(f"/api/todos/{todo['id']}").status_code == 204
    assert todo_client.get(f"/api/todos/{todo['id']}").status_code == 404
    assert todo_client.delete(f"/api/todos/{todo['id']}").status_code == 404


def test_todo_validation_and_unknown_ids(todo_client: TestClient) -> None:
    """Empty or too long descriptions give 400; unknown ids 404; malformed ids 400."""
    for description in ("", "   ", "x" * 501):
        response = todo_client.post("/api/todos", json={"description": description})
        assert response.status_code == 400
        assert response.json()["detail"][0]["loc"] == ["body", "description"]
    assert todo_client.post("/api/todos", json={"description": "x" * 500}).status_code == 201
    assert todo_client.get(f"/api/todos/{uuid4()}").status_code == 404
    malformed = todo_client.get("/api/todos/not-a-uuid")
    assert malformed.status_code == 400
    assert malformed.json()["detail"][0]["loc"] == ["path", "id"]
    assert todo_client.get("/health").json() == {"status": "ok", "storage": "ok"}


def test_todo_list_is_newest_first_and_paginated(todo_client: TestClient) -> None:
    """GET /api/todos pages newest first with a cursor."""
    ids = [
        todo_client.post("/api/todos", json={"description": f"item {i}"}).json()["id"]
        for i in range(5)
    ]
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = todo_client.get("/api/todos", params=params).json()
        seen += [item["id"] for item in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    newest_five = seen[:5]
    assert newest_five == list(reversed(ids))


def test_todo_cursor_survives_deleting_the_page_it_came_from(todo_client: TestClient) -> None:
    """Process a page, delete its todos, ask for the next page: nothing is skipped.

    A record id is not a cursor: ?after=<uuid> is refused as a client error.
    """
    ids = [
        todo_client.post("/api/todos", json={"description": f"job {i}"}).json()["id"]
        for i in range(4)
    ]
    first = todo_client.get("/api/todos", params={"limit": 2}).json()
    assert [item["id"] for item in first["items"]] == ids[:1:-1]
    for item in first["items"]:
        assert todo_client.delete(f"/api/todos/{item['id']}").status_code == 204
    second = todo_client.get("/api/todos", params={"limit": 2, "after": first["next_after"]})
    assert [item["id"] for item in second.json()["items"]][:2] == ids[1::-1]
    refused = todo_client.get("/api/todos", params={"after": ids[0]})
    assert refused.status_code in (400, 422)
    assert refused.json()["detail"][0]["loc"] == ["query", "after"]


def test_sync_routes_agree_with_async_routes(todo_client: TestClient) -> None:
    """The comparison routes read and write the same records, warning that they block."""
    forget_call_sites()
    with pytest.warns(BlockingStorageCallWarning, match=r"Todo.model_dump\(\).*asave"):
        created = todo_client.post("/api/sync/todos", json={"description": "sync"}).json()
    assert todo_client.get(f"/api/todos/{created['id']}").json() == created
    with pytest.warns(BlockingStorageCallWarning) as warned:
        patched = todo_client.patch(f"/api/sync/todos/{created['id']}", json={"completed": True})
    assert patched.json()["completed"] is True
    messages = [str(warning.message) for warning in warned]
    assert any("Todo.model_validate(reference)" in m and "aload" in m for m in messages)
    assert all("examples/todo_api/app.py:" in m for m in messages)
    assert {warning.filename for warning in warned} == {str(ROOT / "examples/todo_api/app.py")}


class Offline(ExternalBaseModel):
    """A model whose server is not there."""

    x: int
    model_config = ExternalConfigDict(
        storage=f"postgresql://u:pw@127.0.0.1:{servers.free_port()}/x?connect_timeout=2"
    )


def test_loader_answers_503_when_storage_is_down() -> None:
    """A dependency load against an unreachable store gives 503, not 422 or 500."""
    app = FastAPI()

    @app.get("/offline/{id}")
    async def get(item: Annotated[Offline, Depends(loader(Offline))]) -> dict[str, int]:
        return {"x": item.x}

    with TestClient(app) as client:
        response = client.get(f"/offline/{uuid4()}")
    assert response.status_code == 503


class Item(ExternalBaseModel):
    """A module-level model: FastAPI resolves route annotations by name."""

    name: str
    model_config = ExternalConfigDict(storage="memory://fastapi-tests")


def test_bodies_take_data_and_refuse_references_by_default() -> None:
    """A body takes full data; a reference there is a 422 at its field, loaded or not."""
    app = FastAPI()
    install(app)

    @app.post("/items", status_code=201)
    async def put(item: Item) -> dict[str, str]:
        return await item.asave()

    with TestClient(app) as client:
        response = client.post("/items", json={"name": "full data"})
        reference = response.json()
        assert response.status_code == 201, response.text
        assert set(reference) == {"class_name", "id"}
        existing = client.post("/items", json=reference)
        missing = client.post("/items", json={"class_name": "Item", "id": str(uuid4())})
        assert existing.status_code == missing.status_code == 422
        assert existing.json() == {
            "detail": [
                {
                    "type": "external_reference_not_accepted",
                    "loc": ["body"],
                    "msg": "A reference is not accepted here: send the Item's data",
                    "input": reference,
                    "ctx": {"class_name": "Item"},
                }
            ]
        }
        assert existing.json()["detail"][0]["msg"] == missing.json()["detail"][0]["msg"]
        wrong = client.post("/items", json={"class_name": "Other", "id": str(uuid4())})
        assert wrong.status_code == 422
        schema = client.get("/openapi.json").json()
    body = schema["paths"]["/items"]["post"]["requestBody"]["content"]["application/json"]
    # Documented as what it takes: the data, not a reference.
    assert body["schema"] == {"$ref": "#/components/schemas/ItemData"}
    assert schema["components"]["schemas"]["ItemData"]["required"] == ["name"]
    assert "reference" not in str(schema).lower()
    assert {"201", "422", "500", "503"} <= set(schema["paths"]["/items"]["post"]["responses"])


UNION_STORAGE = "env:TOAST_TEST_FASTAPI_UNION_URL"


class ApiCat(ExternalBaseModel):
    """A union member stored on the session's PostgreSQL database."""

    kind: Literal["cat"] = "cat"
    lives: int = 9
    model_config = ExternalConfigDict(storage=UNION_STORAGE)


class ApiDog(ExternalBaseModel):
    """The other union member."""

    kind: Literal["dog"] = "dog"
    good: bool = True
    model_config = ExternalConfigDict(storage=UNION_STORAGE)


class ApiCustomer(ExternalBaseModel):
    """Every alias form in one model."""

    full_name: str = Field(validation_alias=AliasChoices("fullName", "name"))
    city: str = Field(validation_alias=AliasPath("address", "city"))
    email: str = Field(serialization_alias="mail")
    vip_level: int = 0
    model_config = ExternalConfigDict(
        storage=UNION_STORAGE,
        alias_generator=AliasGenerator(validation_alias=to_camel),
        validate_by_name=True,
    )


Pet = Annotated[ApiCat | ApiDog, Field(discriminator="kind")]


def test_union_and_alias_bodies_on_postgresql(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discriminated and plain unions and aliased models take data or references in bodies."""
    monkeypatch.setenv("TOAST_TEST_FASTAPI_UNION_URL", postgres_database_url)
    # Without install(), FastAPI loads the references in these bodies on the event loop: that
    # warns, at each route (test_fastapi_boundary checks it), and is not what this test is about.
    monkeypatch.setenv("PYDANTIC_TOAST_BLOCKING_CALLS", "off")
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/pets")
    def pets(items: list[Pet]) -> list[Pet]:
        return items

    @app.post("/pet")
    def pet(item: ApiCat | ApiDog) -> ApiCat | ApiDog:
        return item

    @app.post("/customers")
    def customers(customer: ApiCustomer) -> dict[str, object]:
        return {"name": customer.full_name, "reference": customer.model_dump()}

    with TestClient(app) as client:
        data = [{"kind": "dog", "good": False}, {"kind": "cat", "lives": 2}]
        created = client.post("/pets", json=data)
        assert created.status_code == 200, created.text
        references = created.json()
        assert [item["class_name"] for item in references] == ["ApiDog", "ApiCat"]
        assert client.post("/pets", json=references).json() == references
        assert client.post("/pet", json=references[1]).json() == references[1]
        assert client.post("/pet", json={"kind": "cat"}).json()["class_name"] == "ApiCat"
        stray = {"class_name": "ApiHamster", "id": str(uuid4())}
        for path, body in (("/pets", [stray]), ("/pet", stray)):
            refused = client.post(path, json=body)
            assert refused.status_code == 422
            assert "external_name='ApiHamster'" in refused.text
        body = {"name": "Ada", "address": {"city": "Paris"}, "email": "a@x.org", "vipLevel": 3}
        first = client.post("/customers", json=body).json()
        assert first["name"] == "Ada"
        again = client.post("/customers", json=first["reference"]).json()
        assert again == first
    pydantic_toast.close_storage()


def test_lifespan_refuses_to_start_on_an_unmigrated_database(
    postgres_admin_url: str,
) -> None:
    """storage_lifespan fails at startup, naming the migration command."""
    from tests.integration.conftest import throwaway_database

    with throwaway_database(postgres_admin_url, "toast_empty_") as url:

        class Unmigrated(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage=url)

        app = FastAPI(lifespan=storage_lifespan(Unmigrated))
        with (
            pytest.raises(pydantic_toast.StorageSchemaError, match="pydantic-toast migrate"),
            TestClient(app),
        ):
            pass


def test_todos_persist_across_service_restarts(postgres_database_url: str) -> None:
    """Todos created over HTTP are read back unchanged by a restarted uvicorn process."""
    port = servers.free_port()
    base = f"http://127.0.0.1:{port}"
    service = servers.start_todo_service(postgres_database_url, port)
    try:
        created = [
            httpx.post(f"{base}/api/todos", json={"description": f"persist {i}"}).json()
            for i in range(3)
        ]
        httpx.patch(f"{base}/api/todos/{created[0]['id']}", json={"completed": True})
        before = [httpx.get(f"{base}/api/todos/{t['id']}").json() for t in created]
    finally:
        servers.stop_todo_service(service)
    assert service.returncode == 0
    service = servers.start_todo_service(postgres_database_url, port)
    try:
        after = [httpx.get(f"{base}/api/todos/{t['id']}").json() for t in created]
    finally:
        servers.stop_todo_service(service)
    assert after == before
    assert after[0]["completed"] is True


def test_todo_if_match_refuses_stale_writes(todo_client: TestClient) -> None:
    """PATCH and DELETE with an If-Match that is not the todo's ETag get 412, change nothing."""
    todo = todo_client.post("/api/todos", json={"description": "guarded"}).json()
    stale = {"If-Match": '"0123456789abcdef.999"'}
    patched = todo_client.patch(f"/api/todos/{todo['id']}", json={"completed": True}, headers=stale)
    assert patched.status_code == 412
    assert patched.json() == {"detail": "Todo changed since that ETag: read it again and retry"}
    assert todo_client.delete(f"/api/todos/{todo['id']}", headers=stale).status_code == 412
    assert todo_client.get(f"/api/todos/{todo['id']}").json() == todo
    anything = {"If-Match": "*"}
    patched = todo_client.patch(
        f"/api/todos/{todo['id']}", json={"completed": True}, headers=anything
    )
    assert patched.status_code == 200
    schema = todo_client.get("/openapi.json").json()
    patch_responses = schema["paths"]["/api/todos/{id}"]["patch"]["responses"]
    assert {"400", "404", "409", "412", "500", "503"} <= set(patch_responses)


class Visit(ExternalBaseModel):
    count: int
    model_config = ExternalConfigDict(storage="env:TOAST_TEST_VISITS_URL")


def test_get_route_returning_a_loaded_model_writes_nothing(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GET answering with a loaded model writes nothing; a stale write answers 409."""
    import asyncpg

    monkeypatch.setenv("TOAST_TEST_VISITS_URL", postgres_database_url)
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/visits/{id}")
    async def show(visit: Annotated[Visit, Depends(loader(Visit))]) -> Visit:
        return visit

    @app.post("/visits/{id}/bump")
    async def bump(visit: Annotated[Visit, Depends(loader(Visit))]) -> Visit:
        visit.count += 1
        await visit.asave()
        return visit  # unchanged since the save: serializing it writes nothing

    @app.post("/visits/{id}/stale")
    async def stale_write(id: str) -> Visit:
        stale = await Visit.aload(id)
        fresh = await Visit.aload(id)
        fresh.count += 1
        await fresh.asave()
        stale.count += 10
        await stale.asave()  # ConcurrencyError: answered 409
        return stale

    reference = Visit(count=1).model_dump()

    async def row() -> tuple[int, object]:
        connection = await asyncpg.connect(postgres_database_url)
        try:
            found = await connection.fetchrow(
                "SELECT revision, updated_at FROM external_records WHERE id = $1::uuid",
                reference["id"],
            )
        finally:
            await connection.close()
        assert found is not None
        return found["revision"], found["updated_at"]

    before = asyncio.run(row())
    with TestClient(app) as client:
        for _ in range(3):
            response = client.get(f"/visits/{reference['id']}")
            assert response.status_code == 200, response.text
            assert response.json() == reference
        assert asyncio.run(row()) == before
        assert client.post(f"/visits/{reference['id']}/bump").status_code == 200
        conflict = client.post(f"/visits/{reference['id']}/stale")
        assert conflict.status_code == 409, conflict.text
        assert "changed by another request" in str(conflict.json()["detail"])
    after = asyncio.run(row())
    assert after[0] == 3
    pydantic_toast.close_storage()


class Note(ExternalBaseModel):
    """Text and a score: PostgreSQL's jsonb refuses a NUL character and NaN."""

    text: str
    score: float = 0.0
    model_config = ExternalConfigDict(storage="env:TOAST_TEST_NOTES_URL")


def test_an_unstorable_value_is_a_422_where_the_client_sent_it(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value the store refuses (NUL, NaN on PostgreSQL) that a route stores answers 422 at
    the query, path, header or cookie parameter that carried it, the one named like the
    refused field first (a query's NUL was at ["body"]); at ["body"] when it came in a body,
    and at [] when the request carried it nowhere."""
    monkeypatch.setenv("TOAST_TEST_NOTES_URL", postgres_database_url)
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/notes")
    async def by_query(text: str) -> dict[str, str]:
        return await Note(text=text).asave()

    @app.put("/notes/{text}")
    async def by_path(text: str) -> dict[str, str]:
        return await Note(text=text).asave()

    @app.post("/notes/from-header")
    async def by_header(x_note: Annotated[str, Header()]) -> dict[str, str]:
        return await Note(text=x_note).asave()

    @app.post("/notes/from-cookie")
    async def by_cookie(note: Annotated[str, Cookie()]) -> dict[str, str]:
        return await Note(text=note).asave()

    @app.get("/scores")
    async def by_score(score: float, text: str = "ok") -> dict[str, str]:
        return await Note(text=text, score=score).asave()

    @app.get("/search")
    async def renamed(tag: str, q: str) -> dict[str, str]:
        return await Note(text=f"{tag}: {q}").asave()

    @app.post("/notes")
    async def by_body(note: Note) -> dict[str, str]:
        return await note.asave()

    @app.get("/built")
    async def built() -> dict[str, str]:
        return await Note(text="a\x00b").asave()

    nul = "a\x00b"
    cases: list[tuple[str, str, dict[str, object], list[str]]] = [
        ("GET", "/notes", {"params": {"text": nul}}, ["query", "text"]),
        ("PUT", "/notes/a%00b", {}, ["path", "text"]),
        ("POST", "/notes/from-header", {"headers": {"X-Note": nul}}, ["header", "x-note"]),
        ("POST", "/notes/from-cookie", {"headers": {"Cookie": "note=a\x00b"}}, ["cookie", "note"]),
        ("GET", "/scores", {"params": {"score": "nan", "text": "fine"}}, ["query", "score"]),
        ("GET", "/search", {"params": {"tag": "x", "q": nul}}, ["query", "q"]),
        ("POST", "/notes", {"json": {"text": nul}}, ["body"]),
        ("GET", "/built", {"params": {"page": "2"}}, []),
    ]
    with TestClient(app) as client:
        for method, url, options, loc in cases:
            response = client.request(method, url, **options)  # type: ignore[arg-type]
            assert response.status_code == 422, (url, response.text)
            assert response.json() == {
                "detail": [
                    {"loc": loc, "msg": "Value cannot be stored", "type": "storage_validation"}
                ]
            }, url
    pydantic_toast.close_storage()


def test_a_field_type_that_cannot_be_stored_is_a_500_not_the_clients_422() -> None:
    """A field type no value of which can be stored (here an Iterable) is the model's fault, not
    the request's: it answered 422 at the first save. The class is refused when it is defined,
    here inside the route, and the route answers 500."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/feeds")
    async def add_feed() -> dict[str, str]:
        class Feed(ExternalBaseModel):
            model_config = ExternalConfigDict(storage="memory://feeds")
            entries: Iterable[int]

        return await Feed(entries=[1, 2]).asave()

    with TestClient(app) as client:
        response = client.post("/feeds")
    assert response.status_code == 500, response.text
    assert response.json() == {"detail": "Internal Server Error"}
    pydantic_toast.close_storage()
    gc.collect()  # the refused class, off ExternalBaseModel.__subclasses__() (orphan scans)
