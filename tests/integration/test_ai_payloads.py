"""Run inputs, deps and outputs passed between processes as references."""

# No `from __future__ import annotations`: the test defines its classes in functions.
import json
import math
from dataclasses import dataclass
from datetime import timedelta
from uuid import uuid4

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_toast import (
    BlockingStorageCallWarning,
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalReference,
    InvalidReferenceError,
    RecordNotFoundError,
    SigningKeys,
    StorageValidationError,
    sign_reference,
    to_data,
)
from pydantic_toast.ai import SpillToolOutputs, aload_payload, astore_payload
from pydantic_toast.runtime.blocking import forget_call_sites


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
        with pytest.raises(StorageValidationError, match="NUL"):
            await astore_payload(storage_url, ["a\x00b"], namespace=namespace)
        return
    nul = await astore_payload(storage_url, ["a\x00b"], namespace=namespace)
    assert await aload_payload(storage_url, nul, list[str], namespace=namespace) == ["a\x00b"]
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


def _call_then_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls the agent's one tool, then answers with what it returned."""
    last = messages[-1]
    if isinstance(last, ModelRequest) and isinstance(last.parts[-1], ToolReturnPart):
        return ModelResponse(parts=[TextPart(last.parts[-1].model_response_str())])
    return ModelResponse(parts=[ToolCallPart(info.function_tools[0].name, {})])


async def test_a_tool_returns_an_external_models_fields_with_to_data(storage_url: str) -> None:
    """As docs/ai.md says: returned as is, an external model reaches the model as its
    reference, and is stored on the way through a blocking call; through to_data, as its
    fields (nested models too), spilled and read back exactly."""

    class Line(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"L{uuid4().hex}")
        sku: str

    class Order(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"O{uuid4().hex}")
        customer: str
        lines: list[Line]

    reference = await Order(
        customer="Ada", lines=[Line(sku=f"s{i:04d}") for i in range(99)]
    ).asave()
    spill = SpillToolOutputs(storage_url, max_chars=1_000, namespace=f"t{uuid4().hex[:12]}")
    agent = Agent(FunctionModel(_call_then_answer), capabilities=[spill])

    @agent.tool_plain
    async def find_order() -> dict[str, object]:
        return to_data(await Order.aload(reference))

    result = await agent.run("go", conversation_id="orders")
    [returned] = [
        part
        for message in result.all_messages()
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]
    expected = {"customer": "Ada", "lines": [{"sku": f"s{i:04d}"} for i in range(99)]}
    stored = await spill.aload(returned.metadata["spilled_ref"], conversation_id="orders")
    assert stored.content == expected

    as_is = Agent(FunctionModel(_call_then_answer))
    as_is.tool_plain(name="new_order")(lambda: Order(customer="Bob", lines=[]))
    forget_call_sites()  # the warning comes once per call site
    with pytest.warns(BlockingStorageCallWarning, match="blocked the running event loop"):
        answered = await as_is.run("go")
    assert set(json.loads(answered.output)) == {"class_name", "id"}
    assert (await Order.aload(json.loads(answered.output))).customer == "Bob"
