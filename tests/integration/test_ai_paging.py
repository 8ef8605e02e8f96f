"""A page of a conversation's messages is one backend call (counted by telemetry spans)."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart

import pydantic_toast
from pydantic_toast.ai import MessageStore
from tests.integration.conftest import BACKENDS

PG_AND_REDIS = [param for param in BACKENDS if param.id in {"postgresql", "redis"}]


class Calls:
    """Backend calls, one telemetry span each (what crosses the storage boundary)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        pydantic_toast.enable_telemetry(tracer_provider=provider)

    def take(self) -> list[str]:
        """The operations called since the last take, in order."""
        spans = self.exporter.get_finished_spans()
        names = [span.name.removeprefix("pydantic_toast.") for span in spans]
        self.exporter.clear()
        return names


@pytest.fixture
def calls() -> Iterator[Calls]:
    state = Calls()
    try:
        yield state
    finally:
        pydantic_toast.disable_telemetry()


def _turn(text: str) -> list[ModelRequest | ModelResponse]:
    return [ModelRequest(parts=[UserPromptPart(text)]), ModelResponse(parts=[TextPart(text)])]


@pytest.mark.parametrize("storage_url", PG_AND_REDIS, indirect=True)
async def test_each_page_of_messages_is_one_backend_call(storage_url: str, calls: Calls) -> None:
    """aload and apages read a page of turns in one call; an append is one call."""
    store = MessageStore(storage_url, namespace=f"t{uuid4().hex[:12]}", page_size=4)
    await store.aappend("paged", _turn("t0"))
    calls.take()  # the connection made by the first call
    for i in range(1, 10):
        await store.aappend("paged", _turn(f"t{i}"))
    assert calls.take() == ["save"] * 9  # one call per appended turn, batch and header
    history = await store.aload("paged")
    assert len(history.messages) == 20
    assert calls.take() == ["list"] * 3  # pages of 4, 4 and 2 turns: nothing else
    pages = [page async for page in store.apages("paged")]
    assert [len(page) for page in pages] == [8, 8, 4]
    assert calls.take() == ["list"] * 3
    recent = await store.aload("paged", limit=6)  # 3 whole turns: within the first page
    assert len(recent.messages) == 6
    assert calls.take() == ["list"]


@pytest.mark.parametrize("storage_url", PG_AND_REDIS, indirect=True)
async def test_each_page_of_conversations_is_one_backend_call(
    storage_url: str, calls: Calls
) -> None:
    """alist pages through conversations in one call each, after the last ConversationInfo."""
    store = MessageStore(storage_url, namespace=f"t{uuid4().hex[:12]}")
    for i in range(5):
        await store.aappend(f"c{i}", _turn("hi"))
    calls.take()
    first = await store.alist(limit=2)
    second = await store.alist(limit=2, after=first[-1])
    third = await store.alist(limit=2, after=second[-1])
    assert calls.take() == ["list"] * 3
    listed = [info.conversation_id for info in [*first, *second, *third]]
    assert listed == ["c4", "c3", "c2", "c1", "c0"]  # newest first, each once
    by_id = await store.alist(limit=2, after="c3")  # by id: where c3 started is read first
    assert [info.conversation_id for info in by_id] == ["c2", "c1"]
    assert calls.take() == ["load", "list"]
