"""Where a value sits among a model's fields, and what is declared there (error paths only)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from pydantic import BaseModel

__all__ = ["Place", "declared_classes", "places_of", "shown_type"]

# A dict's key is the application's data: a path shows it as this (as _fidelity.shown_path does).
_DICT_KEY = "<key>"
_UNIONS = (typing.Union, types.UnionType)
_SET_ITEM = "<item>"  # a set's item has no index
_ITEMS = (list, tuple, set, frozenset, deque)


class Place(NamedTuple):
    """One place a value sits at.

    Attributes:
        path: Its dotted path from the holder (``"inner.items.0"``), dict keys as ``<key>``.
        field: The name of the innermost field holding it (``"items"``).
        field_type: That field's annotation (``list[Media]``).
        declared: What is declared at the place itself (``Media``); ``Any`` where nothing is.
    """

    path: str
    field: str
    field_type: Any
    declared: Any


def places_of(holder: BaseModel, target: object) -> Iterator[Place]:
    """Each place ``target`` (by identity) sits at in ``holder``'s fields, extra fields and
    computed fields, in field order, looking into lists, tuples, sets, dicts, plain models and
    dataclasses, not into other external models (their fields are their own records')."""
    seen: set[int] = {id(holder)}
    # (value, what is declared there, path, innermost field's name and annotation): an explicit
    # stack, so a deeply nested value takes no deeper Python stack.
    stack: list[tuple[Any, Any, tuple[str, ...], str, Any]] = [
        (value, annotation, (name,), name, annotation)
        for name, annotation, value in reversed(list(_members(holder)))
    ]
    while stack:
        value, declared, path, field, field_type = stack.pop()
        if value is target:
            yield Place(".".join(path), field, field_type, declared)
            continue
        if id(value) in seen:  # a cycle, or a value held twice: looked into once
            continue
        inside: list[tuple[Any, Any, tuple[str, ...], str, Any]] = []
        if isinstance(value, BaseModel):
            if hasattr(value, "__toast_settings__"):
                continue
            inside = [
                (member, annotation, (*path, name), name, annotation)
                for name, annotation, member in _members(value)
            ]
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            hints = _hints(type(value))
            for item in dataclasses.fields(value):
                annotation = hints.get(item.name, Any)
                member = getattr(value, item.name, None)
                inside.append((member, annotation, (*path, item.name), item.name, annotation))
        elif isinstance(value, Mapping):
            args = typing.get_args(_container(declared, value))
            inner = args[1] if len(args) == 2 else Any
            inside = [
                (member, inner, (*path, _DICT_KEY), field, field_type) for member in value.values()
            ]
        elif isinstance(value, _ITEMS):
            kind = _container(declared, value)
            ordered = not isinstance(value, (set, frozenset))
            inside = [
                (
                    member,
                    _item_type(kind, index),
                    (*path, str(index) if ordered else _SET_ITEM),
                    field,
                    field_type,
                )
                for index, member in enumerate(value)
            ]
        else:
            continue
        seen.add(id(value))
        stack.extend(reversed(inside))


def _members(model: BaseModel) -> Iterator[tuple[str, Any, Any]]:
    cls = type(model)
    for name, info in cls.model_fields.items():
        yield name, info.annotation, getattr(model, name, None)
    for name, value in (model.__pydantic_extra__ or {}).items():
        yield name, Any, value
    for name, computed in cls.model_computed_fields.items():
        try:
            value = getattr(model, name)
        except Exception:  # an error path: a computed field that fails holds nothing
            continue
        yield name, computed.return_type, value


def _item_type(kind: Any, index: int) -> Any:
    """What ``kind`` (``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``...) declares at ``index``."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[index] if index < len(args) else Any
    return args[0] if len(args) == 1 else Any


def _container(declared: Any, value: object) -> Any:
    """The member of ``declared`` (a union's, ``Annotated``'s) that ``value``'s container type
    matches, or ``Any``."""
    for member in _members_of(declared):
        origin = typing.get_origin(member) or member
        if origin is not Any and isinstance(origin, type) and isinstance(value, origin):
            return member
    return Any


def _members_of(declared: Any) -> list[Any]:
    """``declared`` without ``Annotated``, a union as its members (flattened)."""
    if typing.get_origin(declared) is typing.Annotated:
        return _members_of(typing.get_args(declared)[0])
    if typing.get_origin(declared) in _UNIONS:
        return [member for arg in typing.get_args(declared) for member in _members_of(arg)]
    return [declared]


def declared_classes(declared: Any) -> list[type]:
    """The classes ``declared`` names at a place (a union's members, inside ``Annotated``)."""
    return [member for member in _members_of(declared) if isinstance(member, type)]


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation: its field declares Any
        return {}


def shown_type(annotation: Any) -> str:
    """``annotation`` as a message shows it: classes by their ``__qualname__``."""
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation is Any:
        return "Any"
    if annotation is Ellipsis:
        return "..."
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return shown_type(args[0])
    if origin in _UNIONS:
        return " | ".join(shown_type(arg) for arg in args)
    if origin is not None and args:
        return f"{shown_type(origin)}[{', '.join(shown_type(arg) for arg in args)}]"
    if isinstance(annotation, type):
        return annotation.__qualname__
    return repr(annotation).removeprefix("typing.")
