"""Run inputs, deps and outputs passed between processes as references."""

# No `from __future__ import annotations`: the test defines its classes in functions.
import json
import math
from dataclasses import dataclass
from datetime import timedelta
from uuid import uuid4

import pytest
from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart

from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalReference,
    InvalidReferenceError,
    RecordNotFoundError,
    SigningKeys,
    StorageValidationError,
    sign_reference,
)
from pydantic_toast.ai import aload_payload, astore_payload


class Refused(Exception):
    """What the test's verify hook raises."""


async def test_deps_travel_as_a_reference_and_load_on_the_other_side(storage_url: str) -> None:
    """Deps holding messages and an external model go through a queue as a reference."""

    class Customer(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"C{uuid4().hex}")

    @dataclass
    class Deps:
        customer: Customer
        history: list[ModelMessage]
        notes: list[str]

    deps = Deps(
        customer=Customer(name="Ada"),
        history=[ModelRequest(parts=[UserPromptPart("hi")])],
        notes=["x" * 10_000],
    )
    namespace = f"t{uuid4().hex[:12]}"
    reference = await astore_payload(storage_url, deps, namespace=namespace)
    message = json.dumps(reference)  # what a queue or activity would carry
    assert len(message) < 150
    loaded = await aload_payload(storage_url, json.loads(message), Deps, namespace=namespace)
    assert loaded.customer.name == "Ada"
    assert loaded.customer.external_id == deps.customer.external_id
    assert loaded.history == deps.history
    assert loaded.notes == deps.notes


async def test_nan_and_infinities_come_back_or_are_refused(storage_url: str) -> None:
    """NaN and the infinities in deps come back as such, not as None (a float | None field
    loaded None, a float field failed to validate); PostgreSQL, whose jsonb cannot hold them,
    refuses them before anything is written."""

    class Scores(BaseModel):
        best: float

    @dataclass
    class Deps:
        score: float | None
        bounds: list[float]
        by_name: dict[str, float]
        model: Scores

    deps = Deps(math.nan, [-math.inf, 1.5, math.inf], {"x": math.nan}, Scores(best=math.inf))
    namespace = f"t{uuid4().hex[:12]}"
    if storage_url.startswith("postgresql"):
        for value in (deps, [math.nan]):
            with pytest.raises(StorageValidationError, match="NaN"):
                await astore_payload(storage_url, value, namespace=namespace)
        return
    reference = await astore_payload(storage_url, deps, namespace=namespace)
    loaded = await aload_payload(storage_url, reference, Deps, namespace=namespace)
    assert loaded.score is not None
    assert math.isnan(loaded.score)
    assert loaded.bounds == [-math.inf, 1.5, math.inf]
    assert math.isnan(loaded.by_name["x"])
    assert loaded.model == Scores(best=math.inf)


async def test_verify_refuses_before_storage_is_touched(storage_url: str) -> None:
    """A verify hook that refuses the reference stops the load with its own error."""
    seen: list[ExternalReference] = []

    def verify(reference: ExternalReference) -> None:
        seen.append(reference)
        raise Refused("unsigned")

    unknown = {"class_name": "pydantic_toast.ai.payloads", "id": str(uuid4())}
    with pytest.raises(Refused):
        await aload_payload(storage_url, unknown, dict, verify=verify)
    assert seen == [unknown]
    with pytest.raises(RecordNotFoundError):
        await aload_payload(storage_url, unknown, dict)


async def test_a_reference_of_another_kind_is_refused(storage_url: str) -> None:
    """Only payload references of the namespace asked for are loaded."""
    with pytest.raises(InvalidReferenceError, match="payload reference"):
        await aload_payload(storage_url, {"class_name": "Order", "id": str(uuid4())}, dict)


async def test_a_signed_reference_is_checked_before_storage_is_touched(storage_url: str) -> None:
    """With verify=SigningKeys, only an intact, unexpired reference signed by a key loads."""
    keys = SigningKeys(b"k" * 32)
    namespace = f"t{uuid4().hex[:12]}"
    reference = await astore_payload(storage_url, {"big": "x" * 1_000}, namespace=namespace)
    signed = json.loads(json.dumps(sign_reference(reference, keys)))  # across a queue
    loaded = await aload_payload(storage_url, signed, dict, verify=keys, namespace=namespace)
    assert loaded == {"big": "x" * 1_000}
    rotated = SigningKeys(b"n" * 32, b"k" * 32)  # a new key first: old signatures still verify
    assert await aload_payload(storage_url, signed, dict, verify=rotated, namespace=namespace)
    # An id swapped for another record's, another key, an unsigned or an expired reference:
    # refused before any read (the unknown id would otherwise be RecordNotFoundError).
    forged = {**signed, "id": str(uuid4())}
    expired = sign_reference(reference, keys, expires_in=timedelta(seconds=-10))
    refused = {
        "forged": (forged, keys, "does not verify"),
        "other key": (signed, SigningKeys(b"z" * 32), "does not verify"),
        "unsigned": (dict(reference), keys, "unsigned reference is refused"),
        "expired": (expired, keys, "expired"),
    }
    for given, with_keys, message in refused.values():
        with pytest.raises(InvalidReferenceError, match=message):
            await aload_payload(storage_url, given, dict, verify=with_keys, namespace=namespace)
    with pytest.raises(InvalidReferenceError, match="verify=SigningKeys"):
        await aload_payload(storage_url, signed, dict, namespace=namespace)
