"""Full data on request: an external model's fields, serialized without storing it.

:func:`to_data` is the Python form; ``Expanded[Order]`` is the type form, for response models
(FastAPI documents it as the full schema, named ``OrderData``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, cast

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
        if not _is_external(model):
            return schema  # not an external model: nothing to expand
        data_ref = _data_ref(model["ref"])
        building = _building.get()
        if data_ref in building:  # a cycle: refer to the copy being built
            return cs.definition_reference_schema(data_ref)
        token = _building.set(building | {data_ref})
        try:
            return _expanded_copy(model, data_ref, handler)
        finally:
            _building.reset(token)


# The expanded copies being built (their refs): a model met again inside its own copy refers
# to it instead of recursing.
_building: ContextVar[frozenset[str]] = ContextVar(
    "pydantic_toast_expanding_schema", default=frozenset()
)


def _is_external(node: Any) -> bool:
    """Whether ``node`` is an external model's core schema (its wrap validator around it)."""
    if not isinstance(node, dict) or node.get("type") != "function-wrap" or "ref" not in node:
        return False
    inner = node.get("schema")
    cls = inner.get("cls") if isinstance(inner, dict) and inner.get("type") == "model" else None
    return isinstance(cls, type) and hasattr(cls, "_toast_settings")


def _data_ref(ref: str) -> str:
    # A ref of its own, so that the full schema gets its own name (OrderData) beside the
    # reference schema of the plain type.
    name, _, suffix = ref.rpartition(":")
    return f"{name}Data:{suffix}"


def _expanded_copy(
    model: Mapping[str, Any], data_ref: str, handler: GetCoreSchemaHandler
) -> cs.CoreSchema:
    """``model``'s schema, serializing (and documenting) its fields instead of its reference."""
    copy: dict[str, Any] = dict(model)
    copy["ref"] = data_ref
    copy["metadata"] = {**(model.get("metadata") or {}), EXPANDED_KEY: True}
    # The model's own serializer stores it: serialize its fields instead, with nested external
    # models expanded too (documented as their own <Model>Data).
    fields, _ = _expand_inside(
        {key: value for key, value in model["schema"].items() if key != "serialization"},
        handler,
        set(),
    )
    copy["schema"] = fields
    copy["serialization"] = cs.wrap_serializer_function_ser_schema(
        _serialize_expanded, schema=fields
    )
    return cast("cs.CoreSchema", copy)


def _expanded_schema(model: Mapping[str, Any], handler: GetCoreSchemaHandler) -> cs.CoreSchema:
    """``Expanded[<the schema's model>]``, generated (and kept as a definition) by Pydantic."""
    cls: Any = model["schema"]["cls"]
    return handler.generate_schema(Annotated[cls, _Expand()])


# Keys of core-schema nodes that hold no schema to rewrite.
_OPAQUE = frozenset(("metadata", "cls", "config", "function", "serialization", "ref"))


def _expand_inside(
    node: Any, handler: GetCoreSchemaHandler, visiting: set[str]
) -> tuple[Any, bool]:
    """``node`` with the external models inside it expanded, and whether anything changed.

    A nested external model becomes ``Expanded[thatModel]`` (Pydantic keeps it as a definition,
    so cycles resolve); a plain model holding one is copied under a ``<Model>Data`` ref, so that
    its copy never clashes with the original.
    """
    if isinstance(node, list):
        items = [_expand_inside(item, handler, visiting) for item in node]
        if not any(changed for _, changed in items):
            return node, False
        return [item for item, _ in items], True
    if not isinstance(node, dict):
        return node, False
    if node.get("type") == "definition-ref":
        ref = node["schema_ref"]
        if ref in visiting:
            return node, False  # a recursive plain model: left as it is
        target = handler.resolve_ref_schema(node)
        if _is_external(target):
            return _expanded_schema(target, handler), True
        visiting.add(ref)
        copy, changed = _expand_inside(target, handler, visiting)
        visiting.discard(ref)
        return (copy, True) if changed else (node, False)
    if _is_external(node):
        return _expanded_schema(node, handler), True
    copy = dict(node)
    changed = False
    for key, value in node.items():
        if key in _OPAQUE or not isinstance(value, dict | list):
            continue
        copy[key], moved = _expand_inside(value, handler, visiting)
        changed |= moved
    if not changed:
        return node, False
    if isinstance(copy.get("ref"), str):
        copy["ref"] = _data_ref(copy["ref"])
    return copy, True


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
