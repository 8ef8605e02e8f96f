"""Full data on request: an external model's fields, serialized without storing it.

:func:`to_data` is the Python form; ``Expanded[Order]`` is the type form, for response models
(FastAPI documents it as the full schema, named ``OrderData``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import GetCoreSchemaHandler, SerializerFunctionWrapHandler
from pydantic_core import core_schema as cs

if TYPE_CHECKING:
    from pydantic_toast._model import ExternalBaseModel

__all__ = ["EXPANDED_KEY", "Expanded", "expanding", "is_expanding", "to_data"]

M = TypeVar("M", bound="ExternalBaseModel")

EXPANDED_KEY = "pydantic_toast_expanded"
"""Core-schema metadata key marking the expanded copy of a model's schema."""

_expanding: ContextVar[bool] = ContextVar("pydantic_toast_expanding", default=False)


def is_expanding() -> bool:
    """Whether external models serialize their full data now (instead of being stored)."""
    return _expanding.get()


@contextmanager
def expanding() -> Iterator[None]:
    """External models serialized inside the block give their fields and are not stored."""
    token = _expanding.set(True)
    try:
        yield
    finally:
        _expanding.reset(token)


def to_data(model: ExternalBaseModel, *, mode: Literal["python", "json"] = "python") -> Any:
    """The model's fields as a dict, like a plain ``BaseModel.model_dump()``; nothing is stored.

    External models inside it are expanded the same way, so the result is the whole tree's data
    and the call never does I/O (safe in ``async def`` code).

    Args:
        model: An external model instance.
        mode: ``"python"`` or ``"json"``, as in ``model_dump``.
    """
    with expanding():
        return model.__pydantic_serializer__.to_python(model, mode=mode)


class _Expand:
    """The ``Annotated`` marker behind :data:`Expanded`."""

    __slots__ = ()

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> cs.CoreSchema:
        schema = handler(source)
        model = handler.resolve_ref_schema(schema)
        ref = model.get("ref")
        if model.get("type") != "function-wrap" or ref is None:
            return schema  # not an external model: nothing to expand
        copy: dict[str, Any] = dict(model)
        name, _, suffix = ref.rpartition(":")
        # A ref of its own, so that the full schema gets its own name (OrderData) beside the
        # reference schema of the plain type.
        copy["ref"] = f"{name}Data:{suffix}"
        copy["metadata"] = {**(model.get("metadata") or {}), EXPANDED_KEY: True}
        # The model's own serializer stores it: serialize its fields instead, with nested
        # external models expanded too.
        fields = {key: value for key, value in model["schema"].items() if key != "serialization"}
        copy["schema"] = fields
        copy["serialization"] = cs.wrap_serializer_function_ser_schema(
            _serialize_expanded,
            schema=fields,
        )
        return copy


def _serialize_expanded(value: Any, handler: SerializerFunctionWrapHandler) -> Any:
    with expanding():
        return handler(value)


Expanded = Annotated[M, _Expand()]
"""``Expanded[Order]``: an ``Order`` that serializes as its full data, without being stored.

Use it as a route's return type (or a field) where clients need the data, not the reference::

    @app.get("/orders/{id}")
    async def get_order(order: LoadedOrder) -> Expanded[Order]:
        return order
"""
