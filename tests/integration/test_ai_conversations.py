"""Persistent Pydantic AI conversations on every backend (offline models, real servers)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pydantic_core
import pytest
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, RunContext
from pydantic_ai.capabilities import ProcessHistory
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
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_toast import (
    InvalidReferenceError,
    StorageConfigurationError,
    StorageUsageError,
    StoredDataError,
    StoredRecord,
)
from pydantic_toast.ai import MessageStore, PersistentConversation, SpillToolOutputs
from pydantic_toast.ai._storage import backend
from pydantic_toast.backends.base import Capability
from pydantic_toast.runtime.storage import current_storage
from tests.ai_helpers import as_pydantic_ai_round_trips, chat_agent, every_part
from tests.integration.conftest import BACKENDS, S3

ROOT = Path(__file__).resolve().parents[2]
SERVERS = [param for param in BACKENDS if param.id != "memory"]
# Which backends expire records is read from their capabilities (the store accepts ttl= exactly
# where Capability.TTL is declared), so a backend gaining expiry moves to EXPIRING by itself.
# The refusal elsewhere is tested on a backend without expiry in tests/unit/test_ai_extra.py.
_TTL = {
    param.id: Capability.TTL in current_storage().registry.class_for(str(param.id)).capabilities
    for param in BACKENDS
}
EXPIRING = [param for param in BACKENDS if _TTL[param.id]]
REDIS = [param for param in BACKENDS if param.id == "redis"]


def _store(url: str, **options: Any) -> MessageStore:
    """A store of this test's own (the PostgreSQL database is shared by the session's tests)."""
    return MessageStore(url, namespace=f"t{uuid4().hex[:12]}", **options)


def _turn(text: str) -> list[ModelRequest | ModelResponse]:
    return [ModelRequest(parts=[UserPromptPart(text)]), ModelResponse(parts=[TextPart(text)])]


def _prompts(messages: list[object]) -> list[str]:
    return [
        part.content
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, UserPromptPart) and isinstance(part.content, str)
    ]


def _worker(url: str, namespace: str, mode: str, conversation_id: str, count: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.ai_helpers",
        url,
        namespace,
        mode,
        conversation_id,
        str(count),
    ]


def _run_worker(url: str, namespace: str, mode: str, conversation_id: str, count: int) -> str:
    process = subprocess.run(
        _worker(url, namespace, mode, conversation_id, count),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    return process.stdout


async def test_every_part_kind_round_trips_exactly(storage_url: str) -> None:
    """Every message part kind, binary content, usage and timestamps come back as stored."""
    store = _store(storage_url)
    messages = every_part()
    await store.aappend("parts", messages)
    loaded = (await store.aload("parts")).messages
    expected = as_pydantic_ai_round_trips(messages)
    assert loaded == expected
    assert ModelMessagesTypeAdapter.dump_json(loaded) == ModelMessagesTypeAdapter.dump_json(
        expected
    )
    # Stored again and loaded again, nothing changes any more (a fixed point).
    await store.aappend("parts-again", loaded)
    assert (await store.aload("parts-again")).messages == loaded


async def test_agent_turns_are_restored_by_the_capability(storage_url: str) -> None:
    """Each run sees the earlier turns; the store holds exactly what the runs produced."""
    store = _store(storage_url)
    agent = chat_agent(store)
    first = await agent.run("hello", conversation_id="chat")
    second = await agent.run("and then?", conversation_id="chat")
    assert first.output == "hello"
    assert second.output == "hello | and then?"
    history = await store.aload("chat")
    assert history.messages == [*first.new_messages(), *second.new_messages()]
    assert second.all_messages() == history.messages


async def test_app_managed_history_is_used_as_given(storage_url: str) -> None:
    """With message_history= the capability restores nothing and still appends the new turn."""
    store = _store(storage_url)
    agent = chat_agent(store)
    await agent.run("stored turn", conversation_id="own")
    result = await agent.run("fresh", message_history=_turn("given"), conversation_id="own")
    assert result.output == "given | fresh"
    assert _prompts((await store.aload("own")).messages) == ["stored turn", "fresh"]


async def test_plain_functions_keep_a_conversation(storage_url: str) -> None:
    """aload/aappend around agent.run(message_history=...) keep the conversation too."""
    store = _store(storage_url)
    agent = chat_agent(MessageStore("memory://unused-" + uuid4().hex))
    for prompt in ["a", "b", "c"]:
        history = await store.aload("plain")
        result = await agent.run(prompt, message_history=history.messages or None)
        await store.aappend("plain", result.new_messages(), after=history.position)
    assert result.output == "a | b | c"
    assert _prompts((await store.aload("plain")).messages) == ["a", "b", "c"]


@pytest.mark.slow
@pytest.mark.parametrize("storage_url", SERVERS, indirect=True)
async def test_conversation_restored_exactly_in_another_process(storage_url: str) -> None:
    """Turns written by one process load identically in another, and continue there."""
    store = _store(storage_url)
    written = _run_worker(storage_url, store.namespace, "chat", "across", 3)
    loaded = (await store.aload("across")).messages
    assert ModelMessagesTypeAdapter.dump_json(loaded).decode() == written
    assert len(loaded) == 6
    result = await chat_agent(store).run("turn 3", conversation_id="across")
    assert result.output == "turn 0 | turn 1 | turn 2 | turn 3"


async def test_concurrent_runs_lose_and_duplicate_nothing(storage_url: str) -> None:
    """Twenty runs of one conversation at once: every turn is stored once, whole, listed once."""
    store = _store(storage_url)
    agent = chat_agent(store)
    await agent.run("start", conversation_id="race")
    (started,) = await store.alist()
    await asyncio.gather(*(agent.run(f"run {i}", conversation_id="race") for i in range(20)))
    history = await store.aload("race")
    prompts = _prompts(history.messages)
    assert prompts[0] == "start"
    assert sorted(prompts[1:]) == sorted(f"run {i}" for i in range(20))
    assert history.usage.requests == 21  # each run's usage stored once with its turn
    # The header (rewritten by every append) still names the conversation once, with the
    # time it started: it holds nothing a concurrent append could lose.
    (listed,) = await store.alist()
    assert (listed.conversation_id, listed.created_at) == ("race", started.created_at)
    assert listed.updated_at >= started.updated_at
    messages = history.messages
    # Whole turns: each request is followed by its own response.
    for request, response in zip(messages[::2], messages[1::2], strict=True):
        assert isinstance(request, ModelRequest)
        assert isinstance(response, ModelResponse)


@pytest.mark.slow
@pytest.mark.parametrize("storage_url", SERVERS, indirect=True)
async def test_two_processes_appending_at_once_lose_nothing(storage_url: str) -> None:
    """Two processes appending 40 batches each to one conversation: all 80 are stored once."""
    store = _store(storage_url)
    processes = [
        await asyncio.create_subprocess_exec(
            *_worker(storage_url, store.namespace, name, "shared", 40),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stderr=asyncio.subprocess.PIPE,
        )
        for name in ("left", "right")
    ]
    for process in processes:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode == 0, stderr.decode()[-2000:]
    prompts = _prompts((await store.aload("shared")).messages)
    assert sorted(prompts) == sorted(f"{side}-{i}" for side in ("left", "right") for i in range(40))
    # Each process's own appends keep their order.
    for side in ("left", "right"):
        assert [p for p in prompts if p.startswith(side)] == [f"{side}-{i}" for i in range(40)]


async def test_usage_is_stored_per_turn_and_totalled(storage_url: str) -> None:
    """Each run's usage is stored with its turn; History gives it per turn and in total."""
    store = _store(storage_url)
    agent = chat_agent(store)
    first = await agent.run("hello", conversation_id="costs")
    second = await agent.run("and then?", conversation_id="costs")
    history = await store.aload("costs")
    assert history.turn_usage == [first.usage, second.usage]
    assert history.usage == first.usage + second.usage
    assert history.usage.requests == 2
    assert history.usage.input_tokens == first.usage.input_tokens + second.usage.input_tokens
    assert second.usage.input_tokens > first.usage.input_tokens > 0  # the history was sent
    recent = await store.aload("costs", limit=1)
    assert recent.usage == second.usage  # the loaded turns only


async def test_usage_is_summed_from_the_messages_when_not_given(storage_url: str) -> None:
    """aappend without usage= stores what the responses carry: requests, tokens, tool calls."""
    store = _store(storage_url)
    messages = every_part()
    appended = await store.aappend("parts", messages)
    assert appended is not None
    responses = [m for m in messages if isinstance(m, ModelResponse)]
    assert appended.usage.requests == len(responses)
    assert appended.usage.input_tokens == sum(r.usage.input_tokens for r in responses)
    assert appended.usage.output_tokens == sum(r.usage.output_tokens for r in responses)
    assert appended.usage.input_tokens > 0
    assert (await store.aload("parts")).usage == appended.usage


async def test_a_turn_written_after_reading_sorts_after_it_despite_clock_skew(
    storage_url: str,
) -> None:
    """A turn appended after loading sorts after the loaded ones, even if their clock ran ahead."""
    ahead = _store(storage_url)
    behind = MessageStore(storage_url, namespace=ahead.namespace)
    # A process whose clock runs an hour ahead wrote the first turn.
    future = datetime.now(UTC) + timedelta(hours=1)
    await ahead.aappend("skew", _turn("first"), after=future)
    history = await behind.aload("skew")
    await behind.aappend("skew", _turn("second"), after=history.position)
    assert _prompts((await behind.aload("skew")).messages) == ["first", "second"]


async def test_an_after_no_stored_position_can_follow_is_refused_before_writing(
    storage_url: str,
) -> None:
    """An ``after`` at the last microsecond a store keeps, or past it, is refused up front and
    the conversation stays empty (PostgreSQL stored the next position as infinity)."""
    store = _store(storage_url)
    end = datetime.max.replace(tzinfo=UTC)
    for after in (end, end - timedelta(microseconds=1)):
        with pytest.raises(StorageConfigurationError, match="after must be a position before"):
            await store.aappend("edge", _turn("late"), after=after)
    assert (await store.aload("edge")).messages == []
    await store.aappend("edge", _turn("last"), after=end - timedelta(microseconds=2))
    assert _prompts((await store.aload("edge")).messages) == ["last"]
    # The store took the last position: every later append is refused the same way (its
    # position had moved past the end, and each append then raised a bare OverflowError).
    for _ in range(2):
        with pytest.raises(StorageConfigurationError, match="no position follows"):
            await store.aappend("edge", _turn("later"))
    with pytest.raises(StorageConfigurationError, match="after must be a position before"):
        await store.aappend("edge", _turn("late"), after=end - timedelta(microseconds=1))
    assert _prompts((await store.aload("edge")).messages) == ["last"]


async def test_pages_and_limits_load_whole_turns_in_order(storage_url: str) -> None:
    """Loading in small pages gives every turn once, in order; a limit keeps whole turns."""
    store = _store(storage_url, page_size=4)
    for i in range(11):
        await store.aappend("long", _turn(f"t{i}"))
    history = await store.aload("long")
    assert _prompts(history.messages) == [f"t{i}" for i in range(11)]
    assert history.complete
    recent = await store.aload("long", limit=5)
    assert _prompts(recent.messages) == [f"t{i}" for i in range(8, 11)]  # 3 whole turns >= 5
    assert not recent.complete
    pages = [_prompts(page) async for page in store.apages("long")]
    assert pages == [["t7", "t8", "t9", "t10"], ["t3", "t4", "t5", "t6"], ["t0", "t1", "t2"]]


async def test_a_limit_reaching_the_first_turn_loads_a_complete_history(storage_url: str) -> None:
    """A limit met by the oldest turn leaves nothing out: the history says it is complete, so
    its usage is the whole conversation's."""
    store = _store(storage_url, page_size=4)
    for i in range(3):
        await store.aappend("short", _turn(f"t{i}"))
    whole = await store.aload("short", limit=6)
    assert _prompts(whole.messages) == ["t0", "t1", "t2"]
    assert whole.complete
    assert whole.usage == (await store.aload("short")).usage
    assert not (await store.aload("short", limit=4)).complete


async def test_a_limit_never_separates_a_tool_return_from_its_call(storage_url: str) -> None:
    """A run resumed after a tool approval stores the tool return as its own turn; a limit
    landing on it loads the turn holding the call too (providers refuse a lone return)."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        (last,) = messages[-1].parts
        if isinstance(last, UserPromptPart) and last.content == "delete a":
            return ModelResponse(parts=[ToolCallPart("delete_file", {"path": "a"}, "call-1")])
        return ModelResponse(parts=[TextPart("done")])

    store = _store(storage_url)
    agent = Agent(
        FunctionModel(model),
        output_type=[str, DeferredToolRequests],
        capabilities=[PersistentConversation(store)],
    )
    agent.tool_plain(requires_approval=True, name="delete_file")(lambda path: f"deleted {path}")
    await agent.run("hello", conversation_id="approve")
    asked = await agent.run("delete a", conversation_id="approve")
    assert isinstance(asked.output, DeferredToolRequests)
    approved = DeferredToolResults(approvals={"call-1": True})
    await agent.run(conversation_id="approve", deferred_tool_results=approved)
    recent = await store.aload("approve", limit=2)
    kinds = [[part.part_kind for part in message.parts] for message in recent.messages]
    assert kinds == [["user-prompt"], ["tool-call"], ["tool-return"], ["text"]]
    assert not recent.complete


async def test_conversations_are_listed_and_deleted(storage_url: str) -> None:
    """Listing shows each conversation once; deleting one removes all its turns and no other's."""
    store = _store(storage_url)
    for turn in range(3):
        await store.aappend("doomed", _turn(f"d{turn}"))
    await store.aappend("kept", _turn("k"))
    listed = {info.conversation_id for info in await store.alist()}
    assert listed == {"doomed", "kept"}
    assert await store.adelete("doomed") == 3
    assert (await store.aload("doomed")).messages == []
    assert [info.conversation_id for info in await store.alist()] == ["kept"]
    assert _prompts((await store.aload("kept")).messages) == ["k"]
    assert await store.adelete("never-stored") == 0


async def test_ids_an_object_store_reads_as_another_path_are_refused(storage_url: str) -> None:
    """Ids with an empty, '.' or '..' part between slashes, or a backslash, are refused: on
    SeaweedFS's S3, adelete("victim/") deleted the conversation "victim"."""
    store = _store(storage_url)
    spill = SpillToolOutputs(storage_url, namespace=store.namespace)
    await store.aappend("victim", _turn("kept"))
    await store.aappend("user-1/chat-3", _turn("kept too"))
    for id in ["victim/", "/victim", "victim//x", ".", "..", "./victim", "x/../victim", "x\\y"]:
        with pytest.raises(InvalidReferenceError, match="between slashes"):
            await store.adelete(id)
        with pytest.raises(InvalidReferenceError):
            await store.aappend(id, _turn("x"))
        with pytest.raises(InvalidReferenceError):
            await spill.adelete_conversation(id)
    assert _prompts((await store.aload("victim")).messages) == ["kept"]
    assert _prompts((await store.aload("user-1/chat-3")).messages) == ["kept too"]


async def test_a_conversation_is_deleted_apart_from_those_under_its_id(storage_url: str) -> None:
    """Deleting "a" leaves "a/b" whole: on S3 the listing of "a" named "a/b"'s batches too,
    which its deletes could not find, so adelete("a") listed them again forever."""
    store = _store(storage_url, page_size=2)
    for id in ["a/b", "a", "a/c", "a"]:
        await store.aappend(id, _turn(id))
    assert _prompts((await store.aload("a")).messages) == ["a", "a"]
    assert await asyncio.wait_for(store.adelete("a"), timeout=60) == 2
    assert _prompts((await store.aload("a/b")).messages) == ["a/b"]
    assert _prompts((await store.aload("a/c")).messages) == ["a/c"]
    assert sorted(info.conversation_id for info in await store.alist()) == ["a/b", "a/c"]


async def test_two_deletes_of_one_conversation_at_once_both_succeed(storage_url: str) -> None:
    """Two adelete calls of one conversation at once both end without error, the second
    started 0-2 ms after the first: the page whose records the other removed (between this
    one's listing and its deletes) was taken for an index out of step and raised."""
    store = _store(storage_url)

    async def delete_later(delay: float) -> int:
        await asyncio.sleep(delay)
        return await store.adelete("shared")

    for round in range(20):
        for turn in range(3):
            await store.aappend("shared", _turn(f"r{round}t{turn}"))
        counts = await asyncio.wait_for(
            asyncio.gather(store.adelete("shared"), delete_later(round % 3 / 1000)), timeout=60
        )
        assert all(0 <= count <= 3 for count in counts), counts
        assert (await store.aload("shared")).messages == []
        assert await store.alist() == []


@pytest.mark.parametrize("storage_url", [S3], indirect=True)
async def test_an_index_entry_without_its_record_stops_a_delete(storage_url: str) -> None:
    """An S3 index entry whose record is gone (a lifecycle rule) is listed by every page and
    deleted by none: adelete deletes the rest, then raises naming it instead of looping."""
    store = _store(storage_url)
    await store.aappend("stray", _turn("x"))
    s3 = (await backend(storage_url)).backend
    stray = uuid4()
    entry = s3.index_key(store._batch_class("stray"), datetime.now(UTC), stray)  # type: ignore[attr-defined]
    await s3._connected().put_object(Bucket=s3._options.bucket, Key=entry)  # type: ignore[attr-defined]
    with pytest.raises(StoredDataError, match=str(stray)):
        await asyncio.wait_for(store.adelete("stray"), timeout=60)
    assert (await store.aload("stray")).messages == []


async def test_namespaces_keep_apps_apart(storage_url: str) -> None:
    """Two stores with different namespaces on one storage never see each other's turns."""
    one = _store(storage_url)
    two = _store(storage_url)
    await one.aappend("same-id", _turn("one"))
    assert (await two.aload("same-id")).messages == []
    assert await two.alist() == []


@pytest.mark.parametrize("storage_url", EXPIRING, indirect=True)
async def test_conversations_expire_after_ttl(storage_url: str) -> None:
    """With a ttl, an idle conversation disappears whole: turns and listing."""
    store = _store(storage_url, ttl=2.0)  # margins for a loaded machine
    await store.aappend("brief", _turn("soon gone"))
    assert len((await store.aload("brief")).messages) == 2
    await asyncio.sleep(2.5)
    assert (await store.aload("brief")).messages == []
    assert await store.alist() == []


@pytest.mark.parametrize("storage_url", EXPIRING, indirect=True)
async def test_an_active_conversation_forgets_whole_old_turns(storage_url: str) -> None:
    """Turns older than ttl expire whole; the header lives on while turns are appended."""
    store = _store(storage_url, ttl=2.0)
    await store.aappend("active", _turn("old"))
    await asyncio.sleep(1.2)
    await store.aappend("active", _turn("new"))
    await asyncio.sleep(1.2)  # "old" is 2.4 s old (gone), "new" and the header 1.2 s
    history = await store.aload("active")
    assert _prompts(history.messages) == ["new"]
    assert len(history.messages) == 2  # the whole turn, never half of one
    assert [info.conversation_id for info in await store.alist()] == ["active"]


@pytest.mark.parametrize("storage_url", REDIS, indirect=True)
async def test_a_conversation_with_a_damaged_record_can_still_be_deleted(storage_url: str) -> None:
    """A batch whose Redis value is not a record at all fails loading, naming its key, and
    adelete (the remedy the error gives) deletes it with the rest of the conversation."""
    import redis.asyncio as aioredis

    store = _store(storage_url)
    for turn in range(3):
        appended = await store.aappend("damaged", _turn(f"t{turn}"))
        assert appended is not None
        if turn == 1:
            damaged = appended.batch_id
    connected = await backend(storage_url)
    key = connected.backend.key(store._batch_class("damaged"), damaged)  # type: ignore[attr-defined]
    client = aioredis.Redis.from_url(storage_url.split("?")[0])
    try:
        await client.set(key, b"not a record")
        with pytest.raises(StoredDataError, match="left untouched"):
            await store.aload("damaged")
        assert await store.adelete("damaged") == 3
        assert not await client.exists(key)
    finally:
        await client.aclose()
    assert (await store.aload("damaged")).messages == []
    assert await store.alist() == []


@pytest.mark.parametrize("storage_url", REDIS, indirect=True)
async def test_a_value_that_is_no_record_is_skipped_with_skip_invalid(
    storage_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With skip_invalid, a batch or header whose Redis value is no record at all (a plain
    string SET by something else) is left out with a warning naming its key, as a batch whose
    data cannot be read is on every backend: the turns and conversations around it load, over
    several pages; without skip_invalid it still raises."""
    import redis.asyncio as aioredis

    store = _store(storage_url, skip_invalid=True, page_size=2)
    batches = []
    for turn in range(5):
        appended = await store.aappend("mixed", _turn(f"t{turn}"))
        assert appended is not None
        batches.append(appended.batch_id)
    for name in ("other", "last"):
        await store.aappend(name, _turn(name))
    redis_backend = (await backend(storage_url)).backend
    batch_key = redis_backend.key(store._batch_class("mixed"), batches[2])  # type: ignore[attr-defined]
    headers = await redis_backend.list_records(store._header_class, limit=3)  # newest first
    header_key = redis_backend.key(store._header_class, headers[1].id)  # type: ignore[attr-defined]
    client = aioredis.Redis.from_url(storage_url.split("?")[0])
    try:
        await client.set(batch_key, b"not a record")
        await client.set(header_key, b"not a record")
        strict = MessageStore(storage_url, namespace=store.namespace, page_size=2)
        with pytest.raises(StoredDataError, match="left untouched"):
            await strict.aload("mixed")
        with pytest.raises(StoredDataError, match="left untouched"):
            await strict.alist()
        with caplog.at_level("WARNING", logger="pydantic_toast"):
            history = await store.aload("mixed")
            listed = await store.alist()
    finally:
        await client.aclose()
    assert _prompts(history.messages) == ["t0", "t1", "t3", "t4"]
    assert [info.conversation_id for info in listed] == ["last", "mixed"]
    assert batch_key in caplog.text
    assert header_key in caplog.text


@pytest.mark.parametrize("storage_url", REDIS, indirect=True)
async def test_a_damaged_record_its_id_cannot_delete_stops_a_delete(storage_url: str) -> None:
    """A damaged record indexed by hand under its id in capitals is listed under a key its
    id does not give: adelete raises saying deleting it found nothing (not blaming the index)
    instead of looping, and deletes the rest once it is removed by hand, as the error says."""
    import redis.asyncio as aioredis

    store = _store(storage_url)
    await store.aappend("odd", _turn("x"))
    redis_backend = (await backend(storage_url)).backend
    class_name = store._batch_class("odd")
    odd = uuid4()
    key = redis_backend.key(class_name, odd)  # type: ignore[attr-defined]
    client = aioredis.Redis.from_url(storage_url.split("?")[0])
    try:
        await client.set(key[:-36] + str(odd).upper(), b"not a record")
        index = redis_backend.index_key(class_name)  # type: ignore[attr-defined]
        await client.zadd(index, {str(odd).upper(): datetime.now(UTC).timestamp()})
        with pytest.raises(StoredDataError, match=f"{odd}.*deletes nothing"):
            await asyncio.wait_for(store.adelete("odd"), timeout=60)
        await client.delete(key[:-36] + str(odd).upper())
        await client.zrem(index, str(odd).upper())
    finally:
        await client.aclose()
    assert await store.adelete("odd") == 1
    assert (await store.aload("odd")).messages == []


async def test_tampered_or_foreign_records_are_refused(storage_url: str) -> None:
    """Stored history that is not a valid batch of this conversation raises, naming the record."""
    store = _store(storage_url)
    await store.aappend("victim", _turn("real"))
    class_name = store._batch_class("victim")
    now = datetime.now(UTC)
    bad = {
        "wrong shape": {"messages": "[]"},
        "other conversation": {"conversation_id": "other", "count": 1, "messages": "[]"},
        "invalid usage": {
            "conversation_id": "victim",
            "count": 2,
            "messages": ModelMessagesTypeAdapter.dump_json(_turn("x")).decode(),
            "usage": '{"requests": "many"}',
        },
        "invalid messages": {
            "conversation_id": "victim",
            "count": 1,
            "messages": '[{"kind": "request", "parts": [{"part_kind": "evil"}]}]',
        },
    }
    target = await backend(store._url)
    for problem, data in bad.items():
        record = StoredRecord(
            class_name=class_name,
            id=uuid4(),
            data=pydantic_core.to_json(data),
            schema_version=1,
            created_at=now + timedelta(seconds=1),
            updated_at=now,
        )
        await target.save_records([record])
        with pytest.raises(StoredDataError, match=str(record.id)) as caught:
            await store.aload("victim")
        assert caught.value.id == record.id, problem
        assert await target.delete(record.id, class_name)
    assert _prompts((await store.aload("victim")).messages) == ["real"]


async def test_messages_that_no_longer_validate_are_refused_without_their_content(
    storage_url: str,
) -> None:
    """A stored batch whose messages no longer validate (a part kind this pydantic-ai does
    not know) raises StoredDataError naming the record and where, but neither the stored tag
    (which Pydantic's message quotes) nor the prompt, in its message or its traceback."""
    store = _store(storage_url)
    await store.aappend("victim", _turn("real"))
    class_name = store._batch_class("victim")
    messages = pydantic_core.from_json(
        ModelMessagesTypeAdapter.dump_json(_turn("Sekr1t-Prompt-Text"))
    )
    messages[0]["parts"][0]["part_kind"] = "Sekr1t-Part-Kind"
    now = datetime.now(UTC)
    record = StoredRecord(
        class_name=class_name,
        id=uuid4(),
        data=pydantic_core.to_json(
            {
                "conversation_id": "victim",
                "count": 2,
                "messages": pydantic_core.to_json(messages).decode(),
            }
        ),
        schema_version=1,
        created_at=now + timedelta(seconds=1),
        updated_at=now,
    )
    target = await backend(store._url)
    await target.save_records([record])
    with pytest.raises(StoredDataError, match=str(record.id)) as caught:
        await store.aload("victim")
    shown = "".join(traceback.format_exception(caught.value))
    assert "0.request.parts.0: a validator refused the stored value (union_tag_invalid)" in str(
        caught.value
    )
    assert "Sekr1t" not in shown
    assert await target.delete(record.id, class_name)


async def test_a_damaged_header_can_be_skipped_in_listings(
    storage_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One damaged conversation header fails every listing, naming it; with skip_invalid the
    other conversations are listed, and the damaged one is logged."""
    store = _store(storage_url, skip_invalid=True)
    await store.aappend("first", _turn("a"))
    damaged = StoredRecord(
        class_name=store._header_class,
        id=uuid4(),
        data=pydantic_core.to_json({"not": "a header"}),
        schema_version=1,
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
    )
    await (await backend(store._url)).save_records([damaged])
    await store.aappend("second", _turn("b"))
    strict = MessageStore(storage_url, namespace=store.namespace)
    with pytest.raises(StoredDataError, match=str(damaged.id)):
        await strict.alist()
    with caplog.at_level("WARNING", logger="pydantic_toast"):
        assert [info.conversation_id for info in await store.alist()] == ["second", "first"]
        # Pages of one: the page after "second" holds only the damaged header, left out; it
        # goes on to "first" instead of coming back empty (read as the end of the list).
        first_page = await store.alist(limit=1)
        second_page = await store.alist(limit=1, after=first_page[-1])
        assert await store.alist(limit=1, after=second_page[-1]) == []
    assert [info.conversation_id for info in first_page + second_page] == ["second", "first"]
    assert str(damaged.id) in caplog.text


async def test_invalid_batches_can_be_skipped_with_a_warning(
    storage_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With skip_invalid, a tampered batch is left out and logged; the other turns load."""
    store = _store(storage_url, skip_invalid=True)
    await store.aappend("mixed", _turn("before"))
    now = datetime.now(UTC)
    tampered = StoredRecord(
        class_name=store._batch_class("mixed"),
        id=uuid4(),
        data=pydantic_core.to_json({"conversation_id": "mixed", "count": 1, "messages": "[{}]"}),
        schema_version=1,
        created_at=now + timedelta(seconds=1),
        updated_at=now,
    )
    await (await backend(store._url)).save_records([tampered])
    await store.aappend("mixed", _turn("after"), after=now + timedelta(seconds=1))
    with caplog.at_level("WARNING", logger="pydantic_toast"):
        assert _prompts((await store.aload("mixed")).messages) == ["before", "after"]
    assert str(tampered.id) in caplog.text


def test_bad_settings_fail_at_once_with_the_fix() -> None:
    """Names and sizes are checked when the store is made, with messages naming the fix."""
    with pytest.raises(StorageConfigurationError, match="namespace"):
        MessageStore("memory://", namespace="has space")
    with pytest.raises(StorageConfigurationError, match="page_size"):
        MessageStore("memory://", page_size=0)
    with pytest.raises(StorageConfigurationError, match="ttl"):
        MessageStore("memory://", ttl=-1)


@pytest.mark.parametrize("limit", [0, -1, 2.5, True, "3"])
async def test_a_limit_that_is_not_an_int_of_1_or_more_is_refused(limit: object) -> None:
    """aload(limit=0) fails with the accepted range instead of loading nothing; a float, a
    bool or a str is refused too, naming its type."""
    with pytest.raises(StorageUsageError, match="limit must be an int of 1 or more, got"):
        await MessageStore("memory://").aload("c", limit=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, 1001, 2.5, True, None])
async def test_a_listing_limit_that_is_not_an_int_from_1_to_1000_is_refused(
    storage_url: str, limit: object
) -> None:
    """alist(limit=...) refuses as page() does, before any I/O, on every backend (a float
    failed inside SQLite, was refused by Redis as a bad reply, and listed on memory://)."""
    store = MessageStore(storage_url, namespace=f"t{uuid4().hex[:12]}")
    with pytest.raises(StorageUsageError, match="limit must be an int from 1 to 1000, got"):
        await store.alist(limit=limit)  # type: ignore[arg-type]


async def test_streamed_and_iterated_runs_are_kept_too(storage_url: str) -> None:
    """run_stream and iter restore and append like run."""
    store = _store(storage_url)
    agent = chat_agent(store)
    async with agent.run_stream("streamed", conversation_id="modes") as streamed:
        await streamed.get_output()
    async with agent.iter("iterated", conversation_id="modes") as run:
        async for _ in run:
            pass
    assert run.result is not None
    assert run.result.output == "streamed | iterated"
    assert _prompts((await store.aload("modes")).messages) == ["streamed", "iterated"]


async def test_a_stream_left_early_appends_nothing(storage_url: str) -> None:
    """A stream the app stops reading ends no run: nothing is appended (as docs/ai.md says),
    and the next run continues from the turns before it."""
    store = _store(storage_url)
    agent = chat_agent(store)
    await agent.run("kept", conversation_id="early")
    async with agent.run_stream("left", conversation_id="early") as streamed:
        async for _ in streamed.stream_text(delta=True):
            break
    assert _prompts((await store.aload("early")).messages) == ["kept"]
    await agent.run("next", conversation_id="early")
    assert _prompts((await store.aload("early")).messages) == ["kept", "next"]


def _three_tool_calls_then_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls the tool ``step`` three times in each run, then answers."""
    returns = 0
    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            if any(isinstance(part, UserPromptPart) for part in message.parts):
                break
            returns += any(isinstance(part, ToolReturnPart) for part in message.parts)
    if returns < 3:
        return ModelResponse(parts=[ToolCallPart("step", {})])
    return ModelResponse(parts=[TextPart(f"saw {len(messages)} messages")])


@pytest.mark.parametrize("keeps_the_run", [False, True], ids=["last-n", "run-aware"])
async def test_a_history_processor_keeping_the_runs_messages_keeps_its_prompts(
    storage_url: str, keeps_the_run: bool
) -> None:
    """What docs/ai.md says of history processors: one keeping the last 6 messages drops the
    prompt of an 8-message run from new_messages(), so it is not stored; the guide's recipe,
    keeping the current run's messages too, stores every prompt."""

    def last_messages(ctx: RunContext[None], messages: list[ModelMessage]) -> list[ModelMessage]:
        older = messages[:-6] if keeps_the_run else []
        return [m for m in older if m.run_id == ctx.run_id] + messages[-6:]

    store = _store(storage_url)
    agent = Agent(
        FunctionModel(_three_tool_calls_then_answer),
        capabilities=[PersistentConversation(store), ProcessHistory(last_messages)],
    )
    agent.tool_plain(name="step")(lambda: "ok")
    for prompt in ("p0", "p1"):
        await agent.run(prompt, conversation_id="processed")
    stored = (await store.aload("processed")).messages
    assert _prompts(stored) == (["p0", "p1"] if keeps_the_run else [])
    assert len(stored) == (16 if keeps_the_run else 14)
