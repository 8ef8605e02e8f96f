"""Change tracking's fast path: the field values a record was written from, compared by identity.

An unchanged dump must cost no I/O, and should not cost a serialization either. After a
model's JSON was written (or found unchanged), its :class:`Fingerprint` keeps the very objects
its fields held then. The next dump compares the fields with them by identity (``is``): the same
immutable objects serialize to the same JSON, so the dump returns the reference at once.

Every field is compared on every dump, not only after an assignment seen by ``__setattr__``: a
write that goes around the model (``object.__setattr__``, ``model.__dict__[...]``, ``__init__``
run again, a frozen model's fields) is a change too, and a dirty flag set in ``__setattr__``
would miss it (the comparison costs about 4,000 instructions at 10 fields, a save 170,000).

Only what identity can vouch for gets a fingerprint; anything else is serialized and compared as
before:

* values: ``str``, ``int``, ``float``, ``bool``, ``None``, ``bytes``, ``Decimal``, ``UUID``,
  ``date``, ``timedelta``, ``datetime`` and ``time`` (naive, or with a ``timezone``,
  ``ZoneInfo`` or Pydantic's ``TzInfo``), enum members with such a value, tuples and
  frozensets of these; and lists and dicts of these (their items are kept too: a list
  appended to is a change). Sets, nested lists, plain models and anything else mutable mean
  "serialize";
* exact types only (a ``str`` subclass may carry state the serializer reads);
* classes of at most 32 fields, at most 6 of them lists, dicts, datetimes or others checked one
  by one: beyond that taking the fingerprint, done field by field in Python, costs a good part
  of what Pydantic's serializer (Rust) takes, and would slow every save down (checking all the
  lists at once with ``map`` and ``chain`` was measured slower still at 10 and 100 fields);
* classes whose schema has no ``exclude_if`` and no serializer function of its own (either may
  read state outside the fields; computed fields may too, but stored data leaves them out);
  extra fields set on the instance always mean "serialize".

A save takes the fingerprint before serializing, and the same look at the values' types tells
it whether to trust them (see :func:`fingerprint`): each value of an exact type its field writes
as is (:mod:`._field_types`) and every integer of at most 18 digits. A trusted save skips
Pydantic's type check (``warnings="error"``, 9,400 instructions a call) and the scan for long
integers (7,700 at 300 bytes); the check costs about what the fingerprint cost alone. What change
tracking learns of a class (its fields' types, the layouts of the value types met) is kept in
its :class:`Tracking`, built once per core schema with the class's ``DataSchema``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum
from operator import is_, itemgetter
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from pydantic_core import TzInfo

from pydantic_toast._field_types import FieldTypes
from pydantic_toast._schema_walk import schema_nodes

__all__ = [
    "Fingerprint",
    "LoadLayout",
    "Shape",
    "Tracking",
    "fingerprint",
    "load_layout",
    "loaded",
    "loads_as_stored",
    "unchanged",
]

_ATOMS: frozenset[type] = frozenset(
    {str, int, float, bool, type(None), bytes, Decimal, UUID, date, timedelta}
)
_ZONES = (timezone, ZoneInfo, TzInfo)  # fixed offsets and IANA zones (TzInfo: Pydantic's)

Shape = tuple[int, tuple[int, ...], tuple[int, ...]]
"""How to read a :data:`Fingerprint`: ``(fields, list positions, dict positions)``."""

Fingerprint = tuple[Any, ...]
"""One flat tuple: the field values in field order, then each list's length and items, each
dict's length, keys and values, and last the :data:`Shape` saying where they are. One object
for the garbage collector per instance, whatever its lists and dicts (a tuple per container,
and two more, made a batch load of 10,000 records track 40,000 objects more at 10 fields)."""


class Tracking:
    """What change tracking knows of a class of core ``schema`` and fields ``names`` (built once
    per schema, see ``_data_schema``).

    Attributes:
        values: Reads a model's ``__dict__`` into its field values, in field order, by name
            (``KeyError`` for a missing field), whatever the order of the dict.
        types: Each field's :data:`._field_types.FieldTypes` when a save can trust values of
            those types as they are, else ``None``.
        plain: Whether the class's schema has no ``exclude_if`` and no serializer function of
            its own (else no fingerprint).
        layouts: What was learnt per tuple of value types met (see :func:`fingerprint`).
        wide: Whether the class has too many fields, or fields to check, for a fingerprint.
    """

    __slots__ = ("layouts", "plain", "types", "values", "wide")

    def __init__(
        self, schema: object, names: tuple[str, ...], types: tuple[FieldTypes, ...] | None
    ) -> None:
        self.values: Callable[[dict[str, Any]], tuple[Any, ...]]
        if len(names) > 1:
            self.values = itemgetter(*names)
        else:  # itemgetter of one name gives the value itself, not a tuple
            self.values = lambda values: tuple(values[name] for name in names)
        self.types = types
        self.plain = isinstance(schema, dict) and _plain_serialization(schema)
        self.layouts: dict[tuple[type, ...], _Known] = {}
        self.wide = len(names) > _MAX_FIELDS


def fingerprint(model: Any, tracking: Tracking | None) -> tuple[Fingerprint | None, bool]:
    """``model``'s fingerprint now (``None`` when identity cannot vouch for its fields), and
    whether the save can trust its values as they are.

    Trusted values (``True``) are each of an exact type its field writes as is (see
    :mod:`._field_types`; lists' and dicts' items too) and their integers have at most 18
    digits: the save needs neither Pydantic's type check nor the scan for long integers.
    Telling costs little more than the fingerprint, which looks at the same types.
    """
    if tracking is None or tracking.wide:
        return None, False
    fields = model.__dict__
    try:  # by name: each value is checked against its own field's types, whatever the order
        values = tracking.values(fields)
    except KeyError:  # a field deleted from __dict__: Pydantic's check explains
        return None, False
    kinds = tuple(map(type, values))
    known = tracking.layouts.get(kinds)
    if known is None:
        known = _learn(tracking, kinds)
    layout, typed, shape = known
    if layout is None or len(values) != len(fields) or model.__pydantic_extra__:
        return None, False
    if typed is None:
        return (_taken(values, shape) if _atoms(values, layout) else None), False
    lists, dicts, zoned, ints = typed
    trusted = True
    for index in ints:
        if not _LOWEST <= values[index] <= _HIGHEST:
            trusted = False
    vouched = True
    for index in zoned:
        zone = values[index].tzinfo
        if zone is not None and type(zone) not in _ZONES:
            vouched = False  # a tzinfo of the user's: its offsets are its own to change
    for index, types, numbers in lists:
        items = values[index]
        if not types.issuperset(map(type, items)):
            return None, False  # Pydantic's check names the item
        if numbers and items and not _LOWEST <= min(items) <= max(items) <= _HIGHEST:
            trusted = False
    for index, types, numbers in dicts:
        mapping = values[index]
        if not (_STR.issuperset(map(type, mapping)) and types.issuperset(_types(mapping))):
            return None, False
        held = mapping.values()
        if numbers and held and not _LOWEST <= min(held) <= max(held) <= _HIGHEST:
            trusted = False
    return (_taken(values, shape) if vouched else None), trusted


def _types(mapping: dict[Any, Any]) -> Iterable[type]:
    return map(type, mapping.values())


def _taken(values: Iterable[Any], shape: Shape) -> Fingerprint:
    """The :data:`Fingerprint` of field ``values`` (their lists and dicts where ``shape`` says).

    ``values`` in field order, a tuple or a dict's values as they are (a batch load takes one
    per record: no tuple of them first).
    """
    _, lists, dicts = shape
    if not (lists or dicts):
        return (*values, shape)
    parts = [*values]
    if not dicts and len(lists) == 1:  # one tuple built at once: no calls of list methods
        items = parts[lists[0]]
        return (*parts, len(items), *items, shape)
    for index in lists:
        items = parts[index]
        parts.append(len(items))
        parts += items
    for index in dicts:
        mapping = parts[index]
        parts.append(len(mapping))
        parts += mapping
        parts += mapping.values()
    parts.append(shape)
    return tuple(parts)


def _atoms(values: tuple[Any, ...], layout: _Layout) -> bool:
    """Whether values of any types are all atoms (checked one by one where ``layout`` says)."""
    lists, dicts, zoned, others = layout
    for index in zoned:
        zone = values[index].tzinfo
        if zone is not None and type(zone) not in _ZONES:
            return False
    for index in others:
        if not _is_atom(values[index]):
            return False
    for index in lists:
        items = values[index]
        if not _ATOMS.issuperset(map(type, items)) and not all(map(_is_atom, items)):
            return False
    for index in dicts:
        mapping = values[index]
        if not (_all_atoms(mapping) and _all_atoms(mapping.values())):
            return False
    return True


_Layout = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""Positions of the lists, the dicts, the datetimes and times, and the other values to check."""
_TypedLayout = tuple[
    tuple[tuple[int, frozenset[type], bool], ...],
    tuple[tuple[int, frozenset[type], bool], ...],
    tuple[int, ...],
    tuple[int, ...],
]
"""Where values of their fields' types need a look: the lists and the dicts (with their items'
types, and whether those are ints), the datetimes and times, and the ints."""
_Known = tuple[_Layout | None, _TypedLayout | None, Shape]
"""What was learnt for some value types: the layout (``None``: no fingerprint), the typed
layout (``None``: the values are not all of types their fields write as is) and the shape of
their fingerprints."""
_LAYOUTS_KEPT = 64  # distinct value types remembered per class; then relearnt
_MAX_FIELDS = 32
_MAX_CHECKED = 6  # lists, dicts, datetimes and other values checked one by one
_ZONED = frozenset({datetime, time})
_DEEP = frozenset({tuple, frozenset})
# The ints of at most 18 digits (the scan for long integers flags 19).
_LOWEST, _HIGHEST = 1 - 10**18, 10**18 - 1
_STR = frozenset({str})
_INT = frozenset({int})


def _learn(tracking: Tracking, kinds: tuple[type, ...]) -> _Known:
    layout: _Layout | None = None
    typed: _TypedLayout | None = None
    shape: Shape = (len(kinds), (), ())
    if tracking.plain:
        lists = tuple(i for i, kind in enumerate(kinds) if kind is list)
        dicts = tuple(i for i, kind in enumerate(kinds) if kind is dict)
        zoned = tuple(i for i, kind in enumerate(kinds) if kind in _ZONED)
        others = tuple(
            i
            for i, kind in enumerate(kinds)
            if kind not in _ATOMS and kind not in _ZONED and kind is not list and kind is not dict
        )
        if len(lists) + len(dicts) + len(zoned) + len(others) > _MAX_CHECKED:
            # A fingerprint would cost a good part of a save (checked field by field in Python,
            # where serializing is Pydantic's Rust): this class's dumps compare JSON instead.
            tracking.wide = True
            tracking.layouts.clear()
            return None, None, (0, (), ())
        if all(kinds[i] in _DEEP or issubclass(kinds[i], Enum) for i in others):
            layout = (lists, dicts, zoned, others)
            shape = (len(kinds), lists, dicts)
        if layout is not None and tracking.types is not None:
            typed = _typed_layout(kinds, tracking.types, layout)
    if len(tracking.layouts) >= _LAYOUTS_KEPT:
        tracking.layouts.clear()
    known = tracking.layouts[kinds] = (layout, typed, shape)
    return known


def _typed_layout(
    kinds: tuple[type, ...], fields: tuple[FieldTypes, ...], layout: _Layout
) -> _TypedLayout | None:
    """The typed layout of values of ``kinds``, when each is a type its field writes as is."""
    if len(kinds) != len(fields):
        return None
    if not all(kind in field[0] for kind, field in zip(kinds, fields, strict=True)):
        return None
    lists, dicts, zoned, _ = layout
    for index in lists + dicts:
        items = fields[index][1]
        if not _ZONED.isdisjoint(items) or (int in items and items != _INT):
            return None  # items whose zones, or None among ints, would need a look one by one
    return (
        tuple((i, fields[i][1], int in fields[i][1]) for i in lists),
        tuple((i, fields[i][1], int in fields[i][1]) for i in dicts),
        zoned,
        tuple(i for i, kind in enumerate(kinds) if kind is int),
    )


def unchanged(model: Any, print_: Fingerprint) -> bool:
    """Whether ``model``'s fields are still the objects ``print_`` kept (lists and dicts too)."""
    count, lists, dicts = print_[-1]
    current = model.__dict__
    if len(current) != count or model.__pydantic_extra__:
        return False
    if not (lists or dicts):
        return all(map(is_, current.values(), print_))  # map stops with the dict's values
    # One walk along the fingerprint: map takes from its first iterable first, so each
    # comparison stops at the end of the dict or container without taking the next item.
    kept = iter(print_)
    if not all(map(is_, current.values(), kept)):
        return False
    for index in lists:
        items = print_[index]
        if len(items) != next(kept) or not all(map(is_, items, kept)):
            return False
    for index in dicts:
        mapping = print_[index]
        if len(mapping) != next(kept) or not all(map(is_, mapping, kept)):
            return False
        if not all(map(is_, mapping.values(), kept)):
            return False
    return True


def _all_atoms(items: Iterable[object]) -> bool:
    # issuperset of a map: no set built, about half the instructions of ``set(...) <= _ATOMS``
    return _ATOMS.issuperset(map(type, items)) or all(map(_is_atom, items))


def _is_atom(value: object) -> bool:
    kind = type(value)
    if kind in _ATOMS:
        return True
    if kind is datetime or kind is time:
        zone = value.tzinfo  # type: ignore[attr-defined]
        return zone is None or type(zone) in _ZONES
    if isinstance(value, Enum):
        return type(value.value) in _ATOMS
    if kind is tuple or kind is frozenset:
        return _all_atoms(value)  # type: ignore[arg-type]
    return False


LoadLayout = Shape
"""The :data:`Shape` of the fingerprints of a class whose loads are vouched."""


def load_layout(model: dict[str, Any], definitions: list[Any]) -> LoadLayout | None:
    """Where the lists and dicts of a loaded instance sit, when its fingerprint needs no check.

    ``model`` is the ``model`` core schema of a class that loads as stored (see
    :func:`loads_as_stored`, the caller's check). It qualifies when each field's type only
    ever validates into what a fingerprint vouches for: atoms (str, int, float, bool, None,
    bytes, Decimal, UUID, dates, times, durations, Literals and enums of atoms) and lists and
    dicts of atoms. A loaded
    instance's fingerprint is then its field values and its lists' and dicts' items, taken
    without a look at their types (see :func:`loaded`): about 3,000 instructions at 10 fields,
    where :func:`fingerprint` takes 15,000.
    """
    fields = model.get("schema", {})
    if fields.get("type") != "model-fields" or fields.get("extras_schema"):
        return None
    lists: list[int] = []
    dicts: list[int] = []
    refs = {d.get("ref"): d for d in definitions if isinstance(d, dict)}
    for index, field in enumerate(fields.get("fields", {}).values()):
        node = _unwrapped_field(field.get("schema"), refs)
        kind = node.get("type")
        if _atomic(node, refs):
            continue
        if kind == "list" and _atomic(_unwrapped_field(node.get("items_schema"), refs), refs):
            lists.append(index)
        elif (
            kind == "dict"
            and _atomic(_unwrapped_field(node.get("keys_schema"), refs), refs)
            and _atomic(_unwrapped_field(node.get("values_schema"), refs), refs)
        ):
            dicts.append(index)
        else:
            return None
    return len(fields.get("fields", {})), tuple(lists), tuple(dicts)


# Core schema types that validate into atoms (see _ATOMS).
_ATOM_KINDS = frozenset(
    {"str", "int", "float", "bool", "none", "bytes", "decimal", "uuid", "date", "time"}
).union({"datetime", "timedelta"})


def _unwrapped_field(node: object, refs: dict[Any, Any]) -> dict[str, Any]:
    for _ in range(8):
        if not isinstance(node, dict):
            return {}
        if node.get("type") == "definition-ref":
            node = refs.get(node.get("schema_ref"), {})
        elif node.get("type") == "default":
            node = node.get("schema")
        else:
            return node
    return {}


def _atomic(node: dict[str, Any], refs: dict[Any, Any]) -> bool:
    """Whether ``node`` only validates into atoms (a fingerprint's kind of value)."""
    kind = node.get("type")
    if kind in _ATOM_KINDS:
        return True
    if kind == "nullable":
        return _atomic(_unwrapped_field(node.get("schema"), refs), refs)
    if kind == "literal":
        return all(_is_atom(value) for value in node.get("expected", ()))
    if kind == "enum":
        return all(type(member.value) in _ATOMS for member in node.get("members", ()))
    return False


loaded: Callable[[Iterable[Any], LoadLayout], Fingerprint] = _taken
"""The fingerprint of a model just validated from stored JSON, given its ``__dict__``'s values
(see :func:`load_layout`): :func:`_taken` itself, a Python call less per loaded instance."""


def loads_as_stored(schema: object) -> bool:
    """Whether a class of core ``schema`` loads its stored JSON as Pydantic alone reads it.

    No function of the user's (validator, serializer, ``exclude_if``), no ``__init__`` of its
    own and no ``model_post_init``/``__post_init__`` anywhere in it: a loaded instance's
    fields then serialize to the JSON they were read from. The external models' own hooks do
    not count.
    """
    for node in schema_nodes(schema):
        if node.get("custom_init") or node.get("post_init") or node.get("serialization_exclude_if"):
            return False
        function = node.get("function")
        if isinstance(function, dict):  # a validator's: {"type": ..., "function": f}
            function = function.get("function")
        if function is not None and getattr(function, "__qualname__", None) not in _HOOKS:
            return False
    return True


_HOOKS = frozenset({"ExternalBaseModel._toast_validate", "ExternalBaseModel._toast_serialize"})


def _plain_serialization(schema: dict[str, Any]) -> bool:
    """No ``exclude_if`` and no serializer function but the external models' own hook.

    Computed fields may read anything, but stored data leaves them out (``round_trip``).
    """
    for node in schema_nodes(schema):
        if node.get("serialization_exclude_if"):
            return False
        serialization = node.get("serialization")
        if isinstance(serialization, dict) and str(serialization.get("type", "")).startswith(
            "function"
        ):
            function = serialization.get("function")
            if getattr(function, "__qualname__", None) != "ExternalBaseModel._toast_serialize":
                return False
    return True
