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

from pydantic import GetCoreSchemaHandler, ValidatorFunctionWrapHandler
from pydantic_core import core_schema as cs

from pydantic_toast._loading import LoadSession, SessionKey
from pydantic_toast._reference import ExternalReference, parse_reference
from pydantic_toast._signing import SigningKeys, parse_signed

__all__ = [
    "ACCEPT_KEY",
    "AcceptReference",
    "Authorize",
    "Boundary",
    "Ref",
    "accepting",
    "current_boundary",
    "not_accepting",
    "trusted",
    "untrusted_input",
]

T = TypeVar("T")

ACCEPT_KEY = "pydantic_toast_accept"
"""Core-schema metadata key holding a field's :class:`AcceptReference`."""

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

    def _validate(self, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, dict) and _looks_like_reference(value):
            token = _accepting.set(True)
            try:
                return handler(value)
            finally:
                _accepting.reset(token)
        token = _accepting.set(False)
        try:
            return handler(value)
        finally:
            _accepting.reset(token)


def _looks_like_reference(value: dict[Any, Any]) -> bool:
    """A reference, signed or not (the model's validator decides whether it is acceptable)."""
    try:
        return parse_reference(value) is not None or parse_signed(value) is not None
    except Exception:  # malformed: the model's validator reports it
        return True


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
