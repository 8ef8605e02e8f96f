"""The Pydantic AI chat example on PostgreSQL: memory across turns and restarts, spilled results."""

from __future__ import annotations

import re
import subprocess
from uuid import uuid4

import httpx
import pytest
from examples.ai_chat.app import create_app

from tests import servers

pytestmark = pytest.mark.postgresql


async def test_the_chat_remembers_turns_and_spills_large_results(
    postgres_database_url: str,
) -> None:
    """Turns are remembered; the 300 KB tool result is spilled, read, and kept for audit."""
    app = create_app(postgres_database_url)
    conversation = f"chat-{uuid4().hex}"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://chat") as client:
        first = (await client.post(f"/chat/{conversation}", json={"message": "hello"})).json()
        assert first["reply"] == "You said 'hello' (turn 1)."
        assert first["stored_messages"] == 2
        second = await client.post(f"/chat/{conversation}", json={"message": "my orders?"})
        assert second.json()["reply"] == "The first matching order is order-00000 (open)."
        third = (await client.post(f"/chat/{conversation}", json={"message": "thanks"})).json()
        assert third["reply"] == "You said 'thanks' (turn 3). Earlier you said: 'my orders?'."

        history = (await client.get(f"/chat/{conversation}")).json()
        returns = [
            part["content"]
            for message in history
            for part in message["parts"]
            if part["part_kind"] == "tool-return" and part["tool_name"] == "search_orders"
        ]
        assert len(returns) == 1
        assert returns[0].startswith("[The JSON output of search_orders is")
        assert len(returns[0]) < 2_000
        ref = re.search(r'ref="([0-9a-f-]+)"', returns[0])
        assert ref is not None
        output_url = f"/chat/{conversation}/tool-outputs/{ref.group(1)}"
        full = (await client.get(output_url)).json()
        assert full["tool_name"] == "search_orders"
        assert len(full["content"]) == 2_000
        other = f"/chat/other-{conversation}/tool-outputs/{ref.group(1)}"
        assert (await client.get(other)).status_code == 404

        listed = (await client.get("/chat")).json()
        assert conversation in [item["conversation_id"] for item in listed]
        assert (await client.delete(f"/chat/{conversation}")).status_code == 204
        assert (await client.get(f"/chat/{conversation}")).status_code == 404
        assert (await client.get(output_url)).status_code == 404  # deleted with it


@pytest.mark.parametrize("conversation", ["x" * 201, "a%00b"])
async def test_a_malformed_conversation_id_is_a_client_error(
    postgres_database_url: str, conversation: str
) -> None:
    """A conversation id too long or with a NUL answers 422 at the path parameter (it was an
    unhandled StorageUsageError: 500), on every route that takes one."""
    app = create_app(postgres_database_url)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://chat") as client:
        for method, path, body in [
            ("POST", f"/chat/{conversation}", {"message": "hello"}),
            ("GET", f"/chat/{conversation}", None),
            ("DELETE", f"/chat/{conversation}", None),
            ("GET", f"/chat/{conversation}/tool-outputs/{uuid4()}", None),
        ]:
            response = await client.request(method, path, json=body)
            assert response.status_code == 422, (method, path[:20], response.text)
            (problem,) = response.json()["detail"]
            assert problem["loc"] == ["path", "conversation_id"]
            assert problem["msg"] == "Invalid reference or id"


def _start(database_url: str, port: int) -> subprocess.Popen[bytes]:
    # 120 s: importing pydantic_ai takes seconds on a busy machine.
    return servers.start_todo_service(
        database_url, port, app="examples.ai_chat.app:app", timeout=120
    )


@pytest.mark.slow
def test_a_conversation_continues_after_the_server_restarts(postgres_database_url: str) -> None:
    """A restarted uvicorn process continues the conversation from PostgreSQL."""
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}/chat/restart-{uuid4().hex}"
    service = _start(postgres_database_url, port)
    try:
        assert httpx.post(url, json={"message": "before"}, timeout=30).status_code == 200
    finally:
        servers.stop_todo_service(service)
    service = _start(postgres_database_url, port)
    try:
        reply = httpx.post(url, json={"message": "after"}, timeout=30).json()["reply"]
    finally:
        servers.stop_todo_service(service)
    assert reply == "You said 'after' (turn 2). Earlier you said: 'before'."
