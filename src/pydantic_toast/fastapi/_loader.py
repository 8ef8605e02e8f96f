"""``loader(Model)``: a dependency that loads a model from the id in the path."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import HTTPException, Path, Request

from pydantic_toast._exceptions import ExternalStorageError
from pydantic_toast._model import ExternalBaseModel
from pydantic_toast.fastapi._errors import answer_for, error_responses

__all__ = ["loader"]

M = TypeVar("M", bound=ExternalBaseModel)


def loader(model: type[M], *, param: str = "id") -> Callable[..., Coroutine[Any, Any, M]]:
    """A dependency that loads ``model`` from the path parameter ``param`` (a UUID).

    Answers 404 for an unknown id, 422 for a malformed one, 503 when storage is down and 500
    when the stored record no longer validates (see
    :func:`~pydantic_toast.fastapi.install_error_handlers`). The load is awaited on the app's
    loop: it does not block other requests. On a :class:`~pydantic_toast.fastapi.ToastRoute`
    these statuses are declared in the route's OpenAPI.
    """

    async def load(request: Request, **path: UUID) -> M:
        try:
            return await model.aload(path[param])
        except ExternalStorageError as exc:
            answer = answer_for(exc, request)
            raise HTTPException(answer.status, answer.detail, headers=answer.headers) from None

    parameters = [
        inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request),
        inspect.Parameter(
            param, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[UUID, Path()]
        ),
    ]
    load.__signature__ = inspect.Signature(parameters, return_annotation=model)  # type: ignore[attr-defined]
    load.__name__ = f"load_{model.__name__.lower()}"
    load.__toast_responses__ = error_responses(404, 500, 503)  # type: ignore[attr-defined]
    return load
