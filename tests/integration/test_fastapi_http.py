"""The FastAPI integration over real HTTP: real uvicorn processes, real PostgreSQL, httpx.

The todo service (examples/todo_api) and a test shop (fastapi_shop.py) each run under uvicorn
in a subprocess on a free port, on a throwaway migrated database (fixtures in conftest.py).
Every answer here went through a socket: status, headers, body, and the server's own log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import jsonschema_rs
import pytest

from pydantic_toast.integrations.cli import main as toast_cli
from tests import servers
from tests.integration.conftest import Served

pytestmark = pytest.mark.postgresql


def add_customer(http: httpx.Client, name: str, tenant: str) -> dict[str, Any]:
    created = http.post("/customers", json={"name": name, "tenant": tenant})
    assert created.status_code == 201, created.text
    reference: dict[str, Any] = created.json()
    assert set(reference) == {"class_name", "id"}
    return reference


def test_references_in_bodies_are_refused_like_missing_ones(shop_http: Served) -> None:
    """A reference where a body takes data: 422 at its field, whether the record exists or not."""
    with httpx.Client(base_url=shop_http.base) as http:
        existing = add_customer(http, "Ada Secret", "a")
        missing = {"class_name": "Customer", "id": str(uuid4())}
        answers = []
        for reference in (existing, missing):
            top = http.post("/customers", json=reference)
            nested = http.post(
                "/orders", json={"product": "tea", "quantity": 1, "customer": reference}
            )
            for response, loc in ((top, ["body"]), (nested, ["body", "customer"])):
                assert response.status_code == 422, response.text
                assert response.json() == {
                    "detail": [
                        {
                            "type": "external_reference_not_accepted",
                            "loc": loc,
                            "msg": "A reference is not accepted here: send the Customer's data",
                            "input": reference,
                            "ctx": {"class_name": "Customer"},
                        }
                    ]
                }
                assert "Ada Secret" not in response.text
            answers.append((top.json()["detail"][0]["msg"], nested.json()["detail"][0]["loc"]))
        assert answers[0] == answers[1]  # existence is not leaked


def test_ref_opt_in_with_an_authorization_hook(shop_http: Served) -> None:
    """A Ref field takes a reference the hook allows; a refused one answers like a missing one."""
    with httpx.Client(base_url=shop_http.base) as http:
        own = add_customer(http, "Ada", "a")
        foreign = add_customer(http, "Bo Foreign", "b")
        tenant_a = {"X-Tenant": "a"}

        def order(customer: object) -> httpx.Response:
            body = {"product": "tea", "quantity": 2, "customer": customer}
            return http.post("/orders/by-reference", json=body, headers=tenant_a)

        placed = order(own)
        assert placed.status_code == 201, placed.text
        assert placed.json() == {
            "product": "tea",
            "quantity": 2,
            "customer": {"name": "Ada", "tenant": "a"},
        }
        assert order({"name": "Cy", "tenant": "a"}).status_code == 201  # data works too
        refused = order(foreign)
        missing = order({"class_name": "Customer", "id": str(uuid4())})
        assert refused.status_code == missing.status_code == 422
        for response in (refused, missing):
            (problem,) = response.json()["detail"]
            assert problem["loc"] == ["body", "customer"]
            assert problem["type"] == "external_reference_unknown"
            assert problem["msg"] == "Unknown Customer reference"
        assert "Bo Foreign" not in refused.text
        assert "tenant" not in refused.text.replace('"tenant"', "")  # nothing of the record


def _body_schema(openapi: dict[str, Any], path: str) -> dict[str, Any]:
    schema = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    return {**schema["schema"], "components": openapi["components"]}


def test_openapi_documents_exactly_what_bodies_take(shop_http: Served) -> None:
    """Each body, in each shape: documented by the OpenAPI schema if and only if accepted.

    A body that takes data documents only the data shape (a reference there is refused); the
    Ref field documents the data and the reference shapes (both accepted).
    """
    with httpx.Client(base_url=shop_http.base) as http:
        openapi = http.get("/openapi.json").json()
        customer = add_customer(http, "Dee", "a")
        data = {"name": "Eve", "tenant": "a"}
        cases: list[tuple[str, dict[str, Any]]] = [
            ("/customers", data),
            ("/customers", customer),
            ("/customers", {"name": "no tenant"}),
            ("/orders", {"product": "p", "quantity": 1, "customer": data}),
            ("/orders", {"product": "p", "quantity": 1, "customer": customer}),
            ("/orders/by-reference", {"product": "p", "quantity": 1, "customer": data}),
            ("/orders/by-reference", {"product": "p", "quantity": 1, "customer": customer}),
            ("/orders/by-reference", {"product": "p", "quantity": 1, "customer": {"x": 1}}),
        ]
        outcomes = []
        for path, body in cases:
            documented = jsonschema_rs.validator_for(_body_schema(openapi, path)).is_valid(body)
            answer = http.post(path, json=body, headers={"X-Tenant": "a"})
            assert answer.status_code in (201, 422), answer.text
            outcomes.append((path, documented, answer.status_code == 201))
    assert [documented for _, documented, _ in outcomes] == [
        True,
        False,
        False,
        True,
        False,
        True,
        True,
        False,
    ]
    assert all(documented == accepted for _, documented, accepted in outcomes), outcomes
    schemas = openapi["components"]["schemas"]
    assert _body_schema(openapi, "/customers")["$ref"] == "#/components/schemas/CustomerData"
    assert schemas["OrderData"]["properties"]["customer"] == {
        "$ref": "#/components/schemas/CustomerData"
    }
    assert schemas["NewOrder"]["properties"]["customer"] == {
        "anyOf": [
            {"$ref": "#/components/schemas/CustomerData"},
            {"$ref": "#/components/schemas/CustomerReference"},
        ]
    }


def test_conditional_requests_over_http(todo_http: Served, shop_http: Served) -> None:
    """ETag on reads; a stale If-Match is 412 and changes nothing; a required one missing, 428."""
    with httpx.Client(base_url=todo_http.base) as http:
        todo = http.post("/api/todos", json={"description": "guarded"}).json()
        url = f"/api/todos/{todo['id']}"
        read = http.get(url)
        etag = read.headers["ETag"]
        assert etag == f'"{UUID(todo["id"]).hex}.1"'
        stale = {"If-Match": f'"{UUID(todo["id"]).hex}.7"'}
        patched = http.patch(url, json={"completed": True}, headers=stale)
        assert patched.status_code == 412
        assert patched.json() == {"detail": "Todo changed since that ETag: read it again and retry"}
        assert http.delete(url, headers=stale).status_code == 412
        assert http.get(url).json() == todo
        patched = http.patch(url, json={"completed": True}, headers={"If-Match": etag})
        assert patched.status_code == 200
        assert patched.headers["ETag"] == f'"{UUID(todo["id"]).hex}.2"'
        assert http.delete(url, headers={"If-Match": etag}).status_code == 412
        assert http.delete(url, headers={"If-Match": patched.headers["ETag"]}).status_code == 204
        gone = http.get(url)
        assert gone.status_code == 404
        assert gone.json() == {"detail": "Todo not found"}
    with httpx.Client(base_url=shop_http.base) as http:
        customer = {"name": "Fay", "tenant": "a"}
        order = http.post("/orders", json={"product": "p", "quantity": 1, "customer": customer})
        assert order.status_code == 201, order.text
        order_url = f"/orders/{order.json()['id']}"
        etag = http.get(order_url).headers["ETag"]
        required = http.patch(order_url, json={"quantity": 3})
        assert required.status_code == 428
        assert "If-Match is required" in required.json()["detail"]
        assert http.delete(order_url).status_code == 428
        changed = http.patch(order_url, json={"quantity": 3}, headers={"If-Match": etag})
        assert changed.status_code == 200
        assert changed.json()["quantity"] == 3
        assert (
            http.delete(order_url, headers={"If-Match": changed.headers["ETag"]}).status_code == 204
        )


async def _until_waiting_on_a_lock(connection: asyncpg.Connection, database: str) -> None:
    """Until another session of ``database`` waits on a row lock (the service's write)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        waiting = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            database,
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the service's write never reached the row lock")


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_a_concurrent_change_answers_409(todo_http: Served, method: str) -> None:
    """A write committed between the service's read and its write: 409, and nothing lost.

    The test holds the row locked in an open transaction that bumps the revision; the
    service reads the old revision (its If-Match matches), its write waits on the lock, then
    the transaction commits and the revision check of the write fails.
    """
    database = todo_http.database_url.rpartition("/")[2]
    async with httpx.AsyncClient(base_url=todo_http.base) as http:
        todo = (await http.post("/api/todos", json={"description": "contended"})).json()
        url = f"/api/todos/{todo['id']}"
        etag = (await http.get(url)).headers["ETag"]
        writer = await asyncpg.connect(todo_http.database_url)
        watcher = await asyncpg.connect(todo_http.database_url)
        try:
            transaction = writer.transaction()
            await transaction.start()
            await writer.execute(
                "UPDATE external_records SET revision = revision + 1 WHERE id = $1::uuid",
                todo["id"],
            )
            body = {"json": {"completed": True}} if method == "PATCH" else {}
            pending = asyncio.create_task(
                http.request(method, url, headers={"If-Match": etag}, **body)  # type: ignore[arg-type]
            )
            await _until_waiting_on_a_lock(watcher, database)
            await transaction.commit()
            answer = await pending
        finally:
            await writer.close()
            await watcher.close()
        assert answer.status_code == 409, answer.text
        assert answer.json() == {
            "detail": "Todo was changed by another request: read it again and retry the change"
        }
        after = await http.get(url)
        assert after.status_code == 200  # not deleted, not overwritten
        assert after.json() == todo
        assert after.headers["ETag"] == etag.replace(".1", ".2")


async def test_stored_data_that_no_longer_validates_is_a_500(todo_http: Served) -> None:
    """500 with no internal hint in the body; the cause, with the request id, in the server log."""
    async with httpx.AsyncClient(base_url=todo_http.base) as http:
        todo = (await http.post("/api/todos", json={"description": "to corrupt"})).json()
        connection = await asyncpg.connect(todo_http.database_url)
        try:
            await connection.execute(
                "UPDATE external_records SET data = jsonb_set(data, '{completed}', "
                "'\"perhaps\"'), data_exact = NULL WHERE id = $1::uuid",
                todo["id"],
            )
            request_id = f"req-{uuid4().hex[:8]}"
            answers = [
                await http.get(f"/api/todos/{todo['id']}", headers={"X-Request-ID": request_id}),
                await http.get("/api/todos", headers={"X-Request-ID": request_id}),
            ]
        finally:
            await connection.execute("DELETE FROM external_records WHERE id = $1::uuid", todo["id"])
            await connection.close()
    for answer in answers:
        assert answer.status_code == 500
        assert answer.json() == {"detail": "Internal Server Error"}
        for hint in ("schema_version", "migrate", "perhaps", "completed", "Todo"):
            assert hint not in answer.text
    log = todo_http.log_text()
    lines = [line for line in log.splitlines() if request_id in line]
    assert len(lines) >= 2, log[-3000:]
    assert all("GET /api/todos" in line for line in lines)
    assert "completed" in log
    assert "perhaps" not in log  # the stored value is user data: never logged


def test_error_details_have_fastapis_shape(todo_http: Served) -> None:
    """Invalid input: the ``detail`` list of ``loc``/``msg``/``type``, ``loc`` at the field."""
    with httpx.Client(base_url=todo_http.base) as http:
        empty = http.post("/api/todos", json={"description": ""})
        unknown = http.post("/api/todos", json={"description": "x", "owner": "me"})
        malformed = http.get("/api/todos/not-a-uuid")
    for response, loc in (
        (empty, ["body", "description"]),
        (unknown, ["body", "owner"]),
        (malformed, ["path", "id"]),
    ):
        assert response.status_code == 400
        (problem,) = response.json()["detail"]
        assert problem["loc"] == loc
        assert set(problem) == {"loc", "msg", "type"}


@pytest.fixture
def own_postgres() -> Iterator[servers.TempPostgres]:
    """A throwaway PostgreSQL server of this test alone (it is stopped and started again)."""
    with servers.temp_postgres() as temp:
        assert toast_cli(["migrate", temp.url()]) == 0
        yield temp


def test_a_storage_outage_answers_503_with_retry_after(
    own_postgres: servers.TempPostgres, tmp_path: Path
) -> None:
    """PostgreSQL stopped under the running service: 503 + Retry-After, logged; then it heals."""
    port = servers.free_port()
    log = tmp_path / "server.log"
    url = f"{own_postgres.url()}?connect_timeout=2"
    service = servers.start_todo_service(url, port, log=log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            todo = http.post("/api/todos", json={"description": "outage"}).json()
            own_postgres.stop()
            answers = [
                http.get(f"/api/todos/{todo['id']}", headers={"X-Request-ID": "outage-1"}),
                http.post("/api/todos", json={"description": "x"}),
                http.get("/api/todos"),
            ]
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.headers["Retry-After"] == "5"
                assert answer.json() == {"detail": "storage is unavailable"}
                assert "5432" not in answer.text
                assert str(own_postgres.port) not in answer.text
            own_postgres.start()
            deadline = time.monotonic() + 30
            while (healed := http.get(f"/api/todos/{todo['id']}")).status_code != 200:
                assert time.monotonic() < deadline, healed.text
                time.sleep(0.2)
            assert healed.json() == todo
    finally:
        servers.stop_todo_service(service)
    text = log.read_text()
    (line,) = [line for line in text.splitlines() if "outage-1" in line]
    assert "storage unavailable" in line
    assert f"GET /api/todos/{todo['id']}" in line
    assert own_postgres.PASSWORD + "@" not in text
