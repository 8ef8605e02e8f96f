"""Run inputs, deps and outputs passed between processes as references."""

# No `from __future__ import annotations`: the test defines its classes in functions.
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.dataclasses import dataclass as pydantic_dataclass
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


class _Color(Enum):
    RED = "red"


async def _stored_count(storage_url: str, namespace: str, class_name: str | None = None) -> int:
    """How many payloads of ``namespace`` (or records of ``class_name``) the store holds."""
    from pydantic_toast.ai._names import PAYLOADS, kind_class_name
    from pydantic_toast.ai._storage import backend, checked_url

    target = await backend(checked_url(storage_url, None))
    name = class_name or kind_class_name(PAYLOADS, namespace)
    return await target.count(name)  # type: ignore[no-any-return]


async def test_values_json_would_change_outside_a_declared_type_are_refused(
    storage_url: str,
) -> None:
    """A tuple, datetime, UUID, int dict key (and the like) where nothing declares its type
    came back as a list, str or str-keyed dict, silently: now refused before anything is
    written (nested external models included), naming the type and a path without dict keys."""

    note_name = f"N{uuid4().hex}"

    class Note(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=storage_url, external_name=note_name)
        text: str

    namespace = f"t{uuid4().hex[:12]}"
    secret = "s3cr3t-value"
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)  # walked once, not forever
    refused: dict[str, tuple[Any, str, str | None]] = {
        "tuple": ({"k_pair": (1, 2)}, "tuple", "<key>"),
        "datetime": ([datetime(2024, 1, 1, tzinfo=UTC)], "datetime", "0"),
        "uuid": ({"id": UUID(int=1)}, "UUID", "<key>"),
        "int key": ({"k_int": {1: secret}}, "dict with keys that are not str", "<key>"),
        "set": ({secret}, "set", None),
        "decimal": ([[Decimal("1.5")]], "Decimal", "0.0"),
        "enum": ({"c": _Color.RED}, "_Color", "<key>"),
        "root tuple": ((1, 2), "tuple", None),
        "after a cycle": ([cyclic, (1, 2)], "tuple", "1"),
    }
    for name, (value, kind, field) in refused.items():
        with pytest.raises(StorageValidationError, match="nothing was written") as caught:
            await astore_payload(storage_url, [Note(text="n"), value], namespace=namespace)
        message = str(caught.value)
        assert f"holds a {kind} outside any model or dataclass" in message, name
        for data in (secret, "k_pair", "k_int"):
            assert data not in message, name
        assert caught.value.field == (f"1.{field}" if field else "1"), name
    assert await _stored_count(storage_url, namespace) == 0
    # The nested external model was not written either.
    assert await _stored_count(storage_url, namespace, note_name) == 0


async def test_declared_types_bring_values_back_exactly(storage_url: str) -> None:
    """The same values in a dataclass or model whose fields declare their types are stored,
    and come back equal when loaded as that class; JSON's own types come back as Any."""

    @dataclass
    class Deps:
        pair: tuple[int, int]
        when: datetime
        id: UUID
        intkey: dict[int, str]
        blob: bytes

    class Typed(BaseModel):
        colors: frozenset[_Color]
        amount: Decimal

    namespace = f"t{uuid4().hex[:12]}"
    deps = Deps((1, 2), datetime(2024, 1, 1, tzinfo=UTC), UUID(int=1), {1: "a"}, b"ok")
    reference = await astore_payload(storage_url, deps, namespace=namespace)
    assert await aload_payload(storage_url, reference, Deps, namespace=namespace) == deps
    typed = {"a": [Typed(colors=frozenset({_Color.RED}), amount=Decimal("1.50"))]}
    reference = await astore_payload(storage_url, typed, namespace=namespace)
    as_typed = dict[str, list[Typed]]
    assert await aload_payload(storage_url, reference, as_typed, namespace=namespace) == typed
    plain = {"a": [1, 2.5, None, True, "x", {"b": []}]}
    reference = await astore_payload(storage_url, plain, namespace=namespace)
    back = await aload_payload(storage_url, reference, dict[str, Any], namespace=namespace)
    assert back == plain


async def test_models_with_aliased_fields_come_back(storage_url: str) -> None:
    """A payload holding plain models whose fields have aliases (Field(alias=...), an
    alias_generator) loads back equal: it is written under field names, and Pydantic
    validates by alias only, so every load of it failed with "Field required"."""

    class Aliased(BaseModel):
        user_id: int = Field(alias="userId")

    class Camel(BaseModel):
        model_config = ConfigDict(alias_generator=to_camel)
        first_name: str
        tags: list[str] = []

    value = [Aliased(userId=1), Aliased(userId=2)]
    reference = await astore_payload(storage_url, value)
    assert await aload_payload(storage_url, reference, list[Aliased]) == value
    camel = Camel(firstName="Ada", tags=["x"])
    reference = await astore_payload(storage_url, camel)
    assert await aload_payload(storage_url, reference, Camel) == camel


async def test_bytes_that_are_not_utf8_are_refused_with_the_fix(storage_url: str) -> None:
    """Non-UTF-8 bytes leaked a builtins UnicodeDecodeError (a ValueError): now the library's
    StorageValidationError names the field and the base64 fix, never the bytes; with the
    base64 config on a Pydantic dataclass or model, they are stored and come back."""

    @dataclass
    class Deps:
        blob: bytes

    @dataclass
    class Outer:
        inner: list[Deps]

    @pydantic_dataclass(config=ConfigDict(ser_json_bytes="base64", val_json_bytes="base64"))
    class Base64Deps:
        blob: bytes

    namespace = f"t{uuid4().hex[:12]}"
    cases: list[tuple[Any, str | None]] = [
        (Deps(b"\xff"), "blob"),
        (Outer([Deps(b"ok"), Deps(b"\x80\xfe")]), "inner.1.blob"),
        ({"k": Deps(b"\xff")}, "<key>.blob"),
        (b"\xff", None),
        ({"b": b"\x80"}, "<key>"),
    ]
    for value, field in cases:
        with pytest.raises(StorageValidationError, match="ser_json_bytes='base64'") as caught:
            await astore_payload(storage_url, value, namespace=namespace)
        assert not isinstance(caught.value, ValueError)
        assert caught.value.field == field
        assert "nothing was written" in str(caught.value)
        for data in ("\\x", "xff", "x80"):
            assert data not in str(caught.value)
    assert await _stored_count(storage_url, namespace) == 0
    encoded = Base64Deps(b"\xff\x00")
    reference = await astore_payload(storage_url, encoded, namespace=namespace)
    assert await aload_payload(storage_url, reference, Base64Deps, namespace=namespace) == encoded


async def test_pydantic_ai_messages_and_tool_outputs_are_accepted(storage_url: str) -> None:
    """A run's messages (dataclasses whose fields declare their types) are stored as payloads
    whatever their tool calls and returns hold, and come back as list[ModelMessage]."""

    class Found(BaseModel):
        at: datetime

    namespace = f"t{uuid4().hex[:12]}"
    found = Found(at=datetime(2024, 1, 1, tzinfo=UTC))
    messages: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart("hi")]),
        ModelResponse(parts=[ToolCallPart("find", {"q": "x", "n": 1})]),
        ModelRequest(parts=[ToolReturnPart("find", {"hits": [1, 2]}, "c1")]),
        ModelRequest(parts=[ToolReturnPart("find", found, "c2")]),
    ]
    reference = await astore_payload(storage_url, messages, namespace=namespace)
    loaded = await aload_payload(storage_url, reference, list[ModelMessage], namespace=namespace)
    assert loaded[:3] == messages[:3]
    assert loaded[3].parts[0].content == found.model_dump(mode="json")  # Pydantic AI's own rule
