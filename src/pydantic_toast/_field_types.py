"""The exact types a class's fields may hold for a save to trust their values as they are.

A save asks Pydantic to fail on a value not of its field's type (``warnings="error"``), which
costs about 9,400 instructions a call whatever the model (the option's parsing, not the
check), and scans the JSON for integers of 19 digits. A save that sees every value is of an
exact type its field writes as is, and every integer short, needs neither (see
:func:`._fingerprint.fingerprint`). This module reads, once per class, which exact types those
are, from the schema the stored JSON is written with:

* ``str``, ``int``, ``float``, ``bool``, ``None``, ``bytes``, ``Decimal``, ``UUID``, ``date``,
  ``datetime``, ``time`` and ``timedelta`` fields, optional or not, and enums whose members'
  values are all ``str``;
* lists of these, and dicts of these with ``str`` keys (their items are checked per save).

Any other field (a nested model, ``Any``, a union, a tuple, a set, a ``Literal``, a
constrained value, whose check only fails in ``warnings="error"``), a field serializer, an
``exclude_if`` or a model serializer of the class's own, and the class gets no types: its saves
keep Pydantic's check and the scan.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

__all__ = ["FieldTypes", "save_types"]

FieldTypes = tuple[frozenset[type], frozenset[type], frozenset[type]]
"""``(value types, item types, key types)`` of one field: the exact types its value may have,
and, when one of them is ``list`` or ``dict``, those of the list's items or dict's values, and
of the dict's keys (else empty)."""

_LEAVES: dict[str, type] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "none": type(None),
    "bytes": bytes,
    "decimal": Decimal,
    "uuid": UUID,
    "date": date,
    "datetime": datetime,
    "time": time,
    "timedelta": timedelta,
}
_NONE: frozenset[type] = frozenset({type(None)})
_NOTHING: frozenset[type] = frozenset()


def save_types(
    schema: Any, names: Sequence[str], notes: Collection[object]
) -> tuple[FieldTypes, ...] | None:
    """Each field's :data:`FieldTypes`, in the order of ``names`` (the fields a save reads the
    values of, by name), for the model whose stored JSON core ``schema`` writes; ``None`` when
    a field is of another kind, or the schema's fields are not exactly ``names``.

    ``notes``: the serializer schemas the storage schema adds that only note what they see
    and hand the value on (see ``_data_schema``); any other serializer means no types.
    """
    definitions: dict[Any, Any] = {}
    if isinstance(schema, dict) and schema.get("type") == "definitions":
        definitions = {
            d.get("ref"): d for d in schema.get("definitions", ()) if isinstance(d, dict)
        }
        schema = schema.get("schema")
    if not isinstance(schema, dict) or schema.get("type") != "model" or "serialization" in schema:
        return None
    fields_schema = schema.get("schema")
    if not isinstance(fields_schema, dict) or fields_schema.get("type") != "model-fields":
        return None
    if "serialization" in fields_schema:
        return None
    by_name = fields_schema.get("fields", {})
    if len(by_name) != len(names):
        return None
    fields: list[FieldTypes] = []
    for name in names:  # by name: a value is never checked against another field's types
        field = by_name.get(name)
        if field is None or field.get("serialization_exclude_if") or "serialization" in field:
            return None
        types = _field_types(field.get("schema"), definitions, notes)
        if types is None:
            return None
        fields.append(types)
    return tuple(fields)


def _field_types(
    node: Any, definitions: dict[Any, Any], notes: Collection[object]
) -> FieldTypes | None:
    node, optional = _optional(node, definitions, notes)
    if node is None:
        return None
    kind = node.get("type")
    value: frozenset[type]
    items: frozenset[type] | None = _NOTHING
    keys = _NOTHING
    if kind == "list":
        value = frozenset({list})
        items = _leaf(node.get("items_schema"), definitions, notes)
    elif kind == "dict":
        value = frozenset({dict})
        keys = _leaf(node.get("keys_schema"), definitions, notes) or _NOTHING
        items = _leaf(node.get("values_schema"), definitions, notes)
        if keys != frozenset({str}):
            return None
    else:
        leaf = _leaf(node, definitions, notes)
        if leaf is None:
            return None
        value = leaf
    if items is None:
        return None
    return (value | _NONE if optional else value), items, keys


def _leaf(
    node: Any, definitions: dict[Any, Any], notes: Collection[object]
) -> frozenset[type] | None:
    """The exact types a leaf schema writes as is (an optional one: ``None`` too)."""
    node, optional = _optional(node, definitions, notes)
    if node is None:
        return None
    kind = node.get("type")
    leaf = _LEAVES.get(kind)
    types: frozenset[type]
    if leaf is not None:
        types = frozenset({leaf})
    elif kind == "enum":
        cls = node.get("cls")
        members = node.get("members", ())
        if not (isinstance(cls, type) and issubclass(cls, Enum) and members):
            return None
        if not all(type(member.value) is str for member in members):
            return None  # an int value could be a long one
        types = frozenset({cls})
    else:
        return None
    return types | _NONE if optional else types


def _optional(
    node: Any, definitions: dict[Any, Any], notes: Collection[object]
) -> tuple[dict[str, Any] | None, bool]:
    """``node`` unwrapped (see :func:`_unwrapped`), and through ``nullable`` when it is one:
    the inner schema, and whether it was."""
    node = _unwrapped(node, definitions, notes)
    if node is not None and node.get("type") == "nullable":
        return _unwrapped(node.get("schema"), definitions, notes), True
    return node, False


def _unwrapped(
    node: Any, definitions: dict[Any, Any], notes: Collection[object]
) -> dict[str, Any] | None:
    """``node`` without ``default`` wrappers and references; ``None`` when it, or a wrapper,
    has a serializer that is not one of ``notes``."""
    for _ in range(8):
        if not isinstance(node, dict):
            return None
        serializer = node.get("serialization")
        if serializer is not None and not any(serializer is note for note in notes):
            return None
        kind = node.get("type")
        if kind == "definition-ref":
            node = definitions.get(node.get("schema_ref"))
        elif kind == "default":
            node = node.get("schema")
        else:
            return node
    return None
