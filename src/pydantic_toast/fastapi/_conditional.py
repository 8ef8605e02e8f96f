"""Conditional requests on record revisions: ``ETag``, ``If-Match``, 412 and 428.

Built on one small interface: a loaded model's ``external_revision`` (``None`` or missing on a
backend without revisions, where no ``ETag`` is given and an ``If-Match`` other than ``*``
never matches).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from contextvars import ContextVar, Token
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import HTTPException, Path, Request, Response

from pydantic_toast._exceptions import ExternalStorageError
from pydantic_toast._model import ExternalBaseModel
from pydantic_toast.fastapi._errors import answer_for, error_responses

__all__ = ["conditional", "etag_of", "set_etag"]

M = TypeVar("M", bound=ExternalBaseModel)
_UNSAFE = frozenset(("PATCH", "PUT", "DELETE", "POST"))
_loaded: ContextVar[list[tuple[ExternalBaseModel, Response]] | None] = ContextVar(
    "pydantic_toast_conditional", default=None
)


def etag_of(model: ExternalBaseModel) -> str | None:
    """The strong ``ETag`` of a stored model's current revision, ``None`` without revisions."""
    revision = getattr(model, "external_revision", None)
    if model.external_id is None or revision is None:
        return None
    return f'"{model.external_id.hex}.{revision}"'


def set_etag(response: Response, model: ExternalBaseModel) -> None:
    """Put ``model``'s ``ETag`` on ``response`` (nothing when it has no revision)."""
    etag = etag_of(model)
    if etag is not None:
        response.headers["ETag"] = etag


def _matches(header: str, etag: str | None) -> bool:
    tags = [tag.strip() for tag in header.split(",")]
    if "*" in tags:
        return True
    return etag is not None and etag in tags


def conditional(
    model: type[M], *, param: str = "id", require: bool = False
) -> Callable[..., Coroutine[Any, Any, M]]:
    """A dependency that loads ``model`` from the path and enforces ``If-Match``.

    On ``GET`` it only sets the ``ETag``. On ``PATCH``/``PUT``/``DELETE``: a missing
    ``If-Match`` is a 428 when ``require`` is set (otherwise the write goes ahead and relies on
    the revision check of the save: a 409 on a concurrent change); an ``If-Match`` that does
    not name the current revision is a 412. On a ``ToastRoute`` the response carries the
    ``ETag`` of the model after the route saved it, and the route's OpenAPI declares 404,
    409, 412, 428 (with ``require``), 500 and 503.

    On ``DELETE``, delete the instance at the revision that was checked, so that a write
    landing after the check (or a re-creation of the record) is never deleted (a 409
    instead)::

        await pydantic_toast.adelete(Todo, todo, revision=todo.external_revision)
    """

    async def load(request: Request, response: Response, **path: UUID) -> M:
        try:
            instance = await model.aload(path[param])
        except ExternalStorageError as exc:
            answer = answer_for(exc, request)
            raise HTTPException(answer.status, answer.detail, headers=answer.headers) from None
        etag = etag_of(instance)
        if request.method in _UNSAFE:
            header = request.headers.get("If-Match")
            if header is None and require:
                raise HTTPException(
                    428, f"If-Match is required: send the ETag of the {model.__name__} you read"
                )
            if header is not None and not _matches(header, etag):
                raise HTTPException(
                    412, f"{model.__name__} changed since that ETag: read it again and retry"
                )
        if etag is not None:
            response.headers["ETag"] = etag
        loaded = _loaded.get()
        if loaded is not None:
            loaded.append((instance, response))
        return instance

    parameters = [
        inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request),
        inspect.Parameter("response", inspect.Parameter.KEYWORD_ONLY, annotation=Response),
        inspect.Parameter(
            param, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[UUID, Path()]
        ),
    ]
    load.__signature__ = inspect.Signature(parameters, return_annotation=model)  # type: ignore[attr-defined]
    load.__name__ = f"load_{model.__name__.lower()}_if_match"
    statuses = (404, 409, 412, 428, 500, 503) if require else (404, 409, 412, 500, 503)
    load.__toast_responses__ = error_responses(*statuses)  # type: ignore[attr-defined]
    return load


def collecting_loaded() -> Token[list[tuple[ExternalBaseModel, Response]] | None]:
    """Start collecting what :func:`conditional` dependencies load in this request."""
    return _loaded.set([])


def refresh_etags() -> None:
    """After the route ran: each conditionally loaded model's ETag, as the route left it."""
    for instance, response in _loaded.get() or ():
        set_etag(response, instance)
