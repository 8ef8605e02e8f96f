"""A model class's module-qualified spelling, telling apart parametrizations named alike.

Pydantic names a generic model's parametrization by its arguments' bare names: ``Box[Item]``
for ``Box[billing.Item]`` and for ``Box[warehouse.Item]`` alike, and that name is the stored
one. This spelling qualifies every class inside it (``shop.Box[billing.Item]``), so the name
catalog can tell two different parametrizations from one parametrization made again (a
reloaded module, an argument class redefined in a notebook), as it does for plain classes.
"""

from __future__ import annotations

import enum
import sys
import types
import typing
from typing import Any, Literal

__all__ = ["qualified_spelling"]

_UNIONS = (typing.Union, types.UnionType)


def qualified_spelling(kind: object, home: str = "") -> str:
    """``kind`` spelled with the module of every class in it.

    Spellings that Pydantic's names treat as one stay one: ``Optional[int]`` and
    ``int | None`` are both ``Union[int, NoneType]``; ``List[int]`` and ``list[int]`` are both
    ``list[int]`` (Pydantic names them apart). A value inside the
    arguments (``Annotated`` metadata) counts by its class, as in Pydantic's name; a
    ``Literal`` value by its repr (an enum member's with its class's module). A forward
    reference (``Box['Item']``) is spelled in ``home``, the module the parametrization was made
    in (Pydantic resolves it there), as the class it names will be once defined there.
    """
    if isinstance(kind, str):  # a forward reference, as Pydantic spells it
        return _forward(kind, home)
    if isinstance(kind, type):
        metadata: Any = getattr(kind, "__pydantic_generic_metadata__", None)
        if metadata and metadata.get("origin") is not None:
            home = home or kind.__module__
            return _with_arguments(metadata["origin"], metadata["args"], home)
    origin = typing.get_origin(kind)
    if origin is not None:
        if origin is Literal:
            values = ", ".join(_literal(value) for value in typing.get_args(kind))
            return f"Literal[{values}]"
        if origin in _UNIONS:
            members = ", ".join(qualified_spelling(each, home) for each in typing.get_args(kind))
            return f"Union[{members}]"
        return _with_arguments(origin, typing.get_args(kind), home)
    if isinstance(kind, list | tuple):  # Callable's parameter list
        return f"[{', '.join(qualified_spelling(each, home) for each in kind)}]"
    if not isinstance(kind, type):
        kind = type(kind)
    if kind.__module__ == "builtins":  # as Pydantic spells them: Box[int], not Box[builtins.int]
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _forward(text: str, home: str) -> str:
    """The forward reference ``text`` spelled as what it names in module ``home`` (builtins
    included: ``'int'`` is ``int``) when it names something there already; else as the class
    of that name the module will define."""
    namespace = getattr(sys.modules.get(home), "__dict__", None)
    if namespace is not None:
        try:
            # What typing.get_type_hints() does with an annotation's text, in that module.
            resolved = eval(text, dict(namespace))
        except Exception:  # not defined yet, or not an expression of types
            resolved = None
        if resolved is not None and not isinstance(resolved, str):
            return qualified_spelling(resolved, home)
    return f"{home}.{text}" if home and text.isidentifier() else text


def _with_arguments(origin: object, arguments: tuple[object, ...], home: str) -> str:
    spelled = ", ".join(qualified_spelling(argument, home) for argument in arguments)
    return f"{qualified_spelling(origin)}[{spelled}]"


def _literal(value: object) -> str:
    if isinstance(value, enum.Enum):
        return f"{qualified_spelling(type(value))}.{value.name}"
    return repr(value)
