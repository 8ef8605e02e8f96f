"""The todo API: ``DATABASE_URL=postgresql://... uvicorn examples.todo_api.app:app``.

Run ``pydantic-toast migrate`` (or ``alembic upgrade head``) against the database first.
The routes under ``/api/todos`` use the non-blocking API; the same routes under
``/api/sync/todos`` call the sync API from ``async def`` code, to compare under load (they
block the event loop for every round trip: do not write routes like them).
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from examples.todo_api.models import Todo, TodoCreate, TodoOut, TodoPage, TodoUpdate, now
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import pydantic_toast
from pydantic_toast.fastapi import (
    check_storage,
    conditional,
    install,
    storage_lifespan,
)


class Problem(BaseModel):
    """One invalid input: where (``loc``), what is wrong (``msg``) and its kind (``type``)."""

    loc: list[str | int]
    msg: str
    type: str


class BadRequest(BaseModel):
    """The service answers invalid input with 400 (the seeds' choice) in FastAPI's shape."""

    detail: list[Problem] | str


app = FastAPI(
    title="Todos on pydantic-toast",
    lifespan=storage_lifespan(Todo),
    responses={400: {"model": BadRequest, "description": "Invalid input"}},
)
install(app)
# GET answers an ETag; PATCH and DELETE honour If-Match (412 when stale), and a PATCH that
# races another write gets a 409 from the revision check of its save.
LoadedTodo = Annotated[Todo, Depends(conditional(Todo))]


@app.exception_handler(405)
async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """405 with an ``Allow`` header naming every method of the path (not just one route's)."""
    allowed: set[str] = set()
    for route in app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        methods = getattr(route, "methods", None)
        if match.name != "NONE" and methods:
            allowed |= set(methods)
    return JSONResponse(
        {"detail": "Method Not Allowed"}, 405, headers={"Allow": ", ".join(sorted(allowed))}
    )


@app.exception_handler(RequestValidationError)
async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Invalid input is the client's mistake: 400, FastAPI's ``detail`` list of problems."""
    problems = [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]
    return JSONResponse(jsonable_encoder({"detail": problems}), status_code=400)


@app.post("/api/todos", status_code=201)
async def create_todo(body: TodoCreate) -> TodoOut:
    todo = Todo(description=body.description)
    await todo.asave()
    return TodoOut.of(todo)


# A page cursor is next_after from the previous page: 34 URL-safe base64 characters, a format
# byte then created_at (from 1970, before the year 8800) and the id. The pattern is exactly the
# tokens the library decodes, so that a client (or schemathesis) following the schema never
# sends a cursor that is refused; one for a record that is gone still pages from its place.
CURSOR_PATTERN = "^AQ[A-L][A-Za-z0-9_-]{31}$"


@app.get("/api/todos")
async def list_todos(
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None,
) -> TodoPage:
    page = await pydantic_toast.apage(Todo, limit=limit, after=after)
    return TodoPage(items=[TodoOut.of(t) for t in page.items], next_after=page.next_after)


@app.get("/api/todos/{id}")
async def get_todo(todo: LoadedTodo) -> TodoOut:
    return TodoOut.of(todo)


@app.patch("/api/todos/{id}")
async def update_todo(todo: LoadedTodo, body: TodoUpdate) -> TodoOut:
    changes = body.model_dump(exclude_none=True)
    for field, value in changes.items():
        setattr(todo, field, value)
    todo.updated_at = now()
    await todo.asave()
    return TodoOut.of(todo)


@app.delete("/api/todos/{id}", status_code=204)
async def delete_todo(todo: LoadedTodo) -> Response:
    # Revision-checked: a PATCH that saved since this request read the todo makes it a 409
    # (instead of deleting a change the PATCH was told is saved).
    await pydantic_toast.adelete(Todo, todo, revision=todo.external_revision)
    return Response(status_code=204)


@app.get("/health")
async def health() -> dict[str, str]:
    await check_storage(Todo)
    return {"status": "ok", "storage": "ok"}


# The same operations through the sync API, for the load test's comparison only. They are left
# out of the OpenAPI schema: they are a benchmark fixture, not part of the service's contract,
# and documenting the same todos under a second path family with no DELETE of its own makes a
# client (schemathesis' stateful checks, for one) expect a todo deleted through /api/todos to
# still exist under /api/sync/todos.


@app.post("/api/sync/todos", status_code=201, include_in_schema=False)
async def create_todo_sync(body: TodoCreate) -> TodoOut:
    todo = Todo(description=body.description)
    todo.model_dump()
    return TodoOut.of(todo)


@app.get("/api/sync/todos", include_in_schema=False)
async def list_todos_sync(limit: Annotated[int, Query(ge=1, le=100)] = 20) -> TodoPage:
    page = pydantic_toast.page(Todo, limit=limit)
    return TodoPage(items=[TodoOut.of(t) for t in page.items], next_after=page.next_after)


@app.get("/api/sync/todos/{id}", include_in_schema=False)
async def get_todo_sync(id: UUID) -> TodoOut:
    return TodoOut.of(Todo.model_validate({"class_name": "Todo", "id": id}))


@app.patch("/api/sync/todos/{id}", include_in_schema=False)
async def update_todo_sync(id: UUID, body: TodoUpdate) -> TodoOut:
    todo = Todo.model_validate({"class_name": "Todo", "id": id})
    for field, value in body.model_dump(exclude_none=True).items():
        setattr(todo, field, value)
    todo.updated_at = now()
    todo.model_dump()
    return TodoOut.of(todo)
