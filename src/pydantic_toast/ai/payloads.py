"""Run inputs, deps and outputs passed between processes by reference.

A queue message, a Temporal activity argument or a request to another service carries a small
reference (``{"class_name": ..., "id": ...}``) instead of the payload; the other side loads it.
Payloads that are :class:`~pydantic_toast.ExternalBaseModel` s need nothing more than
``await model.asave()`` and ``await Model.aload(reference)``; these functions do the same for
any value Pydantic can serialize (a list of models, a dict, a dataclass of deps, a run's
``new_messages()``), storing external models inside it as their own records.

Where the reference crosses a trust boundary, sign it with
:func:`~pydantic_toast.sign_reference` and load it with ``verify=SigningKeys(...)``: the
signature (HMAC-SHA256 over the class name, id and expiry) is checked before storage is
touched, so a forged or altered reference reads nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import uuid4

import pydantic_core
from pydantic import ConfigDict, TypeAdapter, ValidationError

from pydantic_toast._config import ttl_seconds
from pydantic_toast._exceptions import (
    InvalidReferenceError,
    RecordNotFoundError,
    StoredDataError,
    shorten,
)
from pydantic_toast._fidelity import describe_value_errors
from pydantic_toast._records import StoredRecord
from pydantic_toast._reference import ExternalReference, parse_reference
from pydantic_toast._signing import SigningKeys, parse_signed, verify_reference
from pydantic_toast._trees import adapter_for, adump_through, avalidate_dumped
from pydantic_toast.ai._names import PAYLOADS, kind_class_name
from pydantic_toast.ai._payload_checks import not_utf8_refusal, untyped_refusal
from pydantic_toast.ai._storage import backend, checked_url

__all__ = ["aload_payload", "astore_payload"]

T = TypeVar("T")
FORMAT_VERSION = 1
# NaN and the infinities kept as such: by default a float outside a model is dumped as null,
# which then loads as None (into a float | None) or fails to validate.
_PAYLOAD = TypeAdapter(Any, config=ConfigDict(ser_json_inf_nan="constants"))


async def astore_payload(
    storage: str,
    value: Any,
    *,
    ttl: float | timedelta | None = None,
    namespace: str = PAYLOADS,
) -> ExternalReference:
    """Store ``value`` and return its reference (a dict: ``json.dumps(reference)`` works).

    Args:
        storage: A storage URL or ``env:NAME``.
        value: Anything Pydantic serializes; external models inside it are stored as their
            own records (in one batch per store) and referenced. Outside models and
            dataclasses (whose fields declare their types), it may hold only JSON's own types
            (None, bool, int, float, str, list, dict with str keys): nothing else comes back
            as itself.
        ttl: Expiry, where the backend supports it: a claim check that nobody collects goes.
        namespace: Separates apps sharing one storage. The stored class name is
            ``pydantic_toast.ai.payloads`` by default, ``pydantic_toast.ai.payloads.<namespace>``
            otherwise: never one of a conversation's or a spilled output's.

    Raises:
        StorageValidationError: It would not come back as it is: a value of another type
            than JSON's own outside any model or dataclass (a tuple, a datetime, an int dict
            key), or bytes that are not UTF-8 text where Pydantic writes them as text; or the
            store cannot hold it (PostgreSQL: NaN, a NUL character). Nothing was written.
    """
    seconds = ttl_seconds(ttl, "astore_payload")
    url = checked_url(storage, seconds)
    class_name = kind_class_name(PAYLOADS, namespace)
    refusal = untyped_refusal(value, class_name)
    if refusal is not None:
        raise refusal
    try:
        data = await adump_through(_PAYLOAD, value)
    except UnicodeDecodeError:  # bytes Pydantic writes as UTF-8 text (before any batch write)
        raise not_utf8_refusal(value, class_name) from None
    now = datetime.now(UTC)
    record = StoredRecord(
        class_name=class_name,
        id=uuid4(),
        data=pydantic_core.to_json({"value": data}, inf_nan_mode="constants"),
        schema_version=FORMAT_VERSION,
        created_at=now,
        updated_at=now,
        ttl=seconds,
    )
    await (await backend(url)).save_records([record])
    return ExternalReference(class_name, record.id)


async def aload_payload(
    storage: str,
    reference: ExternalReference | Mapping[str, Any],
    type_: type[T],
    *,
    verify: SigningKeys | Callable[[ExternalReference], None] | None = None,
    namespace: str = PAYLOADS,
) -> T:
    """Load a payload stored by :func:`astore_payload` and validate it as ``type_``.

    Args:
        storage: The storage URL it was stored in.
        reference: Its reference, as an ``ExternalReference`` or the dict form, or a signed
            reference (:func:`~pydantic_toast.sign_reference`) when ``verify`` is the keys.
        type_: What to validate it as (``list[Order]``, a deps dataclass, ...).
        verify: Checked before storage is touched. :class:`~pydantic_toast.SigningKeys`: the
            reference must be signed with one of them and not expired (unsigned ones are
            refused). A function: called with the reference, raises to refuse it (check its
            owner, a tenant).
        namespace: As given to :func:`astore_payload`.

    Raises:
        RecordNotFoundError: Nothing (or nothing any more) is stored under the reference.
        InvalidReferenceError: The reference is malformed, of another namespace, or (with
            ``verify=SigningKeys(...)``) unsigned, altered, signed with another key or expired.
        StoredDataError: The record under it is not a payload, or its value does not
            validate as ``type_`` (the message names where and why, never the stored values).
    """
    if isinstance(verify, SigningKeys):
        reference = verify_reference(reference, verify)
    elif parse_signed(reference) is not None:
        raise InvalidReferenceError(
            "this payload reference is signed: pass verify=SigningKeys(...) to check it"
        )
    parsed = parse_reference(reference)
    class_name = kind_class_name(PAYLOADS, namespace)
    if parsed is None or parsed[0] != class_name:
        raise InvalidReferenceError(
            f"expected a payload reference {{'class_name': {class_name!r}, 'id': ...}}",
            class_name=class_name,
        )
    id = parsed[1]
    if verify is not None and not isinstance(verify, SigningKeys):
        verify(ExternalReference(class_name, id))
    url = checked_url(storage, None)
    (record,) = await (await backend(url)).load_records([(class_name, id)])
    if record is None:
        raise RecordNotFoundError(class_name, id)
    try:
        stored = pydantic_core.from_json(record.data, allow_inf_nan=True)
    except ValueError:
        stored = None
    if (
        record.schema_version != FORMAT_VERSION
        or not isinstance(stored, dict)
        or stored.keys() != {"value"}
    ):
        raise StoredDataError(
            f"the stored record {class_name} {id} is not a payload; it is left untouched",
            class_name=class_name,
            id=id,
        )
    try:
        return await avalidate_dumped(type_, stored["value"])
    except ValidationError as exc:
        schema = adapter_for(type_).core_schema
        problems, field = describe_value_errors(exc, stored["value"], schema)
    # Raised outside the except block: Pydantic's error quotes the stored values as its input,
    # and as this error's __context__ it would be printed with every traceback of it.
    raise StoredDataError(
        f"the stored payload {class_name} {id} does not validate as {_type_name(type_)}: "
        f"{problems}; it is left untouched. Load it as the type it was stored as, or change "
        "the type to accept the stored value (a default for a new field, a union or a "
        "mode='before' validator that converts the old type)",
        class_name=class_name,
        id=id,
        field=field,
    )


def _type_name(type_: Any) -> str:
    """``type_`` as a message names it: a class by its name, anything else by its repr."""
    return shorten(type_.__qualname__ if isinstance(type_, type) else repr(type_))
