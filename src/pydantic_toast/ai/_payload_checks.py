"""What a payload must hold to come back as it went in, checked before anything is written.

A payload is written as a value of type ``Any``: its lists, dicts and scalars carry no type,
and are read back as JSON's own (a tuple comes back a list, a datetime or a UUID a str, an int
dict key a str), whatever type the load asks for around them. Models and dataclasses declare
their fields' types, which a load validates the JSON back into (``Deps(when=datetime)``, loaded
as ``Deps``, gives the datetime back), so the check stops at them, as a model's Any field's does
(see ``_data_schema._json_value``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from pydantic_toast._exceptions import StorageValidationError
from pydantic_toast._fidelity import DICT_KEY

__all__ = ["not_utf8_refusal", "untyped_refusal"]

_JSON_ATOMS = frozenset({type(None), bool, int, float, str})
_STR = frozenset({str})
_BASE64 = "base64"
_SET_ITEM = "<item>"
_BYTES_FIX = (
    "Bytes that are not UTF-8 text need a Pydantic model or Pydantic dataclass with "
    "ser_json_bytes='base64' and val_json_bytes='base64' in its config (a standard-library "
    "dataclass's config is not used when it is written), or encoding (base64) first"
)


def untyped_refusal(value: Any, class_name: str) -> StorageValidationError | None:
    """The refusal for a payload holding, outside any model or dataclass, a value that JSON
    would not give back as itself; ``None`` when it holds none. The path names list indices and
    field names, never a dict's keys (the application's data: ``<key>``)."""
    if _only_json(value):
        return None
    path, kind = _first_untyped(value)
    note = "dict with keys that are not str" if kind is dict else kind.__qualname__
    return _refusal(
        f"{_where(path)} holds a {note} outside any model or dataclass, where nothing declares "
        "its type, so JSON would not keep it (loaded as Any it comes back as a str, list or "
        "dict); nothing was written. Put it in a field of a dataclass or model that declares "
        "its type (e.g. when: datetime, or pair: tuple[int, int]) and load the payload as that "
        "class, or convert it to JSON's own types (None, bool, int, float, str, list, dict with "
        "str keys) first" + (f" ({_BYTES_FIX})" if kind in (bytes, bytearray) else ""),
        class_name,
        path,
    )


def _only_json(value: Any) -> bool:
    """Whether ``value`` holds only JSON's own types outside models and dataclasses.

    The types of a list's items (a dict's keys, values) are gathered at C speed, then each
    type is looked at once: only lists and dicts among the items are walked further.
    """
    stack: list[list[Any] | dict[Any, Any]] = [[value]]
    seen: set[int] = set()  # a list holding itself: Pydantic refuses it when writing
    while stack:
        container = stack.pop()
        if id(container) in seen:
            continue
        seen.add(id(container))
        if type(container) is dict:
            if not _STR.issuperset(map(type, container)):
                return False
            items: Any = container.values()
        else:
            items = container
        for kind in set(map(type, items)) - _JSON_ATOMS:
            if kind is list or kind is dict:
                stack.extend([item for item in items if type(item) is kind])
            elif not _declares_fields(kind):
                return False
    return True


def _first_untyped(value: Any) -> tuple[tuple[str, ...], type]:
    """The path and type of the first value :func:`_only_json` refuses (error path only)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    seen: set[int] = set()
    while stack:
        item, path = stack.pop()
        kind = type(item)
        if kind in _JSON_ATOMS or _declares_fields(kind) or id(item) in seen:
            continue
        seen.add(id(item))
        if kind is list:
            stack.extend((item[i], (*path, str(i))) for i in reversed(range(len(item))))
        elif kind is dict and _STR.issuperset(map(type, item)):
            stack.extend((child, (*path, DICT_KEY)) for child in reversed(item.values()))
        else:
            return path, kind
    return (), type(value)  # not reached: _only_json found one


def not_utf8_refusal(value: Any, class_name: str) -> StorageValidationError:
    """The refusal for a payload whose serialization met bytes that are not UTF-8 text."""
    path = next(_not_utf8(value, (), set()), None)
    return _refusal(
        f"{_where(path) if path is not None else 'a field'} holds bytes that are not UTF-8 "
        f"text, which Pydantic writes as UTF-8 text by default; nothing was written. {_BYTES_FIX}",
        class_name,
        path or (),
    )


def _refusal(message: str, class_name: str, path: tuple[str, ...]) -> StorageValidationError:
    return StorageValidationError(
        f"the payload cannot be stored: {message}",
        class_name=class_name,
        field=".".join(path) or None,
    )


def _where(path: tuple[str, ...]) -> str:
    return f"the value at {'.'.join(path)}" if path else "it"


def _declares_fields(kind: type) -> bool:
    """Whether ``kind`` is a model or dataclass class (its fields' types are declared)."""
    return issubclass(kind, BaseModel) or hasattr(kind, "__dataclass_fields__")


def _not_utf8(item: Any, path: tuple[str, ...], seen: set[int]) -> Iterator[tuple[str, ...]]:
    """The paths of the bytes in ``item`` that are not UTF-8 text and are written as such (not
    in a model or dataclass that writes bytes as base64), each container walked once. Walked on
    the error path only."""
    if id(item) in seen:
        return
    seen.add(id(item))
    if isinstance(item, bytes | bytearray):
        try:
            bytes(item).decode()
        except UnicodeDecodeError:
            yield path
    elif _declares_fields(type(item)):
        if _writes_base64(item):
            return
        names = (
            list(type(item).model_fields)
            if isinstance(item, BaseModel)
            else [field.name for field in dataclasses.fields(item)]
        )
        for name in names:
            yield from _not_utf8(getattr(item, name, None), (*path, name), seen)
    elif isinstance(item, dict):
        for key, child in item.items():
            yield from _not_utf8(key, (*path, DICT_KEY), seen)
            yield from _not_utf8(child, (*path, DICT_KEY), seen)
    elif isinstance(item, list | tuple):
        for index, child in enumerate(item):
            yield from _not_utf8(child, (*path, str(index)), seen)
    elif isinstance(item, set | frozenset):
        for child in item:
            yield from _not_utf8(child, (*path, _SET_ITEM), seen)


def _writes_base64(item: Any) -> bool:
    """Whether Pydantic writes the bytes of model or Pydantic dataclass ``item`` as base64 (a
    standard-library dataclass is written by its values' types, its config unused)."""
    if not hasattr(item, "__pydantic_serializer__"):
        return False
    config: Any = getattr(item, "model_config", None) or getattr(item, "__pydantic_config__", {})
    return bool(config.get("ser_json_bytes") == _BASE64)
