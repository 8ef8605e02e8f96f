"""FastAPI integration: references as capabilities, full data on request, conventional errors.

Install with ``pip install 'pydantic-toast[fastapi]'``::

    from fastapi import FastAPI
    from pydantic_toast.fastapi import install, loader, storage_lifespan

    app = FastAPI(lifespan=storage_lifespan(Todo))
    install(app)  # before adding routes

    @app.get("/todos/{id}")
    async def get_todo(todo: Annotated[Todo, Depends(loader(Todo))]) -> Expanded[Todo]: ...

See ``docs/fastapi.md`` for references in request bodies (``Ref``, ``AcceptReference``), full
data in responses (``Expanded``), conditional requests and the error table.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

try:
    from fastapi import FastAPI
except ImportError as exc:  # pragma: no cover - exercised in a venv without FastAPI
    raise ImportError(
        "pydantic_toast.fastapi needs FastAPI, which is not installed: "
        "run pip install 'pydantic-toast[fastapi]'",
        name=exc.name,
    ) from exc

from pydantic_toast._boundary import AcceptReference, Authorize, Ref, requests_schemas
from pydantic_toast._expanded import Expanded
from pydantic_toast._signing import SigningKeys, signing_schemas
from pydantic_toast.fastapi._conditional import conditional, etag_of, set_etag
from pydantic_toast.fastapi._errors import (
    RETRY_AFTER_SECONDS,
    ErrorMessage,
    error_responses,
    install_error_handlers,
    not_found,
)
from pydantic_toast.fastapi._lifespan import check_storage, storage_lifespan
from pydantic_toast.fastapi._loader import loader
from pydantic_toast.fastapi._openapi import name_reference_shapes
from pydantic_toast.fastapi._routes import SIGNING_STATE, ToastRoute, UntrustedRequests

__all__ = [
    "RETRY_AFTER_SECONDS",
    "AcceptReference",
    "Authorize",
    "ErrorMessage",
    "Expanded",
    "Ref",
    "SigningKeys",
    "ToastRoute",
    "UntrustedRequests",
    "check_storage",
    "conditional",
    "error_responses",
    "etag_of",
    "install",
    "install_error_handlers",
    "loader",
    "not_found",
    "set_etag",
    "storage_lifespan",
]


def install(app: FastAPI, *, signing: SigningKeys | None = None) -> None:
    """Make ``app`` use the integration: :class:`ToastRoute` for its routes, and error handlers.

    Call it right after creating the app, before adding routes (routes added before keep the
    plain ``APIRoute``: there, references in request input are refused and nothing is
    prefetched). For an ``APIRouter``, pass ``route_class=ToastRoute`` when creating it.

    Args:
        app: The application.
        signing: Sign references: the references the app's responses carry get a
            ``signature`` (and an ``expires_at`` when the keys set ``expires_in``), and a
            ``Ref``/``AcceptReference`` field accepts only references whose signature
            verifies (an unsigned, altered or expired one answers like a missing record,
            without touching storage). OpenAPI documents the signed shape.
    """
    app.router.route_class = ToastRoute
    app.add_middleware(UntrustedRequests)
    install_error_handlers(app)
    # Set even without keys (a missing attribute of app.state costs each request an
    # exception), but a second install() without keys keeps those given earlier.
    if signing is not None or getattr(app.state, SIGNING_STATE, None) is None:
        setattr(app.state, SIGNING_STATE, signing)
    _document(app, signed=getattr(app.state, SIGNING_STATE) is not None)


def _document(app: FastAPI, *, signed: bool) -> None:
    """OpenAPI that documents what requests take, with named data and reference shapes.

    A request body's external model is documented as its data only, and as its data or its
    reference where the field accepts references (``Ref``/``AcceptReference``); references
    are signed ones when ``signed``.

    FastAPI's documented way to change the schema: replace ``app.openapi``.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        with requests_schemas(), signing_schemas() if signed else nullcontext():
            schema = generate()
        app.openapi_schema = name_reference_shapes(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
