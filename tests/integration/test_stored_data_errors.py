"""A stored record that no longer validates: a StoredDataError naming where, never the data.

Validation of what the caller passes in (``Order(quantity="x")``, a client's request body) is
Pydantic's and may quote its input; what a load reads back from the store is the application's
data, and no message or traceback of the error shows it.
"""

# No `from __future__ import annotations`: the test defines its classes in functions.
import traceback
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StoredDataError
from pydantic_toast.ai import aload_payload, astore_payload

SECRET = "Sekr1t-Stored-Card-4111"


def _ticket(storage_url: str, name: str, code: type) -> Any:
    """A model stored as ``name`` whose ``code`` field has type ``code``."""
    return type(
        "Ticket",
        (ExternalBaseModel,),
        {
            "__annotations__": {"code": code, "seat": int},
            "model_config": ExternalConfigDict(storage=storage_url, external_name=name),
        },
    )


def _shown(error: BaseException) -> str:
    """Everything a log or a console shows of ``error``: its message and whole traceback,
    with the exceptions it was raised from or while handling."""
    return "".join(traceback.format_exception(error))


def _assert_names_without_data(error: StoredDataError, *needles: str) -> None:
    message = str(error)
    for needle in (*needles, "code", "int_parsing", "left untouched", "a default"):
        assert needle in message, (needle, message)
    assert SECRET not in message
    assert SECRET not in _shown(error)
    assert "input_value" not in _shown(error)


async def test_a_record_whose_field_type_changed_loads_as_stored_data_error(
    storage_url: str,
) -> None:
    """A str field now an int: aload raises StoredDataError naming the record, class, field,
    error type and the fix; no message or traceback shows the stored value; the record is
    left as it was."""
    name = f"Ticket{uuid4().hex[:8]}"
    before = _ticket(storage_url, name, str)
    reference = await before(code=SECRET, seat=7).asave()
    after = _ticket(storage_url, name, int)
    with pytest.raises(StoredDataError) as caught:
        await after.aload(reference)
    _assert_names_without_data(caught.value, name, str(reference["id"]))
    assert (caught.value.class_name, caught.value.id) == (name, UUID(reference["id"]))
    assert caught.value.field == "code"
    assert (await before.aload(reference)).code == SECRET


async def test_a_batch_load_meeting_such_a_record_shows_no_stored_value(storage_url: str) -> None:
    """A list load whose second record no longer validates: StoredDataError naming it,
    without the stored value in its message or traceback (the batch's Pydantic error, which
    quotes it, is not chained); both records are left as they were."""
    name = f"Ticket{uuid4().hex[:8]}"
    before = _ticket(storage_url, name, str)
    fits = await before(code="12", seat=1).asave()
    stale = await before(code=SECRET, seat=2).asave()
    after = _ticket(storage_url, name, int)
    with pytest.raises(StoredDataError) as caught:
        await pydantic_toast.avalidate(list[after], [fits, stale])
    _assert_names_without_data(caught.value, name, str(stale["id"]))
    assert caught.value.id == UUID(stale["id"])
    loaded = await pydantic_toast.avalidate(list[before], [fits, stale])
    assert [ticket.code for ticket in loaded] == ["12", SECRET]


async def test_a_payload_loaded_as_a_type_it_no_longer_fits_shows_no_stored_value(
    storage_url: str,
) -> None:
    """aload_payload with a type the stored value does not fit: StoredDataError (not
    Pydantic's ValidationError, which quotes the stored value) naming the payload, the field,
    the error type and the fix; the payload loads as before with the type it fits."""

    class Before(BaseModel):
        code: str

    class After(BaseModel):
        code: int

    namespace = f"t{uuid4().hex[:12]}"
    reference = await astore_payload(storage_url, [Before(code=SECRET)], namespace=namespace)
    with pytest.raises(StoredDataError) as caught:
        await aload_payload(storage_url, reference, list[After], namespace=namespace)
    _assert_names_without_data(caught.value, str(reference["id"]), "list[", "0.code")
    assert caught.value.field == "0.code"
    assert caught.value.id == UUID(reference["id"])
    loaded = await aload_payload(storage_url, reference, list[Before], namespace=namespace)
    assert loaded == [Before(code=SECRET)]


async def test_a_payload_of_models_whose_field_type_changed_shows_no_stored_value(
    storage_url: str,
) -> None:
    """A payload holding external models, loaded after their field type changed: the
    models' StoredDataError, without the stored value in its traceback."""
    name = f"Ticket{uuid4().hex[:8]}"
    before = _ticket(storage_url, name, str)
    namespace = f"t{uuid4().hex[:12]}"
    tickets = [before(code="12", seat=1), before(code=SECRET, seat=2)]
    reference = await astore_payload(storage_url, tickets, namespace=namespace)
    after = _ticket(storage_url, name, int)
    with pytest.raises(StoredDataError) as caught:
        await aload_payload(storage_url, reference, list[after], namespace=namespace)
    _assert_names_without_data(caught.value, name, str(tickets[1].external_id))
    loaded = await aload_payload(storage_url, reference, list[before], namespace=namespace)
    assert [ticket.code for ticket in loaded] == ["12", SECRET]
