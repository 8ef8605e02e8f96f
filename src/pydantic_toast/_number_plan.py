"""Which numbers a model's record can hold, decided per class from its core schema.

A save scans each record's JSON for integers that may not read back (19 digits in a row, see
``_fidelity``), and PostgreSQL scans it again for numbers ``jsonb`` would rewrite (floats, see
``backends.jsonb``). Both scans read every byte: for a 100 KB record of text, a millisecond
spent proving that the text holds no numbers. The schema proves it at once when every field is
simple: text, booleans, dates and times, UUIDs, ``Decimal`` (written as strings), floats, enums
and literals of such values, and lists, sets and ``dict[str, ...]`` of them. Integers in
``int`` fields and lists or sets of ``int`` are checked by value instead (C-speed ``min`` and
``max``), so a ``list[int]`` beside a long text does not cost a scan of the text.

The proof holds only if every value is of its field's type: fields are not validated on
assignment and ``model_construct`` validates nothing, and Pydantic writes a value of another
type as it finds it (with a warning). So a save checks the exact type of each field's value
(and of a container's items) first; any surprise, and the record is scanned as before. A class
with any other field (nested models, ``Any``, unions, tuples, functions...) or extra fields is
always scanned.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

__all__ = ["SCAN", "NumberPlan", "number_plan"]

# An integer below 10**18 in magnitude has at most 18 digits: the scan would not flag it.
_SMALL = 10**18
_INTS = frozenset({int})
_NONE = frozenset({type(None)})
# Leaf schemas, the exact types whose values they write without a number (float: as a float).
_LEAVES: dict[str, type] = {
    "str": str,
    "bool": bool,
    "none": type(None),
    "bytes": bytes,
    "uuid": UUID,
    "date": date,
    "datetime": datetime,
    "time": time,
    "timedelta": timedelta,
    "decimal": Decimal,
    "float": float,
}
_CONTAINERS: dict[str, type] = {"list": list, "set": set, "frozenset": frozenset}
_TEMPORAL_CONFIG = ("ser_json_temporal", "ser_json_timedelta")  # "iso8601", or numbers

# A field's check: (name, container type or None, value or item types, key types or None).
_Check = tuple[str, type | None, frozenset[type], frozenset[type] | None]


class NumberPlan:
    """What a class's records can hold, and how a save checks that values fit the plan.

    Attributes:
        scan: Whether every record is scanned for long integers (the schema cannot rule
            them out by the fields' types alone).
        worth_above: The size of JSON above which checking values beats scanning.
        floats: Whether a record can hold a float (``jsonb`` may rewrite it).
        ints: Fields of type ``int`` (or ``int | None``), checked by value.
        int_lists: Lists, sets and frozensets of ``int``, checked by value.
        typed: The other fields, each with the exact types its value (or items) may have.
    """

    __slots__ = (
        "containers",
        "floats",
        "int_lists",
        "ints",
        "kinds",
        "scan",
        "typed",
        "worth_above",
    )

    def __init__(
        self,
        scan: bool,
        floats: bool,
        ints: tuple[str, ...] = (),
        int_lists: tuple[str, ...] = (),
        typed: tuple[_Check, ...] = (),
        kinds: tuple[type, ...] | None = None,
    ) -> None:
        self.scan = scan
        self.floats = floats
        self.ints = ints
        self.int_lists = int_lists
        self.typed = typed
        # The usual exact type of each value, in field order (one tuple comparison checks
        # them all), and the containers whose items are checked then.
        self.kinds = kinds
        self.containers = tuple(check for check in typed if check[1] is not None)
        # Checking values costs about what scanning a KB costs, plus a KB per field checked
        # one by one: below this size of JSON the scan is the cheaper proof.
        checked = len(ints) + len(int_lists) + len(self.containers)
        self.worth_above = 1024 * (1 + checked)

    def holds(self, values: dict[str, Any]) -> bool:
        """Whether ``values`` (a model's ``__dict__``) fit the plan: each value of its field's
        exact type, and integers of at most 18 digits. ``False``: scan the record."""
        if tuple(map(type, values.values())) != self.kinds:
            return self._holds_by_name(values)
        for name, _container, types, keys in self.containers:
            value = values[name]
            if keys is None:
                if not types.issuperset(map(type, value)):
                    return False
            elif not (keys.issuperset(map(type, value)) and types.issuperset(_types(value))):
                return False
        for name in self.ints:
            value = values[name]
            if not -_SMALL < value < _SMALL:
                return False
        return self._small_int_lists(values)

    def _holds_by_name(self, values: dict[str, Any]) -> bool:
        """:meth:`holds`, field by field (values of another type than usual, ``None``...)."""
        for name, container, types, keys in self.typed:
            value = values.get(name, _MISSING)
            kind = type(value)
            if container is None:
                if kind not in types:
                    return False
            elif kind is not container:
                if value is not None:
                    return False
            elif keys is None:
                if not types.issuperset(map(type, value)):
                    return False
            elif not (keys.issuperset(map(type, value)) and types.issuperset(_types(value))):
                return False
        for name in self.ints:
            value = values.get(name, _MISSING)
            if value is not None and (type(value) is not int or not -_SMALL < value < _SMALL):
                return False
        for name in self.int_lists:
            items = values.get(name, _MISSING)
            if items is not None and type(items) not in _INT_CONTAINERS:
                return False
        return self._small_int_lists(values)

    def _small_int_lists(self, values: dict[str, Any]) -> bool:
        for name in self.int_lists:
            items = values[name]
            if not items:
                continue
            if not _INTS.issuperset(map(type, items)):
                return False
            if not (min(items) > -_SMALL and max(items) < _SMALL):
                return False
        return True


_MISSING = object()


class _Unmatched:
    """The usual type of a field of several types: no value has it."""


_INT_CONTAINERS = frozenset({list, set, frozenset})


def _types(mapping: dict[Any, Any]) -> Iterable[type]:
    return map(type, mapping.values())


SCAN = NumberPlan(True, True)
"""The plan of a class whose fields are not all simple: scan every record."""


def number_plan(model: dict[str, Any]) -> NumberPlan:
    """The plan of a ``model`` core schema; :data:`SCAN` unless every field is simple."""
    config = model.get("config")
    if not isinstance(config, dict) or config.get("extra_fields_behavior") == "allow":
        return SCAN
    fields_schema = model.get("schema")
    if not isinstance(fields_schema, dict) or fields_schema.get("type") != "model-fields":
        return SCAN
    if fields_schema.get("extras_schema") is not None or "serialization" in fields_schema:
        return SCAN
    ints: list[str] = []
    int_lists: list[str] = []
    typed: list[_Check] = []
    kinds: list[type] = []
    floats = any(config.get(key, "iso8601") != "iso8601" for key in _TEMPORAL_CONFIG)
    for name, field in fields_schema.get("fields", {}).items():
        shape = _shape(field)
        if shape is None:
            return SCAN
        container, types, keys = shape
        floats = floats or float in types
        if container is not None:
            kinds.append(container)
        elif len(types - _NONE) == 1:
            kinds.append(next(iter(types - _NONE)))
        else:
            kinds.append(_Unmatched)  # (several types: checked by name)
        if types == _INTS | _NONE and keys is None:
            if container is None:
                ints.append(name)
            elif container is not dict:
                int_lists.append(name)
            else:
                return SCAN
            continue
        if int in types:
            return SCAN  # ints among other types: not worth a plan
        typed.append((name, container, types, keys))
    return NumberPlan(False, floats, tuple(ints), tuple(int_lists), tuple(typed), tuple(kinds))


def _shape(field: object) -> tuple[type | None, frozenset[type], frozenset[type] | None] | None:
    """``(container, value or item types, key types)`` of a simple field, else ``None``.

    ``None`` is always among the types, and allowed in place of a container: it is written as
    ``null``, never as a number (a field that does not accept it is Pydantic's concern).
    """
    node = _unwrapped(field)
    if node is None:
        return None
    kind = node.get("type")
    container = _CONTAINERS.get(kind) or (dict if kind == "dict" else None)  # type: ignore[arg-type]
    keys = None
    if container is dict:
        key_node = _unwrapped(node.get("keys_schema"))
        if key_node is None or key_node.get("type") != "str":
            return None
        keys = frozenset({str})
        node = _unwrapped(node.get("values_schema"))
    elif container is not None:
        node = _unwrapped(node.get("items_schema"))
    if node is None:
        return None
    types = _leaf(node)
    if types is None:
        return None
    return container, types | _NONE, keys


def _unwrapped(node: object) -> dict[str, Any] | None:
    """``node`` without ``model-field``, ``default`` and ``nullable`` wrappers; ``None`` for a
    node with a serializer of its own (or none at all)."""
    while isinstance(node, dict) and "serialization" not in node:
        kind = node.get("type")
        if kind == "model-field":
            if node.get("serialization_exclude_if"):
                return None
        elif kind not in ("default", "nullable"):
            return node
        node = node.get("schema")
    return None


def _leaf(node: dict[str, Any]) -> frozenset[type] | None:
    """The exact types a leaf schema's values may have (none of them writes a long int)."""
    kind = node.get("type")
    leaf = _LEAVES.get(kind)  # type: ignore[arg-type]
    if leaf is not None:
        return frozenset({leaf})
    if kind == "int":
        return _INTS
    if kind == "enum":
        members = node.get("members", ())
        cls = node.get("cls")
        if not isinstance(cls, type) or not all(_plain_value(m.value) for m in members):
            return None
        return frozenset({cls})
    if kind == "literal":
        expected = node.get("expected", ())
        if not all(_plain_value(value) for value in expected):
            return None
        return frozenset(type(value) for value in expected)
    return None


def _plain_value(value: object) -> bool:
    """A str, bool or None (an enum's or literal's value written without a number)."""
    return value is None or type(value) is str or type(value) is bool
