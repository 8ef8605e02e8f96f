"""Dumping and validating whole trees (plain models, lists, dicts) in one batch per store.

``model_dump()`` on a plain ``BaseModel`` stores each external model inside it as soon as
Pydantic reaches it. These helpers collect the whole tree first, then write it in one batch per
store; and fetch every referenced record before validating, one round per nesting level.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal, TypeVar

from pydantic import TypeAdapter

from pydantic_toast._collector import paused_for
from pydantic_toast._flat_loading import FlatBatch, flat_model_of
from pydantic_toast._loading import LoadSession, Routes, routes_in, wanted_for
from pydantic_toast._saving import collecting, dump_value
from pydantic_toast.runtime.loops import run_sync
from pydantic_toast.runtime.storage import current_storage

__all__ = ["adapter_for", "adump", "adump_through", "avalidate", "dump", "validate"]

T = TypeVar("T")


async def adump(
    value: Any, *, mode: Literal["python", "json"] = "python", force: bool = False
) -> Any:
    """Serialize ``value`` like ``model_dump``, storing every external model in it in one batch.

    Args:
        value: A model, or any value Pydantic can serialize (lists, dicts, ...).
        mode: ``"python"`` or ``"json"``, as in ``model_dump``.
        force: Write every external model in it, changed or not, over whatever revision is
            stored (see :func:`~pydantic_toast.last_write_wins`).

    Returns:
        What Pydantic's dump returns, each external model replaced by its reference.

    Raises:
        ConcurrencyError: A record changed since it was read; nothing of its store was written.
    """
    with paused_for(_items_in(value)):
        result, batch = collecting(lambda: dump_value(value, mode), force=force)
    await batch.write()
    return result


async def adump_through(adapter: TypeAdapter[Any], value: Any) -> Any:
    """:func:`adump` in JSON mode, serializing ``value`` with ``adapter`` (and its config)."""
    with paused_for(_items_in(value)):
        result, batch = collecting(lambda: adapter.dump_python(value, mode="json"))
    await batch.write()
    return result


def dump(value: Any, *, mode: Literal["python", "json"] = "python", force: bool = False) -> Any:
    """The blocking form of :func:`adump`."""
    with paused_for(_items_in(value)):
        result, batch = collecting(lambda: dump_value(value, mode), force=force)
    if batch.records:
        run_sync(batch.write, call="pydantic_toast.dump()", instead="await pydantic_toast.adump()")
    return result


async def avalidate(type_: type[T], data: Any) -> T:
    """Validate ``data`` as ``type_``, loading every reference in it, one round per level.

    Args:
        type_: A model class or any type ``TypeAdapter`` accepts, such as ``list[Order]``.
        data: Python data (parse JSON first), with references where external models go.
    """
    return await _avalidate(type_, data, by_name=False)


async def avalidate_dumped(type_: type[T], data: Any) -> T:
    """:func:`avalidate` of what the library dumped itself: fields are also taken by name, as
    a dump writes them (a plain model's aliased field is written under its name, and Pydantic
    validates by alias only unless the model says otherwise)."""
    return await _avalidate(type_, data, by_name=True)


async def _avalidate(type_: type[T], data: Any, *, by_name: bool) -> T:
    adapter, routes, flat = _adapter(type_)
    batch = FlatBatch.parse(flat, data) if flat is not None else None
    if batch is not None:  # a list of references to a model without nested ones
        await batch.fetch(current_storage())
        return batch.build()  # type: ignore[return-value]
    session = LoadSession(routes)
    await session.fetch(wanted_for(session, data), follow=True)
    return _validate_in(session, adapter, data, by_name=by_name)  # type: ignore[no-any-return]


def validate(type_: type[T], data: Any) -> T:
    """The blocking form of :func:`avalidate`."""
    adapter, routes, flat = _adapter(type_)
    batch = FlatBatch.parse(flat, data) if flat is not None else None
    if batch is not None:
        storage = current_storage()
        run_sync(
            lambda: batch.fetch(storage),
            call="pydantic_toast.validate()",
            instead="await pydantic_toast.avalidate()",
        )
        return batch.build()  # type: ignore[return-value]
    session = LoadSession(routes)
    wanted = wanted_for(session, data)
    run_sync(
        lambda: session.fetch(wanted, follow=True),
        call="pydantic_toast.validate()",
        instead="await pydantic_toast.avalidate()",
    )
    return _validate_in(session, adapter, data)  # type: ignore[no-any-return]


def _items_in(value: Any) -> int:
    """The items of a list or tuple dumped as a batch (its build pauses the garbage collector
    from :data:`~._collector.PAUSE_FROM`); ``0`` for other values."""
    return len(value) if type(value) in (list, tuple) else 0


def adapter_for(type_: Any) -> TypeAdapter[Any]:
    """The adapter :func:`validate` validates ``type_`` with (built once per type)."""
    return _adapter(type_)[0]


def _adapter(type_: Any) -> tuple[TypeAdapter[Any], Routes, Any]:
    """The type's adapter, the stores its external models live in, and its flat model class
    when it is a list of one (see :func:`flat_model_of`); built once per type."""
    try:
        return _cached_adapter(type_)
    except TypeError:  # an unhashable type expression: build it each time
        return _build_adapter(type_)


def _build_adapter(type_: Any) -> tuple[TypeAdapter[Any], Routes, Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(type_)
    return adapter, routes_in(adapter.core_schema), flat_model_of(type_)


_cached_adapter = lru_cache(maxsize=256)(_build_adapter)


def _validate_in(
    session: LoadSession, adapter: TypeAdapter[T], data: Any, *, by_name: bool = False
) -> T:
    token = session.activate()
    try:
        if by_name:
            return adapter.validate_python(data, by_alias=True, by_name=True)
        return adapter.validate_python(data)
    finally:
        session.deactivate(token)
