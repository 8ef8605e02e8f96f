"""The stored names of the classes whose records hold mappings whose key order is data.

An ``OrderedDict`` compares its keys' order: PostgreSQL's ``jsonb`` keeps an object's keys
sorted its own way, so one read back from it was unequal to the one saved. The records of such
classes keep their exact JSON text beside the ``jsonb`` (see ``backends.jsonb``), as records
with numbers ``jsonb`` would rewrite do. Decided per class when it is defined, from its schema:
a save of any other class pays nothing. The other backends store the JSON text as it is.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pydantic_toast._schema_walk import schema_nodes

__all__ = ["KEY_ORDER_KEPT", "note_key_order"]

KEY_ORDER_KEPT: set[str] = set()
"""The stored class names whose records hold a mapping whose key order is data."""


def note_key_order(cls: type[Any]) -> None:
    """Add ``cls``'s stored name to :data:`KEY_ORDER_KEPT` if its fields can hold an
    ``OrderedDict``, at any depth (external models nested in it are records of their own)."""
    schema = cls.__dict__.get("__pydantic_core_schema__")
    if not isinstance(schema, dict):
        return  # not complete yet (forward references): noted when it is
    if any(_orders_keys(node) for node in schema_nodes(schema, descend=_inside(cls))):
        KEY_ORDER_KEPT.add(cls.model_config.get("external_name", cls.__name__))


def _orders_keys(node: dict[str, Any]) -> bool:
    """Whether schema ``node`` validates into an ``OrderedDict``: its own schema type, or (before
    Pydantic 2.12) a dict schema followed by the ``OrderedDict`` class."""
    if node.get("type") == "ordered-dict":
        return True
    function = node.get("function")
    return isinstance(function, dict) and function.get("function") is OrderedDict


def _inside(cls: type[Any]) -> Any:
    def descend(node: dict[str, Any]) -> bool:
        model = node.get("cls") if node.get("type") == "model" else None
        return model is None or model is cls or not hasattr(model, "__toast_settings__")

    return descend
