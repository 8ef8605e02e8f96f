"""Offline Pydantic AI models and a worker process for the pydantic_toast.ai tests."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from pydantic_ai import Agent
from pydantic_ai.messages import (
    BinaryContent,
    FilePart,
    ImageUrl,
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    NativeToolCallPart,
    NativeToolReturnPart,
    RetryFeedbackPart,
    RetryInfo,
    SystemPromptPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

import pydantic_toast
from pydantic_toast.ai import MessageStore, PersistentConversation


def echo_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Answer with the prompts it was sent, so a test can see what history the model got."""
    prompts = [
        part.content
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, UserPromptPart) and isinstance(part.content, str)
    ]
    return ModelResponse(parts=[TextPart(" | ".join(prompts))], model_name="echo")


async def echo_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    """The streamed form of :func:`echo_model`."""
    (part,) = echo_model(messages, info).parts
    assert isinstance(part, TextPart)
    yield part.content


def chat_agent(store: MessageStore) -> Agent[None, str]:
    """An offline agent whose conversations persist in ``store``."""
    model = FunctionModel(echo_model, stream_function=echo_stream)
    return Agent(model, capabilities=[PersistentConversation(store)])


def every_part() -> list[ModelMessage]:
    """A history holding every message part kind, binary content, usage and timestamps."""
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    return [
        ModelRequest(
            parts=[
                SystemPromptPart("You are terse.", timestamp=at),
                UserPromptPart(
                    [
                        "What is in this image?",
                        BinaryContent(data=b"\x89PNG\x00\xff\xfe", media_type="image/png"),
                        ImageUrl("https://example.com/a.png"),
                    ],
                    timestamp=at,
                ),
            ],
            instructions="Answer in one line.",
        ),
        ModelResponse(
            parts=[
                ThinkingPart("Let me look.", signature="sig-1", provider_name="anthropic"),
                TextPart("A cat."),
                # Numbers PostgreSQL's jsonb would change, and a NUL it would refuse.
                ToolCallPart(
                    "lookup", {"x": 1.5, "neg": -0.0, "big": 1e16, "nul": "a\x00b"}, "call-1"
                ),
                NativeToolCallPart("web_search", {"q": "cats"}, "native-1", provider_name="openai"),
                NativeToolReturnPart(
                    "web_search", {"hits": [1, 2]}, "native-1", timestamp=at, provider_name="openai"
                ),
                FilePart(BinaryContent(data=b"\x00\x01\x02", media_type="image/png")),
            ],
            usage=RequestUsage(
                input_tokens=10, output_tokens=5, cache_read_tokens=2, details={"reasoning": 3}
            ),
            model_name="model-1",
            timestamp=at,
            provider_name="provider-1",
            provider_response_id="response-1",
            finish_reason="tool_call",
        ),
        ModelRequest(
            parts=[
                ToolReturnPart("lookup", {"rows": [1, 2]}, "call-1", timestamp=at),
                ToolReturnPart(
                    "lookup",
                    "bad arguments",
                    "call-2",
                    timestamp=at,
                    outcome="retried",
                    retry=RetryInfo("validation_error", attempt=1, max_retries=3),
                ),
            ]
        ),
        ModelResponse(parts=[TextPart("not a tool call")], timestamp=at),
        ModelRequest(
            parts=[
                RetryFeedbackPart("answer with a tool", retry=RetryInfo("no_output")),
            ]
        ),
        ModelResponse(parts=[TextPart("Done.")], timestamp=at),
    ]


def as_pydantic_ai_round_trips(messages: list[ModelMessage]) -> list[ModelMessage]:
    """``messages`` after one trip through Pydantic AI's own adapter (which normalizes some)."""
    return ModelMessagesTypeAdapter.validate_json(ModelMessagesTypeAdapter.dump_json(messages))


async def _worker(url: str, namespace: str, mode: str, conversation_id: str, count: int) -> None:
    store = MessageStore(url, namespace=namespace)
    try:
        if mode == "chat":
            agent = chat_agent(store)
            for turn in range(count):
                await agent.run(f"turn {turn}", conversation_id=conversation_id)
            history = await store.aload(conversation_id)
            sys.stdout.write(ModelMessagesTypeAdapter.dump_json(history.messages).decode())
        else:  # "append": many small appends racing another process
            for index in range(count):
                message = ModelRequest(parts=[UserPromptPart(f"{mode}-{index}")])
                await store.aappend(conversation_id, [message])
    finally:
        await pydantic_toast.aclose_storage()


if __name__ == "__main__":
    asyncio.run(_worker(*sys.argv[1:5], int(sys.argv[5])))
