"""``ToastRoute``: the request boundary for references, and responses that never block."""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Annotated, Any

from fastapi import Request, Response
from fastapi.dependencies.utils import get_dependant
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError
from pydantic_core import core_schema as cs
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Receive, Scope, Send

from pydantic_toast._boundary import (
    ACCEPT_KEY,
    AcceptReference,
    Boundary,
    trusted,
    untrusted_input,
)
from pydantic_toast._exceptions import (
    InvalidReferenceError,
    RecordNotFoundError,
    StorageUsageError,
)
from pydantic_toast._loading import LoadSession, Routes, find_references, routes_in
from pydantic_toast._reference import ExternalReference, ParsedReference
from pydantic_toast._saving import SaveBatch, collecting
from pydantic_toast._schema_walk import schema_nodes
from pydantic_toast._signing import SigningKeys, parse_signed, signing_responses, verify_parsed
from pydantic_toast.fastapi._conditional import collecting_loaded, refresh_etags
from pydantic_toast.fastapi._errors import error_responses
from pydantic_toast.runtime.loops import run_sync

__all__ = ["SIGNING_STATE", "ToastRoute", "UntrustedRequests", "signing_keys_of"]

SIGNING_STATE = "pydantic_toast_signing"
"""The ``app.state`` attribute holding the app's :class:`SigningKeys` (set by ``install``)."""

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

logger = logging.getLogger("pydantic_toast")


class ToastRoute(APIRoute):
    """An ``APIRoute`` that validates request input as untrusted and never blocks on storage.

    - Request bodies and parameters are validated inside the reference boundary: an external
      model there takes full data, and a reference is refused (422) unless its field is
      ``Ref[...]`` / ``AcceptReference``; accepted references are authorized and fetched
      with the async API *before* validation.
    - The route function itself runs as trusted application code.
    - External models in the response are saved with the async API when they changed, before
      FastAPI serializes them (an unchanged model is not written at all).
    - The statuses the integration can answer (500, 503, and those of the dependencies it
      provides) are declared in the route's OpenAPI ``responses``.

    :func:`pydantic_toast.fastapi.install` makes it the app's route class.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        # Declared before FastAPI builds the route, so that their models (ErrorMessage) are
        # part of the OpenAPI schema, not just their descriptions.
        responses = dict(error_responses(500, 503))
        for dependency in _declared_calls(path, endpoint, kwargs.get("dependencies")):
            responses.update(getattr(dependency, "__toast_responses__", {}))
        kwargs["responses"] = {**responses, **(kwargs.get("responses") or {})}
        holder: list[ToastRoute] = []
        super().__init__(path, _trusting(endpoint, holder), **kwargs)
        holder.append(self)
        self._toast_response: tuple[TypeAdapter[Any], bool] | None = None
        # Built now, with the app, not by the route's first request on the event loop (a
        # few ms of schema work per route, measured by bench/fastapi_loop_lag.py).
        self._toast_response_adapter()

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        accepted, routes = _accepted_in(self)

        async def handle(request: Request) -> Response:
            keys = signing_keys_of(request)
            boundary = Boundary(request, keys=keys)
            token = collecting_loaded()
            try:
                if accepted:
                    await _prefetch(boundary, request, accepted, routes)
                with untrusted_input(boundary), signing_responses(keys):
                    response = await handler(request)
            finally:
                token.var.reset(token)
            if response.background is not None:
                response.background = BackgroundTask(_trusted_background, response.background)
            return response

        return handle

    def _toast_response_adapter(self) -> tuple[TypeAdapter[Any], bool] | None:
        if self._toast_response is None and self.response_model is not None:
            adapter: TypeAdapter[Any] = TypeAdapter(self.response_model)
            self._toast_response = (adapter, bool(routes_in(adapter.core_schema)))
        return self._toast_response


def _trusting(endpoint: Callable[..., Any], holder: list[ToastRoute]) -> Callable[..., Any]:
    """``endpoint`` run as trusted code; an async one saves its response without blocking."""
    if not inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        def call(*args: Any, **kwargs: Any) -> Any:
            serialize = False
            with trusted(), signing_responses(None):
                result = endpoint(*args, **kwargs)
                if holder and not isinstance(result, Response):
                    batch, serialize = _response_batch(holder[0], result)
                    if batch is not None and batch.records:
                        # In FastAPI's worker thread: blocking here blocks no event loop.
                        run_sync(batch.write)
            refresh_etags()
            return _serialized(result) if serialize else result

        return call

    @functools.wraps(endpoint)
    async def acall(*args: Any, **kwargs: Any) -> Any:
        serialize = False
        with trusted(), signing_responses(None):
            result = await endpoint(*args, **kwargs)
            if holder and not isinstance(result, Response):
                batch, serialize = _response_batch(holder[0], result)
                if batch is not None and batch.records:
                    await batch.write()
        refresh_etags()
        return _serialized(result) if serialize else result

    return acall


async def _trusted_background(tasks: BackgroundTask) -> None:
    """Run a response's background tasks as trusted code: the application's own, run after
    the response was sent (still inside the request's boundary, where stored data holding
    references failed to validate)."""
    with trusted():
        await tasks()


def _response_batch(route: ToastRoute, result: Any) -> tuple[SaveBatch | None, bool]:
    """The records ``result`` would write when FastAPI serializes it, and who serializes it.

    With a response model, FastAPI serializes it (through the model's adapter: no I/O once
    the batch is written, references signed when the app signs). Without one, FastAPI would
    call ``jsonable_encoder``, whose ``model_dump()`` stores synchronously and never signs: a
    result holding external models is serialized here instead (``True``), after the write.
    """
    response = route._toast_response_adapter()
    if response is not None:
        adapter, has_records = response
        if not has_records:
            return None, False
        _, batch = collecting(lambda: adapter.dump_python(result, mode="json", warnings=False))
        return batch, False
    try:
        _, batch = collecting(
            lambda: _ANY.dump_python(result, mode="json", warnings=False, fallback=_opaque)
        )
    except PydanticSerializationError:
        return None, False  # not something Pydantic serializes: FastAPI's encoder decides
    return batch, bool(batch.models)


def _opaque(value: Any) -> None:
    return None


def _serialized(result: Any) -> Any:
    """``result`` as JSON data, external models as their (signed) references; no I/O."""
    return _ANY.dump_python(result, mode="json", fallback=jsonable_encoder)


_ANY: TypeAdapter[Any] = TypeAdapter(Any)


def _declared_calls(
    path: str, endpoint: Callable[..., Any], dependencies: Sequence[Any] | None
) -> Iterator[Any]:
    """The dependency callables of a route: its parameters' and its ``dependencies=``."""
    yield from _calls(get_dependant(path=path, call=endpoint))
    for depends in dependencies or ():
        call = getattr(depends, "dependency", None)
        if call is not None:
            yield call
            yield from _calls(get_dependant(path=path, call=call))


def _calls(dependant: Any) -> Iterator[Any]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _dependants(dependant: Any) -> Iterator[Any]:
    """``dependant`` and its dependencies', at any depth: FastAPI merges the body and query
    parameters of every dependency into the request's."""
    stack = [dependant]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(current.dependencies)


def _accepted_in(route: APIRoute) -> tuple[dict[str, list[AcceptReference]], Routes]:
    """The class names the route's body accepts references of, with their markers, and routes.

    Body parameters of the route's dependencies count too (FastAPI reads them from the same
    request body).

    Raises:
        StorageUsageError: A query parameter accepts references (only JSON bodies can carry
            them; FastAPI documents a query model by its data fields, not a reference's).
    """
    accepted: dict[str, list[AcceptReference]] = {}
    routes: Routes = {}
    dependants = list(_dependants(route.dependant))
    for field in (field for dependant in dependants for field in dependant.body_params):
        for marker, model in _accepting_models(field_schema(field)):
            accepted.setdefault(model._toast_settings().external_name, []).append(marker)
            routes.update(model._toast_routes())
    for field in (field for dependant in dependants for field in dependant.query_params):
        for _, model in _accepting_models(field_schema(field)):
            raise StorageUsageError(
                f"{route.path}: the query parameter {field.name!r} accepts a "
                f"{model.__qualname__} reference (Ref/AcceptReference), which only a JSON "
                "body can carry: take the reference in the request body, or the id in the path "
                "with pydantic_toast.fastapi.loader()"
            )
    return accepted, routes


def field_schema(field: Any) -> cs.CoreSchema:
    """The core schema of a FastAPI request field (a body or query parameter).

    Built from the field's public ``field_info`` (its annotation and metadata, which carry the
    ``AcceptReference`` marker), not from FastAPI's private type adapter. The one place that
    depends on the shape of FastAPI's fields: tests/unit/test_fastapi_boundary.py checks it.
    """
    info = field.field_info
    annotated: Any = (
        Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    )
    return TypeAdapter(annotated).core_schema


def _accepting_models(schema: Any) -> Iterator[tuple[AcceptReference, Any]]:
    """Each ``(marker, external model class)`` accepting references in ``schema``."""
    nodes = list(schema_nodes(schema))
    definitions = {node["ref"]: node for node in nodes if isinstance(node.get("ref"), str)}
    for node in nodes:
        marker = (node.get("metadata") or {}).get(ACCEPT_KEY)
        if isinstance(marker, AcceptReference):
            for model in _models(node.get("schema"), definitions):
                yield marker, model


def _external_model(node: dict[str, Any]) -> Any:
    """The external model class of a ``model`` node, else ``None``."""
    model = node.get("cls") if node.get("type") == "model" else None
    return model if getattr(model, "__toast_settings__", None) is not None else None


def _models(schema: Any, definitions: dict[str, Any]) -> Iterator[Any]:
    """External model classes directly under ``schema`` (not those nested in their fields)."""
    for node in schema_nodes(
        schema,
        definitions=definitions,
        descend=lambda node: _external_model(node) is None,
    ):
        model = _external_model(node)
        if model is not None:
            yield model


async def _prefetch(
    boundary: Boundary,
    request: Request,
    accepted: dict[str, list[AcceptReference]],
    routes: Routes,
) -> None:
    """Authorize and fetch the accepted references in the request body, before validation."""
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        return  # FastAPI answers the malformed body
    session = LoadSession(routes)
    boundary.session = session
    wanted: dict[Any, set[Any]] = {}
    found = find_references(body) if boundary.keys is None else _signed_in(body, boundary.keys)
    for class_name, id in set(found):
        markers = accepted.get(class_name)
        route = routes.get(class_name)
        if markers is None or route is None:
            continue  # not accepted here: refused in validation without reading anything
        reference = ExternalReference(class_name, id)
        if not await _authorized(markers, reference, request):
            boundary.refused.update((url, class_name, id) for url in route.urls)
            continue
        for url in route.urls:
            wanted.setdefault(url, set()).add((class_name, id))
    if wanted:
        await session.fetch(wanted, follow=True)


def _signed_in(value: object, keys: SigningKeys) -> Iterator[ParsedReference]:
    """The references in ``value`` whose signature verifies (the others are never fetched)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            try:
                signed = parse_signed(item)
            except InvalidReferenceError:
                continue  # malformed: its validator reports it
            if signed is None:
                stack.extend(item.values())
            elif verify_parsed(*signed, keys) is None:
                yield signed[0]
        elif isinstance(item, list):
            stack.extend(item)


def signing_keys_of(request: Request) -> SigningKeys | None:
    """The keys ``install(app, signing=...)`` gave the request's app, ``None`` without."""
    keys: SigningKeys | None = getattr(request.app.state, SIGNING_STATE, None)
    return keys


async def _authorized(
    markers: list[AcceptReference], reference: ExternalReference, request: Request
) -> bool:
    for marker in markers:
        if marker.authorize is None:
            continue
        try:
            verdict = marker.authorize(reference, request)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except RecordNotFoundError:
            # A hook that loads the record to decide (its tenant, its owner) finds none: the
            # same answer as a refused reference, not a 404 that tells which ids exist.
            return False
        if not verdict:
            return False
    return True


class UntrustedRequests:
    """ASGI middleware: a whole HTTP request is untrusted input unless a route says otherwise.

    The safety net under :class:`ToastRoute`: on a route that is not one (a plain ``APIRoute``
    from an ``APIRouter`` made without ``route_class``), references in request input are
    refused rather than loaded, and so are references validated by the route function itself
    (use ``await Model.aload(ref)`` there, which is an explicit load).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.routes_checked = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.routes_checked:
            self.routes_checked = True
            warn_plain_routes(scope.get("app"))
        with untrusted_input(Boundary(None)):
            await self.app(scope, receive, send)


def warn_plain_routes(app: Any) -> None:
    """Log, once per app, the plain ``APIRoute`` routes whose body or response holds external
    models: made before ``install(app)`` or by an ``APIRouter`` without ``route_class``, they
    save responses with the blocking API (a ``BlockingStorageCallWarning`` per response, that
    names no route) and refuse references in requests."""
    plain = [
        route
        for route in _all_routes(getattr(app, "routes", ()))
        if type(route) is APIRoute and _holds_external_models(route)
    ]
    if not plain:
        return
    names = ", ".join(
        f"{'/'.join(sorted(route.methods or ()))} {route.path}" for route in plain[:10]
    )
    more = f" and {len(plain) - 10} more" if len(plain) > 10 else ""
    logger.warning(
        "these routes hold external models but are plain APIRoutes, not ToastRoutes: %s%s. "
        "They save responses with the blocking API and refuse references in requests: call "
        "pydantic_toast.fastapi.install(app) before adding routes, and create each APIRouter "
        "with route_class=ToastRoute",
        names,
        more,
    )


def _all_routes(routes: Sequence[Any]) -> Iterator[Any]:
    """``routes`` and those of the routers and mounts among them, at any depth (FastAPI 0.165
    keeps an included router whole, as ``original_router``, rather than copying its routes)."""
    for route in routes:
        yield route
        inner = getattr(getattr(route, "original_router", route), "routes", None)
        if inner is not None and inner is not routes:
            yield from _all_routes(inner)


def _holds_external_models(route: APIRoute) -> bool:
    """Whether the route's response model or a body parameter can hold external models."""
    types = [route.response_model] if route.response_model is not None else []
    types += [param.field_info.annotation for param in route.dependant.body_params]
    for kind in types:
        try:
            if routes_in(TypeAdapter(kind).core_schema):
                return True
        except Exception:  # a type Pydantic cannot adapt holds no model of ours
            continue
    return False
