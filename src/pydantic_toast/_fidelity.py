"""Fidelity: what is stored comes back exactly, or is refused before anything is written.

Pydantic writes some values that it cannot read back: integers of more than 4,300 digits
(its JSON parser, like ``int(str)``, stops there) and ``IntEnum`` members outside the signed
64-bit range in an enum that also has members inside it. Both only occur with integers of at
least 19 digits, so a byte scan of the serialized record (a few hundred nanoseconds) decides
whether a record needs the real check: validating it back exactly as a load would.
Strings Pydantic cannot encode (lone surrogates) fail during serialization and are refused
here, naming the field (a dict key holding one is written changed instead: see
:data:`LOSSY_KEY`); so are datetimes and times whose UTC offset is not whole minutes, which
Pydantic writes rounded, and values inside ``Any`` fields that JSON would not give back as
themselves (both noted during serialization, see ``_data_schema``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Container, Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, get_args

import pydantic_core
from pydantic import BaseModel, ValidationError

from pydantic_toast._data_schema import OUTSIDE
from pydantic_toast._exceptions import StorageValidationError, StoredDataError
from pydantic_toast._schema_walk import schema_nodes

if TYPE_CHECKING:
    from pydantic_core import CoreSchema

    from pydantic_toast._model import ExternalBaseModel
    from pydantic_toast._records import StoredRecord

__all__ = [
    "CHECKING",
    "DIGITS_AS_ZERO",
    "LOSSY_BYTE",
    "LOSSY_KEY",
    "REUSED_UP_TO",
    "SHALLOW_UP_TO",
    "decode_stored",
    "describe_errors",
    "describe_value_errors",
    "digits_as_zero",
    "field_names",
    "is_too_long",
    "locate",
    "may_be_too_deep",
    "may_be_unreadable",
    "noted_refusal",
    "refused_extra",
    "serialization_refusal",
    "shown_path",
    "stored_field_names",
    "surrogate_key_refusal",
    "unreadable_nested_refusal",
    "unreadable_refusal",
]

# Every digit made "0" (and the exponent marker "E" made "e"): then one C-speed substring
# search finds a run of digits, or a digit followed by an exponent (see backends.jsonb).
DIGITS_AS_ZERO = bytes.maketrans(b"123456789E", b"000000000e")
# An integer of 19 digits or more can be beyond 63 bits. Strings with such digit runs match
# too: they only cost a validation.
_NINETEEN_DIGITS = b"0" * 19
_INT_DIGITS_LIMIT = 4300
LOSSY_KEY = "\ufffd\ufffd\ufffd".encode()
"""How Pydantic writes a lone surrogate in a dict key: its three UTF-8 bytes, each replaced by
U+FFFD (in a value it fails instead). Where the JSON of a class that can hold such keys holds
:data:`LOSSY_BYTE`, :func:`surrogate_key_refusal` looks further."""
LOSSY_BYTE = LOSSY_KEY[-1:]
"""The last byte of U+FFFD, rare in UTF-8 text: one byte, found with a memchr (about 0.1
instructions a byte, 700 a call at 300 bytes, where a search for :data:`LOSSY_KEY` costs 1,500
and ``bytes.isascii`` 0.9 a byte)."""
_SURROGATE = re.compile("[\ud800-\udfff]")
_DEPTH_LIMIT = 200  # jiter's recursion limit, Pydantic's JSON parser's
SHALLOW_UP_TO = 2 * _DEPTH_LIMIT
"""Bytes of JSON up to which a record cannot nest as deep as :func:`may_be_too_deep` asks."""
# Pydantic's name for a value that is not of its field's type (a warning, raised as an error).
_UNEXPECTED = "PydanticSerializationUnexpectedValue"
_UNVALIDATED = (
    "model_construct(), model_copy(update=...) and assignments without "
    "validate_assignment=True validate nothing: give the field a value of its type, or "
    "validate it (Model(...), Model.model_validate(...), validate_assignment=True)"
)
_UNREADABLE_FIX = (
    "Integers of more than 4,300 digits cannot be read back by Pydantic (store them as str or "
    "Decimal), nor IntEnum members outside the signed 64-bit range in an enum that also has "
    "members inside it, nor values nested more than 200 levels deep (Pydantic's JSON parser "
    "stops there)"
)


# The wrapping of an error raised inside a serializer the library adds (see _data_schema).
_OUR_CHECK = re.compile(
    r"(PydanticSerializationError: )?Error calling function `<pydantic_toast\.[^`]*`: "
)

# Set while a save checks that its records read back: a record that does not is refused then,
# not an alert about the data in the store.
CHECKING: ContextVar[bool] = ContextVar("pydantic_toast_checking", default=False)


def may_be_unreadable(data: bytes) -> bool:
    """Whether ``data`` may hold an integer that does not read back (19 digits in a row)."""
    # find, not ``in``: ``in`` formats and discards a TypeError first (2k instructions).
    return digits_as_zero(data).find(_NINETEEN_DIGITS) >= 0


def may_be_too_deep(data: bytes) -> bool:
    """Whether ``data`` may nest arrays and objects deeper than Pydantic's JSON parser reads.

    Its serializer writes values nested up to about 300 levels, its parser stops at 200: such a
    record was written and every load failed. Fewer than 200 brackets cannot nest that deep;
    with more, parsing the JSON alone (no validation) tells. Counting them costs about six
    instructions a byte: a save asks only for a class whose fields can nest at all (see
    ``_saving``).
    """
    if len(data) <= SHALLOW_UP_TO or data.count(b"[") + data.count(b"{") < _DEPTH_LIMIT:
        return False
    try:
        pydantic_core.from_json(data, cache_strings=False)
    except ValueError:
        return True
    return False


# The last record's translation: a save scans its JSON here, then a backend that checks numbers
# (PostgreSQL's jsonb) scans the same bytes object again. Translating 100 KB is a third of such
# a save's CPU work. One entry, swapped whole (a tuple), so threads never see half of it; only
# records up to REUSED_UP_TO bytes, the ones jsonb scans whole: a larger record's JSON and its
# translation would otherwise stay in memory after its save returned.
REUSED_UP_TO = 1 << 20
_last_translation: tuple[bytes, bytes] = (b"", b"")


def digits_as_zero(data: bytes) -> bytes:
    """``data`` with every digit as ``0`` and ``E`` as ``e`` (the last call's result is reused)."""
    last = _last_translation
    if last[0] is data:
        return last[1]
    digits = data.translate(DIGITS_AS_ZERO)
    _remember((data, digits) if len(data) <= REUSED_UP_TO else (b"", b""))
    return digits


def _remember(translation: tuple[bytes, bytes]) -> None:
    global _last_translation
    _last_translation = translation


class _TooLong:
    """Stands for an integer the JSON parser would refuse."""


def locate(data: bytes | str, predicate: Any, names: Container[str] | None) -> str | None:
    """The dotted path of the first value in JSON ``data`` for which ``predicate`` is true.

    Integers over the parser's digit limit are seen as :class:`_TooLong` instances, NaN and
    infinities as floats. A key not in ``names`` (the field names of the record's class, see
    :func:`field_names`) is a dict's, data: shown as ``<key>``; without ``names`` (no class of
    this process is stored under the record's name), every key below the top one is. Used
    only on error paths (it parses with the ``json`` module).
    """

    def parse_int(text: str) -> object:
        return _TooLong() if len(text.lstrip("-")) > _INT_DIGITS_LIMIT else int(text)

    try:
        value = json.loads(data, parse_int=parse_int)
    except ValueError:
        return None
    for path, item in _walk(value, ()):
        if predicate(item):
            shown = [
                str(key)
                if isinstance(key, int) or (key in names if names is not None else depth == 0)
                else DICT_KEY
                for depth, key in enumerate(path)
            ]
            return ".".join(shown) or None
    return None


def _walk(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield path, key
            yield from _walk(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, (*path, index))


def stored_field_names(class_name: str) -> frozenset[str] | None:
    """The :func:`field_names` of the model classes of this process stored as ``class_name``
    (several: a class defined again), or ``None`` when there is none. Error paths only."""
    from pydantic_toast._model import ExternalBaseModel

    names: set[str] = set()
    found = False
    stack: list[type[Any]] = [ExternalBaseModel]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        settings = getattr(cls, "__toast_settings__", None)
        if settings is not None and settings.external_name == class_name:
            found = True
            names |= field_names(cls.__pydantic_core_schema__)
    return frozenset(names) if found else None


def is_too_long(value: object) -> bool:
    """Whether ``value`` stands for an integer beyond the JSON parser's digit limit."""
    return isinstance(value, _TooLong)


def describe_errors(
    exc: ValidationError, data: bytes | str, cls: type[BaseModel]
) -> tuple[str, str | None]:
    """A short description of ``exc`` (no input values) and the first field it concerns.

    A location goes through the stored JSON ``data`` of a ``cls``: a key of an object there
    that no model, dataclass or TypedDict of ``cls``'s schema names as a field is a dict's
    key, the application's data, and is shown as ``<key>``.
    """
    try:
        decoded = pydantic_core.from_json(data, allow_inf_nan=True)
    except ValueError:
        decoded = None
    return describe_value_errors(exc, decoded, cls.__pydantic_core_schema__, data=data, record=True)


def describe_value_errors(
    exc: ValidationError,
    value: Any,
    schema: CoreSchema,
    *,
    data: bytes | str = b"",
    record: bool = False,
) -> tuple[str, str | None]:
    """:func:`describe_errors` of the stored ``value`` (decoded) validated with ``schema``.

    ``data``: the JSON text it was decoded from, which locates an integer too long to parse.
    ``record``: ``value`` is a record's fields, whose top keys are field names: one that
    ``extra='forbid'`` refuses is a field of an older version of the model, named when it is
    spelt as one (an identifier of at most 64 characters; a key a model with ``extra='allow'``
    once took from its users may be their data, and stays ``<key>``).
    """
    names = field_names(schema)
    field: str | None = None
    problems = []
    for error in exc.errors(include_input=False, include_url=False)[:5]:
        if record and error["type"] == _EXTRA and _field_like(error["loc"]):
            loc = str(error["loc"][0])
        else:
            loc = shown_path(error["loc"], value, names)
        if not loc and error["type"] == "json_invalid":
            loc = locate(data, is_too_long, names) or ""
            if loc:
                problems.append(f"{loc}: an integer of more than {_INT_DIGITS_LIMIT:,} digits")
                field = field or loc
                continue
        field = field or loc or None
        kind = error["type"]
        if kind in _QUOTING or kind not in _PYDANTICS:
            # A validator's own text (or a custom error's) may quote the value: its type only.
            message = f"a validator refused the stored value ({kind})"
        else:
            message = f"{error['msg']} ({kind})"
        problems.append(f"{loc or '<root>'}: {message}")
    return "; ".join(problems), field


def _field_like(loc: tuple[int | str, ...]) -> bool:
    """Whether the error location ``loc`` is one top key spelt as a field name."""
    return len(loc) == 1 and isinstance(loc[0], str) and len(loc[0]) <= 64 and loc[0].isidentifier()


def refused_extra(exc: ValidationError) -> int:
    """How many of ``exc``'s errors refuse a key the model does not have (``extra='forbid'``)."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return sum(error["type"] == _EXTRA for error in errors)


_EXTRA = "extra_forbidden"
DICT_KEY = "<key>"


def shown_path(loc: Sequence[int | str], value: Any, names: Container[str]) -> str:
    """``loc`` dotted, each key of a JSON object in ``value`` along it that is not in
    ``names`` (a dict's key: data) shown as ``<key>``.

    An item not found in ``value`` is Pydantic's own (a union member's label, ``[key]``, a
    missing field's name), from the schema: shown as it is.
    """
    parts = []
    for item in loc:
        if isinstance(value, dict) and item in value:
            parts.append(str(item) if item in names else DICT_KEY)
            value = value[item]
        elif isinstance(value, list) and isinstance(item, int) and -len(value) <= item < len(value):
            parts.append(str(item))
            value = value[item]
        else:
            parts.append(str(item))
    return ".".join(parts)


def field_names(schema: CoreSchema) -> frozenset[str]:
    """The field names and aliases of every model, dataclass and TypedDict in ``schema`` (the
    keys of stored JSON that are not data). Walked on error paths only."""
    names: set[str] = set()
    for node in schema_nodes(schema):
        fields = node.get("fields")
        if node.get("type") in ("model-fields", "typed-dict") and isinstance(fields, dict):
            named = [(name, field) for name, field in fields.items() if isinstance(field, dict)]
        elif node.get("type") == "dataclass-args" and isinstance(fields, list):
            named = [(field.get("name"), field) for field in fields if isinstance(field, dict)]
        else:
            continue
        for name, field in named:
            for alias in (name, field.get("validation_alias"), field.get("serialization_alias")):
                if isinstance(alias, str):
                    names.add(alias)
    return frozenset(names)


# Error types whose message is the application's text or quotes the input, and Pydantic's
# own (a message built from the schema's constraints, never from the input).
_QUOTING = frozenset(
    ("value_error", "assertion_error", "union_tag_invalid", "uuid_parsing", "get_attribute_error")
)
_PYDANTICS = frozenset(get_args(pydantic_core.core_schema.ErrorType))


def decode_stored(record: StoredRecord) -> Any:
    """The stored fields of ``record`` as Python values, refusing unreadable JSON clearly."""
    try:
        return pydantic_core.from_json(record.data, allow_inf_nan=True)
    except ValueError as exc:
        field = locate(record.data, is_too_long, stored_field_names(record.class_name))
        detail = (
            f"{field} holds an integer of more than {_INT_DIGITS_LIMIT:,} digits"
            if field
            else f"its JSON does not parse ({exc})"
        )
        raise StoredDataError(
            f"the stored {record.class_name} record {record.id} cannot be read: {detail}; it "
            "is left untouched: fix or delete it in the store",
            class_name=record.class_name,
            id=record.id,
            field=field,
        ) from None


def serialization_refusal(
    model: ExternalBaseModel, exc: pydantic_core.PydanticSerializationError
) -> StorageValidationError:
    """The refusal for a model that Pydantic cannot serialize to JSON, naming the field."""
    from pydantic_toast._data_schema import storage_serializer

    cls = type(model)
    serializer = storage_serializer(cls)
    field = None
    for name in cls.model_fields:
        try:
            serializer.to_json(
                model, include={name}, by_alias=False, round_trip=True, warnings="error"
            )
        except pydantic_core.PydanticSerializationError:
            field = name
            break
    where = f"field {field!r}" if field else "a field"
    cause = str(exc)
    if OUTSIDE in cause:
        message = (
            f"{cls.__qualname__} cannot be stored: {where} holds a value its type's constraints "
            "refuse (a value not among a Literal's, a bound such as gt=0, a length, a pattern, "
            "a timezone required or forbidden, or a str that to_lower or strip_whitespace "
            "would change), so it could not be read back as it is; nothing was written. "
            f"{_UNVALIDATED}"
        )
    elif _UNEXPECTED in cause:
        # Pydantic's message quotes the value (user data): only the types are repeated.
        expected = re.search(r"Expected `([^`]*)`", cause)
        found = re.search(r"input_type=(\w+)", cause)
        if expected and found and expected.group(1) == found.group(1):
            # A union member given its own type, refused for what it holds.
            what = (
                f"a {found.group(1)} holding a value of another type, or one its type's "
                "constraints refuse (in a field of its own, at any depth)"
            )
        elif expected and found:
            what = f"a value of type {found.group(1)} where {expected.group(1)} is expected"
        else:
            what = "a value of another type than the field's"
        message = (
            f"{cls.__qualname__} cannot be stored: {where} holds {what}, which Pydantic cannot "
            "write as the field's type, so it would not come back as it is; nothing was "
            f"written. {_UNVALIDATED}"
        )
    else:
        cause = cause.removeprefix("Error serializing to JSON: ")
        cause = _OUR_CHECK.sub("", cause)  # a failure inside one of the library's own checks
        cause = re.sub(r"character '[^']*'", "a character", cause)  # no user data in messages
        if "invalid utf-8" in cause:  # bytes: Pydantic writes them as UTF-8 text by default
            fix = (
                "bytes that are not UTF-8 text need ser_json_bytes='base64' and "
                "val_json_bytes='base64' in the model's config (records written before "
                "stay UTF-8: bump schema_version if the field holds some)"
            )
        elif "depth" in cause:
            fix = "Pydantic's JSON parser reads values nested 200 levels deep at most: nest less"
        elif "surrogate" in cause:
            fix = (
                "Lone surrogate characters (from undecodable bytes) cannot be stored: encode "
                "such data as bytes or clean the string"
            )
        else:
            fix = "Give the field a type whose values Pydantic can write as JSON"
        message = (
            f"{cls.__qualname__} cannot be stored: {where} cannot be written as JSON ({cause}); "
            f"nothing was written. {fix}"
        )
    return StorageValidationError(message, class_name=_name(cls), field=field)


def noted_refusal(model: ExternalBaseModel) -> StorageValidationError | None:
    """The refusal for a model whose serialization noted something (see
    ``_data_schema.noted``): a UTC offset with seconds, or a value an Any field would not give
    back. Its fields are serialized one by one to name the first that notes it; ``None`` when
    none does (the note was left by an earlier serialization that failed)."""
    from pydantic_toast._data_schema import (
        BOUNDED,
        FLAGS,
        KEY,
        OFFSET,
        ONE_PASS,
        SUBCLASS,
        UNION,
        noting,
        storage_serializer,
    )

    cls = type(model)
    serializer = storage_serializer(cls)
    field = note = None
    for name in [*cls.model_fields, *(model.__pydantic_extra__ or ())]:
        _, found = noting(
            lambda name=name: serializer.to_json(  # type: ignore[misc]
                model, include={name}, by_alias=False, round_trip=True
            )
        )
        if found is not None:
            field, note = name, found
            break
    if note is None:
        return None
    where = f"field {field!r}" if field in cls.model_fields else f"extra field {field!r}"
    if note.startswith(f"{UNION}:"):
        _, written, read = note.split(":")
        problem = (
            f"{where} holds a {written} that its union type would read back as "
            + (f"a {read}" if read != written else "another value")
            + " (stored JSON does not say which member wrote a value); nothing was written. "
            "Keep such values in a field of their own type, or use a tagged union "
            "(Annotated[A | B, Discriminator(...)]) whose members say which they are"
        )
    elif note.startswith(f"{SUBCLASS}:"):
        _, child, base = note.split(":")
        problem = (
            f"{where} holds a {child} where {base}, a base class of it, is declared: it would "
            f"be written as {base} (without what {child} adds) and come back as {base}; nothing "
            f"was written. Declare it as {child}, or as a union such as {base} | {child}"
        )
    elif note.startswith(f"{KEY}:"):
        _, written, read = note.split(":")
        back = "another " + read if read == written else "a " + read
        problem = (
            f"{where} holds a dict key of type {written} that JSON, whose object keys are "
            "strings, would "
            + (f"read back as {back}" if read else "not read back as itself")
            + "; nothing was written. Use keys of a type that reads back from a string (str, "
            "int, an enum of str or int values, a date, a UUID...), or store the pairs as a "
            "list of tuples"
        )
    elif note == FLAGS:
        problem = (
            f"{where} holds a compiled pattern with flags given to re.compile, which Pydantic "
            "writes as the pattern's text alone, so it would come back without them; nothing "
            "was written. Write the flags inline in the pattern instead, e.g. re.compile('(?i)a')"
        )
    elif note == BOUNDED:
        problem = (
            f"{where} holds a deque with a maxlen, which JSON does not keep: it would come back "
            "unbounded (equal by ==, but appends would no longer drop the oldest items); nothing "
            "was written. Restore the bound when the field is validated, e.g. "
            "Annotated[deque[int], AfterValidator(lambda d: deque(d, maxlen=10))], or store a "
            "deque without maxlen"
        )
    elif note == ONE_PASS:
        problem = (
            f"{where} holds a one-pass iterator (Pydantic validates an Iterable into one, and "
            "a validator or an assignment may put one there): storing it would consume it, and "
            "the next save would store it empty; nothing was written. Type the field list[...] "
            "or Sequence[...] instead, or validate it into a list (AfterValidator(list))"
        )
    elif note == OFFSET:
        problem = (
            f"{where} holds a datetime or time whose UTC offset has seconds or a fraction of one "
            "(a zone's local mean time, before about 1900, or a fixed offset), which Pydantic "
            "writes as +HH:MM or Z, so it would come back changed; nothing was written. Convert "
            "it to UTC or to an offset of whole minutes first"
        )
    else:
        problem = (
            f"{where} holds a {note} inside a value of type Any (or Hashable), which JSON cannot "
            "keep (it would come back as a str, list or dict); nothing was written. Give the "
            "field a type that says what it holds (e.g. datetime, or tuple[int, ...]), or "
            "convert the value to JSON's own types (None, bool, int, float, str, list, dict with "
            "str keys) first"
        )
    return StorageValidationError(
        f"{cls.__qualname__} cannot be stored: {problem}", class_name=_name(cls), field=field
    )


def surrogate_key_refusal(model: ExternalBaseModel, data: bytes) -> StorageValidationError | None:
    """The refusal for a model with a dict key holding a lone surrogate, which Pydantic writes
    as :data:`LOSSY_KEY` (it would come back changed, or as one key with another), naming
    where; ``None`` when there is none (its JSON ``data`` holds U+FFFD characters of the data's
    own, or none)."""
    from pydantic_toast._data_schema import noting, storage_serializer

    if data.find(LOSSY_KEY) < 0:
        return None
    cls = type(model)
    serializer = storage_serializer(cls)
    try:  # Python mode keeps the keys as they are (and nested external models as references)
        fields, _ = noting(
            lambda: serializer.to_python(model, by_alias=False, round_trip=True, warnings=False)
        )
    except (ValueError, TypeError, pydantic_core.PydanticSerializationError):
        return None  # JSON mode serialized it: nothing found to refuse
    path = _surrogate_key(fields, [], field_names(cls.__pydantic_core_schema__))
    if path is None:
        return None
    where = f"field {path[0]!r}" if path[0] in cls.model_fields else "an extra field"
    return StorageValidationError(
        f"{cls.__qualname__} cannot be stored: {where} holds a dict key with a lone surrogate "
        f"character (from undecodable bytes) at {'.'.join(path)}, which Pydantic writes as "
        "replacement characters (U+FFFD), so the key would come back changed, or merged with "
        "another key; nothing was written. Clean such keys first (e.g. "
        "key.encode('utf-8', 'backslashreplace').decode())",
        class_name=_name(cls),
        field=".".join(path),
    )


def _surrogate_key(value: Any, path: list[str], names: Container[str]) -> list[str] | None:
    """The path to the first dict key in ``value`` holding a lone surrogate (a key not in
    ``names``, the fields of ``value``'s models, is data: shown as ``<key>``), or ``None``."""
    if isinstance(value, dict):
        for key, item in value.items():
            shown = key if isinstance(key, str) and key in names else DICT_KEY
            if isinstance(key, str) and _SURROGATE.search(key):
                return [*path, shown]
            found = _surrogate_key(item, [*path, shown], names)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _surrogate_key(item, [*path, str(index)], names)
            if found is not None:
                return found
    return None


def unreadable_refusal(
    cls: type[ExternalBaseModel], record: StoredRecord, exc: ValidationError
) -> StorageValidationError:
    """The refusal for a record that would be written but could not be read back."""
    problems, field = describe_errors(exc, record.data, cls)
    return StorageValidationError(
        f"{cls.__qualname__} cannot be stored: it could not be read back ({problems}); nothing "
        f"was written. {_UNREADABLE_FIX}",
        class_name=record.class_name,
        id=record.id,
        field=field,
    )


def unreadable_nested_refusal(
    cls: type[ExternalBaseModel], exc: StoredDataError
) -> StorageValidationError:
    """The refusal for a batch whose check of ``cls`` met an unreadable record of the batch."""
    where = f"field {exc.field!r} of " if exc.field else ""
    return StorageValidationError(
        f"{cls.__qualname__} cannot be stored: {where}the {exc.class_name} record {exc.id} it "
        f"holds could not be read back; nothing was written. {_UNREADABLE_FIX}",
        class_name=exc.class_name,
        id=exc.id,
        field=exc.field,
    )


def _name(cls: type[ExternalBaseModel]) -> str | None:
    settings = cls.__toast_settings__
    return None if settings is None else settings.external_name
