"""The library's errors as HTTP answers: one table, logged with the request id."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from pydantic_toast._exceptions import (
    ExternalStorageError,
    InvalidReferenceError,
    RecordNotFoundError,
    StorageConfigurationError,
    StorageConnectionError,
    StorageSchemaError,
    StorageTimeoutError,
    StorageValidationError,
)

__all__ = [
    "RETRY_AFTER_SECONDS",
    "Answer",
    "ErrorMessage",
    "answer_for",
    "error_responses",
    "install_error_handlers",
    "not_found",
    "request_id",
]

logger = logging.getLogger("pydantic_toast.fastapi")


class _LastResort(logging.Handler):
    """Python's last-resort output (stderr, WARNING and up) while no logging is configured.

    The package logger's ``NullHandler`` (the usual courtesy of a library) would otherwise
    swallow the causes of 500 and 503 answers under a plain ``uvicorn app:app``, which
    configures its own loggers only: the server log must say why a request failed. Once the
    application configures logging (a handler on the way to the root), this one stays quiet.
    """

    def emit(self, record: logging.LogRecord) -> None:
        resort = logging.lastResort
        if resort is not None and record.levelno >= resort.level and _unconfigured(logger):
            resort.handle(record)


def _unconfigured(start: logging.Logger) -> bool:
    """Whether no handler but null and last-resort ones would see ``start``'s records."""
    current: logging.Logger | None = start
    while current is not None:
        if any(not isinstance(h, logging.NullHandler | _LastResort) for h in current.handlers):
            return False
        if not current.propagate:
            return True
        current = current.parent
    return True


logger.addHandler(_LastResort())

RETRY_AFTER_SECONDS = 5
"""The ``Retry-After`` of a 503: storage outages are usually short (a restart, a failover)."""

REQUEST_ID_HEADER = "X-Request-ID"


class ErrorMessage(BaseModel):
    """An error answer: ``{"detail": "..."}``, as FastAPI's ``HTTPException`` gives."""

    detail: str


@dataclass(frozen=True, slots=True)
class Answer:
    """The HTTP answer to a library error."""

    status: int
    detail: Any
    headers: dict[str, str] | None = None


def not_found(class_name: str) -> str:
    """The one wording of "not found", for the loader, deletes and every other 404."""
    return f"{class_name} not found"


def request_id(request: Request | None) -> str:
    """The request's ``X-Request-ID``, ``-`` when it has none (for log lines)."""
    if request is None:
        return "-"
    return request.headers.get(REQUEST_ID_HEADER, "-")[:128]


def answer_for(exc: ExternalStorageError, request: Request | None) -> Answer:
    """The answer to ``exc``, logging its cause (never sent to the client) on the way.

    404 for a missing record, 409 for a concurrent change, 422 for data or a reference the
    client sent that cannot be used (for a malformed reference or id, ``loc`` names the path
    or query parameter that holds it, or is empty when none does; for a value a save refused,
    the parameter or the body it came in, see :func:`_refused_loc`), 503 (with ``Retry-After``)
    when storage is unreachable, overloaded or not migrated yet, 500 for everything else
    (stored data that no longer validates, configuration and usage errors: bugs of the
    service, not of the client).
    """
    where = _where(request)
    if isinstance(exc, RecordNotFoundError):
        logger.info("%s: %s", where, exc)
        return Answer(404, not_found(exc.class_name))
    if type(exc).__name__ == "ConcurrencyError":
        logger.info("%s: %s", where, exc)
        name = getattr(exc, "class_name", "record")
        return Answer(
            409, f"{name} was changed by another request: read it again and retry the change"
        )
    if isinstance(exc, InvalidReferenceError):
        logger.info("%s: %s", where, exc)
        problem = {"loc": _loc(exc, request), "msg": "Invalid reference or id"}
        return Answer(422, [{**problem, "type": "invalid_reference"}])
    if isinstance(exc, StorageValidationError) and not isinstance(exc, StorageConfigurationError):
        logger.info("%s: %s", where, exc)
        problem = {"loc": _refused_loc(exc, request), "msg": "Value cannot be stored"}
        return Answer(422, [{**problem, "type": "storage_validation"}])
    if isinstance(exc, StorageConnectionError | StorageTimeoutError | StorageSchemaError):
        logger.error("%s: storage unavailable: %s", where, exc)
        return Answer(
            503,
            "storage is unavailable",
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    logger.error("%s: %s", where, exc, exc_info=exc)
    return Answer(500, "Internal Server Error")


def _loc(exc: InvalidReferenceError, request: Request | None) -> list[str]:
    """Where the refused id came from: the path or query parameter that holds it, else ``[]``.

    A reference in a body is refused by the body's validation (``loc`` at its field) before a
    route runs; one that reaches here came from the route's code, from wherever it read it.
    """
    if request is None or exc.id is None:
        return []
    refused = str(exc.id).lower()
    for source, parameters in (("path", request.path_params), ("query", request.query_params)):
        for name, value in parameters.items():
            if str(value).lower() == refused:
                return [source, name]
    return []


def _refused_loc(exc: StorageValidationError, request: Request | None) -> list[str]:
    """Where the value a save refused came from, for a route whose code stored what the
    client sent.

    The error carries no value (never the client's data), so the request is searched: a
    path, query, header or cookie parameter holding what a store refuses (a NUL character,
    NaN or an infinity), one named like the refused field first; else ``["body"]`` when the
    request has a body; else ``[]``, never a made-up place.
    """
    if request is None:
        return ["body"]
    field = {_normal(part) for part in (exc.field or "").split(".")}
    suspects = [
        [source, name] for source, name, value in _parameters(request) if _unstorable(value)
    ]
    for source, name in suspects:
        if _normal(name) in field:
            return [source, name]
    if suspects:
        return suspects[0]
    headers = request.headers
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        return ["body"]
    return []


def _parameters(request: Request) -> list[tuple[str, str, str]]:
    """The request's ``(source, name, value)`` path, query, header and cookie parameters, by
    the names FastAPI's own errors use; headers and cookies only where the route declares
    them (others, such as ``Host``, the route's code does not store)."""
    found = [("path", name, str(value)) for name, value in request.path_params.items()]
    found += [("query", name, value) for name, value in request.query_params.multi_items()]
    headers, cookies = _declared(request)
    found += [
        ("header", name, value)
        for name, value in request.headers.items()
        if _normal(name) in headers
    ]
    found += [("cookie", name, value) for name, value in request.cookies.items() if name in cookies]
    return found


def _declared(request: Request) -> tuple[set[str], set[str]]:
    """The header (normalized, see :func:`_normal`) and cookie names the request's route and
    its dependencies declare."""
    headers: set[str] = set()
    cookies: set[str] = set()
    route = request.scope.get("route")
    stack = [getattr(route, "dependant", None)]
    while stack:
        dependant = stack.pop()
        if dependant is None:
            continue
        for field in getattr(dependant, "header_params", ()):
            headers |= {_normal(field.name), _normal(field.alias)}
        cookies |= {field.alias for field in getattr(dependant, "cookie_params", ())}
        stack.extend(getattr(dependant, "dependencies", ()))
    return headers, cookies


def _normal(name: str) -> str:
    return name.lower().replace("-", "_")


_NOT_FINITE = frozenset({"nan", "inf", "infinity"})


def _unstorable(value: str) -> bool:
    """Whether a parameter's text holds what a store refuses: a NUL character, or NaN or an
    infinity once read as a float (both refused by PostgreSQL's ``jsonb``)."""
    return "\x00" in value or value.strip().lower().lstrip("+-") in _NOT_FINITE


def _where(request: Request | None) -> str:
    if request is None:
        return "pydantic-toast"
    return f"{request.method} {request.url.path} [request {request_id(request)}]"


def install_error_handlers(app: FastAPI) -> None:
    """Answer the library's errors with conventional statuses, wherever a route raises them.

    See :func:`answer_for` for the table. The response body never carries the library's
    message (it describes your infrastructure or data); the server log does, with the
    request's ``X-Request-ID``.
    """

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ExternalStorageError)
        answer = answer_for(exc, request)
        return JSONResponse({"detail": answer.detail}, answer.status, headers=answer.headers)

    app.add_exception_handler(ExternalStorageError, handle)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the statuses the integration can answer."""
    descriptions = {
        404: "Not found",
        409: "Changed by another request (read it again and retry)",
        412: "The record changed since the given ETag (If-Match does not match)",
        428: "If-Match is required",
        500: "Internal Server Error",
        503: "Storage temporarily unavailable (see Retry-After)",
    }
    result: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorMessage, "description": descriptions[status]}
        if status == 503:
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
            }
        result[status] = entry
    return result
