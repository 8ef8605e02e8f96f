"""Field types no value of which could be stored faithfully, refused when the class is defined.

Whatever value such a field holds, the record could not come back as it went in: an
``Iterable`` is validated into a one-pass iterator (a save consumes it), a ``Callable`` or an
arbitrary class (``arbitrary_types_allowed``) has no JSON form Pydantic writes or reads back.
Refusing them at the first save made the model's definition look like the caller's mistake
(FastAPI answered 422); refused here, the class is never created. Time constraints
(``FutureDatetime``, ``PastDate``...) are left out when a record is loaded (see
``_data_schema``), except inside a plain model or dataclass nested in the record, whose own
validator Pydantic reuses as it is: those are refused here too, in any member of a union.

A field that can hold a storable value is left to the save, which refuses an unstorable value
when one is there: a nullable field (``Callable[[], int] | None = None``), or a union with a
storable member. Refused here is a union all of whose members are unstorable.

An enum or a ``Literal`` with a value JSON does not give back (a tuple comes back a list, a
datetime, a ``Decimal`` or bytes a str) is refused wherever it appears, in a union too: its
member (or, with ``use_enum_values``, its value) is written, and no load could find it again.
Whether each value reads back is asked of Pydantic itself (a ``_missing_`` of the enum's may
bring it back). Integer values are left to
the save, which validates back any record holding a number of 19 digits or more (an ``IntEnum``
member beyond 64 bits beside members within, see ``_fidelity``).

What a user's function decides is theirs: a field under a serializer or a wrap or plain
validator of the user's, and a field excluded from dumps with a default (not data), are not
looked into. Nested external models are stored as records of their own and checked with their
own class.
"""

from __future__ import annotations

from enum import Enum
from typing import Any
from weakref import WeakKeyDictionary

from pydantic_core import (
    PydanticSerializationError,
    SchemaSerializer,
    SchemaValidator,
    core_schema,
)

from pydantic_toast._exceptions import StorageConfigurationError
from pydantic_toast._schema_walk import schema_nodes

__all__ = ["TIME_KEYS", "check_storable"]

TIME_KEYS = ("now_op", "now_utc_offset")
"""The keys of a date or datetime core schema that compare it with the current time."""

_ONE_PASS = (
    "is an Iterable (or Generator), which Pydantic validates into a one-pass iterator: a save "
    "would consume it and the next one store it empty. Type it list[...] or Sequence[...]"
)
_NO_JSON = (
    "has no JSON form that Pydantic both writes and reads back ({what}), so no value of it can "
    "be stored. Give it a type with a JSON form, or annotate it with a PlainSerializer and a "
    "BeforeValidator that convert it, or, if it is not data, give it a default and "
    "Field(exclude=True)"
)
_TIMED = (
    "holds {model}, whose own validator checks a time constraint (FutureDatetime, "
    "PastDate...) that Pydantic would check again at every load: once the time passed, the "
    "stored record could never be loaded. Make {model} an ExternalBaseModel (a record's own "
    "fields are loaded with such constraints left out), or declare its field as datetime or "
    "date and check the constraint where values are entered"
)
_UNREAD_CHOICE = (
    "is {what}, whose value {value!r} is written as {written}, which Pydantic does not read "
    "back as that value: a record holding it would be saved and could never be loaded. Give "
    "the {kind} str or int values, or declare the field with the values' own type "
    "({shown} and the like), which reads them back"
)
# What a user's function decides, which this check does not second-guess.
_USERS = frozenset({"function-wrap", "function-plain"})
_CLASSES = frozenset({"model", "dataclass"})
_CHOICES = frozenset({"enum", "literal"})
# Keys of an enum or literal schema node left out of the one built to check its values.
_NOT_CHOICE = frozenset({"ref", "serialization", "metadata"})
# The answer for each enum class met (None: its values read back).
_ENUMS_ANSWERED: WeakKeyDictionary[type, str | None] = WeakKeyDictionary()
# Schemas whose values may be of several kinds, one of them storable though others are not.
_ALTERNATIVES = frozenset({"nullable", "union", "tagged-union"})


def check_storable(cls: type[Any]) -> None:
    """Refuse ``cls`` if one of its fields can never be stored as it is.

    Raises:
        StorageConfigurationError: Naming the class, the field, the problem and the fix.
    """
    schema = cls.__dict__.get("__pydantic_core_schema__")
    if not isinstance(schema, dict):
        return  # not complete yet (forward references): checked when it is
    definitions = {
        node["ref"]: node
        for holder in schema_nodes(schema)
        if holder.get("type") == "definitions"
        for node in holder.get("definitions", [])
        if isinstance(node, dict) and "ref" in node
    }
    fields = _own_fields(schema, cls, definitions)
    cleared: set[type] = set()  # plain classes walked already, found storable
    for name, field in fields.items():
        if not isinstance(field, dict) or _not_data(field):
            continue
        problem = _problem(field.get("schema"), definitions, cleared)
        if problem is not None:
            raise StorageConfigurationError(
                f"{cls.__qualname__} cannot be stored: field {name!r} {problem}"
            )


def _own_fields(
    schema: dict[str, Any], cls: type[Any], definitions: dict[str, Any]
) -> dict[str, Any]:
    """The ``fields`` of ``cls``'s own model-fields node in its core ``schema``."""
    for node in schema_nodes(schema, definitions=definitions):
        if node.get("type") == "model" and node.get("cls") is cls:
            inner = node.get("schema", {})
            if isinstance(inner, dict) and inner.get("type") == "model-fields":
                return inner.get("fields", {})  # type: ignore[no-any-return]
    return {}


def _not_data(field: dict[str, Any]) -> bool:
    """Whether a field is excluded from dumps and has a default: not data (see _data_schema)."""
    inner = field.get("schema", {})
    return bool(field.get("serialization_exclude")) and inner.get("type") == "default"


def _problem(schema: object, definitions: dict[str, Any], cleared: set[type]) -> str | None:
    """Why no value of core ``schema`` can be stored, or ``None``; the plain classes in
    ``cleared`` are not walked again, those found storable are added to it."""
    problem = _unwritable(schema, definitions, cleared, {})
    if problem is not None:
        return problem
    nested: list[dict[str, Any]] = []

    def descend(node: dict[str, Any]) -> bool:
        return _looked_into(node) and node.get("cls") not in cleared

    for node in schema_nodes(schema, definitions=definitions, descend=descend):
        if node.get("type") in _CLASSES and not hasattr(node.get("cls"), "_toast_serialize"):
            nested.append(node)
        elif node.get("type") in _CHOICES and not _serialized_by_user(node):
            problem = _unread_choice(node)
            if problem is not None:
                return problem
    # Any member of a union counts here: the save-time checks cannot see a time constraint,
    # and a value stored through it would stop loading once its time passed.
    for node in nested:
        if _times_itself(node, definitions):
            return _TIMED.format(model=node["cls"].__qualname__)
    cleared.update(node["cls"] for node in nested)
    return None


def _unwritable(
    schema: object,
    definitions: dict[str, Any],
    cleared: set[type],
    alternatives: dict[int, str | None],
) -> str | None:
    """Why no value of core ``schema`` has a JSON form that reads back, or ``None``.

    A nullable schema always has one (``None``), a union when one of its members has: which
    value a field holds is known at save, where such a value is refused (``alternatives``:
    the unions and nullables decided, by ``id``, so that a recursive type ends).
    """
    found: list[dict[str, Any]] = []

    def descend(node: dict[str, Any]) -> bool:
        if not _looked_into(node) or node.get("cls") in cleared:
            return False
        if node.get("type") in _ALTERNATIVES:
            found.append(node)
            return False
        return True

    for node in schema_nodes(schema, definitions=definitions, descend=descend):
        problem = _unwritable_node(node)
        if problem is not None:
            return problem
    for node in found:
        if id(node) not in alternatives:
            alternatives[id(node)] = None  # met again inside itself: decided by the others
            members = _members(node)
            problems = [_unwritable(item, definitions, cleared, alternatives) for item in members]
            if members and all(problems):
                alternatives[id(node)] = problems[0]
        if alternatives[id(node)] is not None:
            return alternatives[id(node)]
    return None


def _unwritable_node(node: dict[str, Any]) -> str | None:
    """Why no value of the schema ``node`` itself (not its children) can be stored."""
    kind = node.get("type")
    if _serialized_by_user(node):
        return None
    if kind == "generator":
        return _ONE_PASS
    if kind == "callable":
        return _NO_JSON.format(what="a Callable")
    if kind in ("is-instance", "is-subclass"):
        shown = getattr(node.get("cls"), "__qualname__", "a class")
        what = f"any instance of {shown}" if kind == "is-instance" else f"type[{shown}]"
        return _NO_JSON.format(what=what)
    return None


def _unread_choice(node: dict[str, Any]) -> str | None:
    """Why enum or literal schema ``node`` has a value its JSON does not give back, or ``None``
    (an enum's answer is kept: the same enum is met in many classes).

    The values are written and read back by Pydantic, as a save and a load would, all in one
    list; one at a time only to find which failed. Integers are left to the save (see the
    module's docstring).
    """
    is_enum = node["type"] == "enum"
    if is_enum and node.get("cls") in _ENUMS_ANSWERED:
        return _ENUMS_ANSWERED[node["cls"]]
    values = [
        value
        for value in node.get("members" if is_enum else "expected", [])
        if not _left_to_the_save(value.value if isinstance(value, Enum) else value)
    ]
    schema: Any = {key: value for key, value in node.items() if key not in _NOT_CHOICE}
    problem = None
    if values and _read_back(core_schema.list_schema(schema), values) is not None:
        for value in values:
            written = _read_back(schema, value)
            if written is not None:
                problem = _UNREAD_CHOICE.format(
                    what=f"the enum {node['cls'].__qualname__}" if is_enum else "a Literal",
                    value=value,
                    written=written,
                    kind="enum" if is_enum else "Literal",
                    shown=type(value.value if isinstance(value, Enum) else value).__qualname__,
                )
                break
    if is_enum and isinstance(node.get("cls"), type):
        _ENUMS_ANSWERED[node["cls"]] = problem
    return problem


def _left_to_the_save(value: object) -> bool:
    """Whether ``value`` is an integer, which the save checks (see the module's docstring)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _read_back(schema: Any, value: Any) -> str | None:
    """``None`` when Pydantic reads ``value`` back from the JSON it writes of it with core
    ``schema`` (the same objects, or equal ones of the same types), else that JSON."""
    try:
        written = SchemaSerializer(schema, {"ser_json_inf_nan": "constants"}).to_json(value)
    except PydanticSerializationError:
        return "nothing"
    try:
        back = SchemaValidator(schema).validate_json(written, strict=False)
    except ValueError:
        return written.decode()
    if _same(back, value):
        return None
    return written.decode()


def _same(back: Any, value: Any) -> bool:
    if isinstance(value, list):
        return len(back) == len(value) and all(map(_same, back, value))
    return back is value or (type(back) is type(value) and back == value)


def _members(node: dict[str, Any]) -> list[Any]:
    """The member schemas of a union or tagged union; none for a nullable (``None`` is one)."""
    kind = node.get("type")
    if kind == "union":
        return [c[0] if isinstance(c, tuple) else c for c in node.get("choices", [])]
    if kind == "tagged-union":
        return list(node.get("choices", {}).values())
    return []


def _looked_into(node: dict[str, Any]) -> bool:
    """Whether the walk goes below ``node``: not below what a user's function decides, a
    nested external model (checked with its own class) or a field that is not data."""
    kind = node.get("type")
    if kind in _USERS or _serialized_by_user(node):
        return False
    if kind in ("json-or-python", "lax-or-strict"):
        return False  # Pydantic's own types choosing by input: their JSON side is theirs
    if kind in _CLASSES and hasattr(node.get("cls"), "_toast_serialize"):
        return False
    if kind in ("model-field", "dataclass-field", "typed-dict-field"):
        return not _not_data(node)
    return True


def _serialized_by_user(node: dict[str, Any]) -> bool:
    """Whether a function of the user's writes ``node``'s values. Pydantic's own (the one
    ``use_enum_values`` puts around an enum of tuples, say) is not the user's: the values under
    it are checked as any others."""
    serialization = node.get("serialization")
    if not isinstance(serialization, dict) or serialization.get("type") not in _USERS:
        return False
    module = getattr(serialization.get("function"), "__module__", None) or ""
    return not module.startswith("pydantic.")


def _times_itself(model: dict[str, Any], definitions: dict[str, Any]) -> bool:
    """Whether the plain model or dataclass schema ``model`` checks a time constraint in its
    own fields (a model or dataclass inside it is another such class, asked on its own)."""

    def inside(node: dict[str, Any]) -> bool:
        return node is model or node.get("type") not in _CLASSES

    return any(
        any(key in node for key in TIME_KEYS)
        for node in schema_nodes(model, definitions=definitions, descend=inside)
    )
