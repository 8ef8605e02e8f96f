"""A chat API whose agent keeps its conversations in PostgreSQL: ``make ai-chat``.

``POST /chat/{conversation_id}`` runs the agent on one message. The ``PersistentConversation``
capability loads the conversation's earlier turns before the run and appends the new turn after
it (one record per turn), so any server process continues any conversation. The agent's
``search_orders`` tool returns about 300 KB of JSON: ``SpillToolOutputs`` stores it and the
model gets a preview plus a ``read_tool_output`` tool to read slices or JSON paths of it;
``GET /chat/{conversation_id}/tool-outputs/{ref}`` gives the app the full output, and
``DELETE /chat/{conversation_id}`` deletes the conversation with its spilled outputs.

Offline by default: a scripted ``FunctionModel`` stands in for the LLM (no key, no network).
With ``AI_CHAT_MODEL=openai:gpt-5`` (or any Pydantic AI model name) and that provider's key and
SDK installed (``pip install openai``), the same app talks to a real model.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel

import pydantic_toast
from pydantic_toast import RecordNotFoundError
from pydantic_toast.ai import MessageStore, PersistentConversation, SpillToolOutputs
from pydantic_toast.fastapi import install_error_handlers

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


class ChatIn(BaseModel):
    """One user message."""

    message: str = Field(min_length=1, max_length=10_000)


class ChatOut(BaseModel):
    """The agent's reply and how long the stored conversation now is."""

    conversation_id: str
    reply: str
    stored_messages: int


def orders(query: str) -> list[dict[str, Any]]:
    """A large, structured tool result: 2,000 orders matching the query."""
    return [
        {
            "id": f"order-{i:05d}",
            "customer": f"customer {i % 97}",
            "status": ["open", "shipped", "returned"][i % 3],
            "total": round(10 + i * 1.37, 2),
            "note": f"{query}: " + "lorem ipsum dolor sit amet " * 3,
        }
        for i in range(2_000)
    ]


def offline_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A scripted stand-in for an LLM that uses the tools as a real one would."""
    last = messages[-1]
    returned = last.parts[-1] if isinstance(last, ModelRequest) else None
    if isinstance(returned, ToolReturnPart) and returned.tool_name == "search_orders":
        note = returned.model_response_str()
        ref = re.search(r'ref="([0-9a-f-]+)"', note)
        if ref is None:  # small enough to be shown whole
            return ModelResponse(parts=[TextPart(f"Found orders: {note[:200]}")])
        arguments = {"ref": ref.group(1), "json_path": "$[0]"}
        return ModelResponse(parts=[ToolCallPart("read_tool_output", arguments)])
    if isinstance(returned, ToolReturnPart) and returned.tool_name == "read_tool_output":
        first = json.loads(returned.model_response_str().partition("\n")[2])
        return ModelResponse(
            parts=[TextPart(f"The first matching order is {first['id']} ({first['status']}).")]
        )
    prompts = [
        part.content
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, UserPromptPart) and isinstance(part.content, str)
    ]
    if "order" in prompts[-1].lower():
        return ModelResponse(parts=[ToolCallPart("search_orders", {"query": prompts[-1]})])
    earlier = f" Earlier you said: {prompts[-2]!r}." if len(prompts) > 1 else ""
    return ModelResponse(
        parts=[TextPart(f"You said {prompts[-1]!r} (turn {len(prompts)}).{earlier}")]
    )


def create_app(database_url: str = DATABASE_URL, model: Model | str | None = None) -> FastAPI:
    """The chat app on ``database_url`` (migrated with ``pydantic-toast migrate``)."""
    spill = SpillToolOutputs(database_url, max_chars=8_000, preview_chars=1_000)
    # Deleting a conversation deletes the tool outputs spilled during it too.
    store = MessageStore(database_url, namespace="ai_chat", spill=spill)
    agent = Agent(
        model or os.environ.get("AI_CHAT_MODEL") or FunctionModel(offline_model),
        instructions="You help with orders. Use read_tool_output to look into large results.",
        capabilities=[PersistentConversation(store), spill],
    )
    agent.tool_plain(orders, name="search_orders")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await pydantic_toast.aclose_storage()

    app = FastAPI(title="Chat on pydantic-toast", lifespan=lifespan)
    # A malformed conversation id (InvalidReferenceError) answers 422, an outage 503.
    install_error_handlers(app)

    @app.post("/chat/{conversation_id}")
    async def chat(conversation_id: str, body: ChatIn) -> ChatOut:
        result = await agent.run(body.message, conversation_id=conversation_id)
        history = await store.aload(conversation_id)
        return ChatOut(
            conversation_id=conversation_id,
            reply=str(result.output),
            stored_messages=len(history.messages),
        )

    @app.get("/chat/{conversation_id}")
    async def history(conversation_id: str) -> list[dict[str, Any]]:
        loaded = await store.aload(conversation_id)
        if not loaded.messages:
            raise HTTPException(404, "no such conversation")
        return ModelMessagesTypeAdapter.dump_python(loaded.messages, mode="json")

    @app.get("/chat")
    async def conversations(limit: int = 50) -> list[dict[str, str]]:
        return [
            {"conversation_id": info.conversation_id, "updated_at": info.updated_at.isoformat()}
            for info in await store.alist(limit=min(max(limit, 1), 1000))
        ]

    @app.delete("/chat/{conversation_id}", status_code=204)
    async def delete(conversation_id: str) -> None:
        if not await store.adelete(conversation_id):
            raise HTTPException(404, "no such conversation")

    @app.get("/chat/{conversation_id}/tool-outputs/{ref}")
    async def tool_output(conversation_id: str, ref: str) -> dict[str, Any]:
        try:
            output = await spill.aload(ref, conversation_id=conversation_id)
        except RecordNotFoundError:
            raise HTTPException(404, "no such tool output") from None
        return {"tool_name": output.tool_name, "content": output.content}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


app = create_app()
