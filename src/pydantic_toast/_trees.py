"""Dumping and validating whole trees (plain models, lists, dicts) in one batch per store.

``model_dump()`` on a plain ``BaseModel`` stores each external model inside it as soon as
Pydantic reaches it. These helpers collect the whole tree first, then write it in one batch per
store; and fetch every referenced record before validating, one round per nesting level.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import TypeAdapter

from pydantic_toast._loading import LoadSession, wanted_for
from pydantic_toast._saving import collecting, dump_value
from pydantic_toast.runtime.loops import run_sync

__all__ = ["adump", "avalidate", "dump", "validate"]

T = TypeVar("T")


async def adump(value: Any, *, mode: Literal["python", "json"] = "python") -> Any:
    """Serialize ``value`` like ``model_dump``, storing every external model in it in one batch.

    Args:
        value: A model, or any value Pydantic can serialize (lists, dicts, ...).
        mode: ``"python"`` or ``"json"``, as in ``model_dump``.

    Returns:
        What Pydantic's dump returns, each external model replaced by its reference.
    """
    result, batch = collecting(lambda: dump_value(value, mode))
    await batch.write()
    return result


def dump(value: Any, *, mode: Literal["python", "json"] = "python") -> Any:
    """The blocking form of :func:`adump`."""
    result, batch = collecting(lambda: dump_value(value, mode))
    run_sync(batch.write)
    return result


async def avalidate(type_: type[T], data: Any) -> T:
    """Validate ``data`` as ``type_``, loading every reference in it, one round per level.

    Args:
        type_: A model class or any type ``TypeAdapter`` accepts, such as ``list[Order]``.
        data: Python data (parse JSON first), with references where external models go.
    """
    session = LoadSession()
    await session.fetch(wanted_for(data), follow=True)
    return _validate_in(session, type_, data)


def validate(type_: type[T], data: Any) -> T:
    """The blocking form of :func:`avalidate`."""
    session = LoadSession()
    wanted = wanted_for(data)
    run_sync(lambda: session.fetch(wanted, follow=True))
    return _validate_in(session, type_, data)


def _validate_in(session: LoadSession, type_: type[T], data: Any) -> T:
    token = session.activate()
    try:
        return TypeAdapter(type_).validate_python(data)
    finally:
        session.deactivate(token)
