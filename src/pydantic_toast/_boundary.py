"""References from outside the process: not loaded unless a field accepts them.

A reference is a capability: whoever holds one can read the record. Input that crosses a trust
boundary (a request body, a query parameter) is validated inside :func:`untrusted_input`; there
an external model takes full data only, and a reference is refused, without touching storage,
unless the field or parameter opts in with :class:`AcceptReference` (or :data:`Ref`). Accepted
references are authorized and fetched *before* validation (asynchronously, by the integration),
so validation itself never does I/O there. Outside such a block, ``model_validate(ref)`` loads
as always.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, ValidatorFunctionWrapHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from pydantic_toast._loading import LoadSession, SessionKey
from pydantic_toast._reference import ExternalReference
from pydantic_toast._signing import SigningKeys, signed_json_schema

__all__ = [
    "ACCEPT_KEY",
    "DATA_KEY",
    "AcceptReference",
    "Authorize",
    "Boundary",
    "Ref",
    "accepting",
    "current_boundary",
    "documenting_requests",
    "is_trusted",
    "not_accepting",
    "reference_json_schema",
    "requests_schemas",
    "trusted",
    "untrusted_input",
]

T = TypeVar("T")

ACCEPT_KEY = "pydantic_toast_accept"
"""Core-schema metadata key holding a field's :class:`AcceptReference`."""

DATA_KEY = "x-pydantic-toast-data"
"""JSON-schema key marking an external model's data shape while request schemas are generated:
``[python class name, stored class name]``. Removed again when OpenAPI is finished."""

Authorize = Callable[[ExternalReference, Any], bool | Awaitable[bool]]
"""``authorize(reference, request) -> bool`` (or an awaitable of it): ``False`` refuses it."""


@dataclass(frozen=True, slots=True)
class AcceptReference:
    """Marks a field or parameter that accepts a reference from outside the process.

    Use it in ``Annotated``: ``customer: Annotated[Customer, AcceptReference(authorize=...)]``
    (``Ref[Customer]`` is the same without a hook). Full data is still accepted there too.

    Args:
        authorize: Called with each such reference and the request (the object given to
            :func:`untrusted_input`, a FastAPI ``Request``) before anything is read; return
            ``False`` to refuse it (for example, a record of another tenant). It may be
            ``async``. A refused reference looks exactly like a missing one to the client.
    """

    authorize: Authorize | None = None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> cs.CoreSchema:
        return cs.no_info_wrap_validator_function(
            self._validate, handler(source), metadata={ACCEPT_KEY: self}
        )

    def __get_pydantic_json_schema__(
        self, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """What the field accepts: the data shape, and the reference shape next to it."""
        schema = handler(core_schema)
        if handler.mode != "validation" or not documenting_requests():
            return schema
        return _with_references(schema, handler)

    def _validate(self, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # Everything under the marker accepts references: the value itself, or the elements
        # of ``Ref[list[Customer]]`` and the like (the prefetch fetched those too). Full data
        # of an external model turns it off again for that model's own fields.
        token = _accepting.set(True)
        try:
            return handler(value)
        finally:
            _accepting.reset(token)


def reference_json_schema(class_name: str) -> JsonSchemaValue:
    """The JSON schema of a reference to a ``class_name`` record (signed, where schemas are)."""
    return signed_json_schema(
        {
            "type": "object",
            "title": f"{class_name} reference",
            "description": f"A stored {class_name}, as its class name and id.",
            "properties": {
                "class_name": {"type": "string", "const": class_name},
                "id": {"type": "string", "format": "uuid"},
            },
            "required": ["class_name", "id"],
            "additionalProperties": False,
        }
    )


def _with_references(schema: JsonSchemaValue, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
    """``schema`` where each external model's data may also be its reference.

    Goes through containers (lists, dicts) to the element: a model there, or a union of
    models, becomes ``anyOf: [element, <references>...]``; fields of the models themselves are
    left alone (their nested models take data, as their validation does).
    """
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return {**schema, "items": _with_references(schema["items"], handler)}
    extra = schema.get("additionalProperties")
    if schema.get("type") == "object" and isinstance(extra, dict) and DATA_KEY not in schema:
        return {**schema, "additionalProperties": _with_references(extra, handler)}
    members = schema.get("anyOf") or schema.get("oneOf") or [schema]
    names = [name for member in members if (name := _data_of(member, handler)) is not None]
    if not names:
        return schema
    references = [reference_json_schema(name) for name in dict.fromkeys(names)]
    if "anyOf" in schema and len(schema) == 1:
        return {"anyOf": [*schema["anyOf"], *references]}
    return {"anyOf": [schema, *references]}


def _data_of(schema: Any, handler: GetJsonSchemaHandler) -> str | None:
    """The stored class name when ``schema`` is (a ``$ref`` to) an external model's data."""
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        try:
            schema = handler.resolve_ref_schema(schema)
        except LookupError:  # not generated yet (a recursive model): not one of ours
            return None
    marker = schema.get(DATA_KEY)
    return marker[1] if isinstance(marker, list) else None


_documenting: ContextVar[bool] = ContextVar("pydantic_toast_documenting", default=False)


def documenting_requests() -> bool:
    """Whether JSON schemas are generated for request input behind the boundary."""
    return _documenting.get()


@contextmanager
def requests_schemas() -> Iterator[None]:
    """JSON schemas generated inside describe what request input behind the boundary takes.

    An external model there takes its data only; a field marked :class:`AcceptReference`
    takes its reference too. (Outside, an external model's input schema is "data or a
    reference", as ``model_validate`` in plain Python takes both.)
    """
    token = _documenting.set(True)
    try:
        yield
    finally:
        _documenting.reset(token)


Ref = Annotated[T, AcceptReference()]
"""``Ref[Customer]``: a ``Customer`` that may also be given as a reference from outside."""


@dataclass(slots=True)
class Boundary:
    """Validation of input from outside the process.

    Attributes:
        request: What authorization hooks are given (a FastAPI ``Request``).
        session: The accepted references, authorized and fetched ahead of validation.
        refused: Keys refused by an authorization hook (reported like missing records).
        keys: When set, only references signed with these keys are accepted (an unsigned or
            badly signed one is reported like a missing record).
    """

    request: Any
    session: LoadSession | None = None
    refused: set[SessionKey] = field(default_factory=set)
    keys: SigningKeys | None = None


_boundary: ContextVar[Boundary | None] = ContextVar("pydantic_toast_boundary", default=None)
_accepting: ContextVar[bool] = ContextVar("pydantic_toast_accepting", default=False)


def current_boundary() -> Boundary | None:
    """The boundary of the validation running now, ``None`` for trusted code."""
    return _boundary.get()


def accepting() -> bool:
    """Whether the value being validated sits in a field that accepts references."""
    return _accepting.get()


@contextmanager
def untrusted_input(boundary: Boundary) -> Iterator[Boundary]:
    """Validate input from outside inside this block: references load only where accepted."""
    token = _boundary.set(boundary)
    try:
        yield boundary
    finally:
        _boundary.reset(token)


@contextmanager
def not_accepting() -> Iterator[None]:
    """Values validated inside are not in a field that accepts references."""
    token = _accepting.set(False)
    try:
        yield
    finally:
        _accepting.reset(token)


def is_trusted() -> bool:
    """Whether references already load as the application's own (no :func:`trusted` needed).

    Outside routes nothing is set: a load can skip entering the block (a generator-based
    context manager costs more than the rest of a small record's bookkeeping).
    """
    return _boundary.get() is None and not _accepting.get()


@contextmanager
def trusted() -> Iterator[None]:
    """Code inside the block is the application's own: references load as usual.

    Stored data is always read this way (references inside a stored record were written by
    the application), and so is the body of a route.
    """
    token = _boundary.set(None)
    accept = _accepting.set(False)
    try:
        yield
    finally:
        _accepting.reset(accept)
        _boundary.reset(token)
