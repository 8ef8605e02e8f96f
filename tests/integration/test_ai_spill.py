"""Large tool outputs spilled to storage and read back in slices, on every backend."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from uuid import uuid4

import pytest
from pydantic_ai import Agent, AgentRunResult
from pydantic_ai.messages import (
    ImageUrl,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_toast import RecordNotFoundError, StorageConfigurationError, StorageUsageError
from pydantic_toast.ai import (
    MessageStore,
    PersistentConversation,
    SpillToolOutputs,
    select_json_path,
)
from tests.integration.test_ai_conversations import EXPIRING

MEGABYTE_TEXT = "".join(f"line {i:06d}: {'abcdefghij' * 4}\n" for i in range(19_700))[:1_000_000]
ROWS = {"rows": [{"id": i, "name": f"row {i}", "score": i / 7} for i in range(12_000)]}


def _spill(url: str, **options: Any) -> SpillToolOutputs:
    return SpillToolOutputs(url, namespace=f"t{uuid4().hex[:12]}", **options)


def _last_return(messages: list[ModelMessage]) -> ToolReturnPart | None:
    last = messages[-1]
    if isinstance(last, ModelRequest) and isinstance(last.parts[-1], ToolReturnPart):
        return last.parts[-1]
    return None


def _ref(note: str) -> str:
    found = re.search(r'ref="([0-9a-f-]+)"', note)
    assert found is not None, note[:300]
    return found.group(1)


def _big_ref(result: AgentRunResult[Any]) -> str:
    """The ref in the note that stands for the first output of the tool ``big`` in ``result``."""
    return next(
        _ref(part.model_response_str())
        for message in result.all_messages()
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart) and part.tool_name == "big"
    )


def _slice_reader(slice_chars: int) -> FunctionModel:
    """A model that calls `big`, then reads its spilled output slice by slice, then answers."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returned = _last_return(messages)
        if returned is None:
            return ModelResponse(parts=[ToolCallPart("big", {})])
        if returned.tool_name == "big":
            ref, offset = _ref(returned.model_response_str()), 0
        else:
            header = returned.model_response_str().partition("\n")[0]
            _, end, total = (int(n.replace(",", "")) for n in re.findall(r"[\d,]+", header))
            if end >= total:
                return ModelResponse(parts=[TextPart("read it all")])
            ref, offset = model.ref, end  # type: ignore[attr-defined]
        model.ref = ref  # type: ignore[attr-defined]
        arguments = {"ref": ref, "offset": offset, "length": slice_chars}
        return ModelResponse(parts=[ToolCallPart("read_tool_output", arguments)])

    return FunctionModel(model)


def _reassembled(messages: list[ModelMessage]) -> str:
    chunks = [
        part.model_response_str().partition("\n")[2]
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart) and part.tool_name == "read_tool_output"
    ]
    return "".join(chunks)


async def test_a_megabyte_result_is_spilled_and_read_back_in_slices(storage_url: str) -> None:
    """The model sees a short preview of a 1 MB return and reads all of it back in slices."""
    spill = _spill(storage_url, max_chars=250_000, preview_chars=500)
    agent = Agent(_slice_reader(250_000), capabilities=[spill])

    @agent.tool_plain
    def big() -> str:
        return MEGABYTE_TEXT

    result = await agent.run("read the big file", conversation_id="c")
    assert result.output == "read it all"
    note = next(
        part
        for message in result.all_messages()
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart) and part.tool_name == "big"
    )
    assert len(note.model_response_str()) < 1_000
    assert note.model_response_str().endswith(MEGABYTE_TEXT[:500])
    assert _reassembled(result.all_messages()) == MEGABYTE_TEXT
    stored = await spill.aload(_ref(note.model_response_str()), conversation_id="c")
    assert stored.content == MEGABYTE_TEXT
    assert (stored.tool_name, stored.conversation_id) == ("big", "c")


async def test_a_text_holding_nul_characters_is_spilled_and_read_back_exactly(
    storage_url: str,
) -> None:
    """A text return holding NUL characters (a file read as text) is spilled and comes back
    exactly, to the model slice by slice and to the app: PostgreSQL's jsonb refused it, which
    failed the tool call and so the whole run."""
    text = "".join(f"row {i}\x00caf\u00e9 \U0001f600\n" for i in range(3_000))
    spill = _spill(storage_url, max_chars=10_000, preview_chars=100)
    agent = Agent(_slice_reader(10_000), capabilities=[spill])
    agent.tool_plain(name="big")(lambda: text)
    result = await agent.run("go", conversation_id="nul")
    assert result.output == "read it all"
    assert _reassembled(result.all_messages()) == text
    stored = await spill.aload(_big_ref(result), conversation_id="nul")
    assert (stored.content, stored.text) == (text, text)
    assert await spill.adelete_conversation("nul") == 1


async def test_the_app_finds_a_spilled_outputs_reference_in_the_parts_metadata(
    storage_url: str,
) -> None:
    """The tool return part carries the reference in its metadata, kept by the message store,
    so an app (a UI showing the full output) need not parse it out of the model's note."""
    spill = _spill(storage_url, max_chars=1_000, preview_chars=100)
    store = MessageStore(storage_url, namespace=spill.namespace, spill=spill)
    agent = Agent(
        FunctionModel(lambda messages, info: _answer_after_big(messages)),
        capabilities=[PersistentConversation(store), spill],
    )

    @agent.tool_plain
    def big() -> str:
        return MEGABYTE_TEXT[:5_000]

    await agent.run("go", conversation_id="meta")
    history = await store.aload("meta")
    [part] = [
        part
        for message in history.messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]
    assert part.metadata == {"spilled_ref": _ref(part.model_response_str())}
    stored = await spill.aload(part.metadata["spilled_ref"], conversation_id="meta")
    assert stored.content == MEGABYTE_TEXT[:5_000]
    await store.adelete("meta")


def _answer_after_big(messages: list[ModelMessage]) -> ModelResponse:
    if _last_return(messages) is None:
        return ModelResponse(parts=[ToolCallPart("big", {})])
    return ModelResponse(parts=[TextPart("done")])


async def test_spilling_cuts_the_tokens_sent_after_a_megabyte_result(storage_url: str) -> None:
    """The request after a 1 MB tool return costs under 1% of its unspilled tokens."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if _last_return(messages) is None:
            return ModelResponse(parts=[ToolCallPart("big", {})])
        return ModelResponse(parts=[TextPart("ok")])

    usages = {}
    for spilled in (False, True):
        capabilities = [_spill(storage_url)] if spilled else []
        agent = Agent(FunctionModel(answer), capabilities=capabilities)
        agent.tool_plain(name="big")(lambda: MEGABYTE_TEXT)
        usages[spilled] = (await agent.run("go")).usage.input_tokens
    assert usages[True] < usages[False] / 100


async def test_structured_results_are_read_by_json_path(storage_url: str) -> None:
    """A large JSON return is selected by path; the selected value comes back exactly."""
    spill = _spill(storage_url)

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returned = _last_return(messages)
        if returned is None:
            return ModelResponse(parts=[ToolCallPart("rows", {})])
        if returned.tool_name == "rows":
            ref = _ref(returned.model_response_str())
            arguments = {"ref": ref, "json_path": "$.rows[7001]"}
            return ModelResponse(parts=[ToolCallPart("read_tool_output", arguments)])
        return ModelResponse(parts=[TextPart(returned.model_response_str())])

    agent = Agent(FunctionModel(model), capabilities=[spill])
    agent.tool_plain(name="rows")(lambda: ROWS)
    output = (await agent.run("row 7001?")).output
    header, _, selected = output.partition("\n")
    assert "$.rows[7001]" in header
    assert selected == '{"id":7001,"name":"row 7001","score":1000.1428571428571}'


async def test_the_threshold_is_an_exact_character_count(storage_url: str) -> None:
    """A return of max_chars characters passes unchanged; one more character is spilled."""
    spill = _spill(storage_url, max_chars=1_000, preview_chars=10)
    seen: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returned = _last_return(messages)
        if returned is None:
            return ModelResponse(parts=[ToolCallPart("exact", {}), ToolCallPart("over", {})])
        seen.extend(
            part.model_response_str()
            for part in messages[-1].parts
            if isinstance(part, ToolReturnPart)
        )
        return ModelResponse(parts=[TextPart("ok")])

    agent = Agent(FunctionModel(model), capabilities=[spill])
    agent.tool_plain(name="exact")(lambda: "x" * 1_000)
    agent.tool_plain(name="over")(lambda: "y" * 1_001)
    await agent.run("go")
    assert seen[0] == "x" * 1_000
    assert seen[1].startswith("[The text output of over is 1,001 characters")
    assert seen[1].endswith("\n" + "y" * 10)


async def test_outputs_of_another_conversation_cannot_be_read(storage_url: str) -> None:
    """A ref from another conversation is refused to the model like an unknown one."""
    spill = _spill(storage_url, max_chars=100, preview_chars=50)
    first = Agent(_slice_reader(100), capabilities=[spill])
    first.tool_plain(name="big")(lambda: "secret " * 100)
    result = await first.run("go", conversation_id="owner")
    ref = _big_ref(result)
    replies: list[str] = []

    def thief(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returned = _last_return(messages)
        if returned is None:
            return ModelResponse(parts=[ToolCallPart("read_tool_output", {"ref": ref})])
        replies.append(returned.model_response_str())
        return ModelResponse(parts=[TextPart("done")])

    other = Agent(FunctionModel(thief), capabilities=[spill])
    await other.run("steal", conversation_id="intruder")
    assert "secret" not in replies[0]
    assert "there is no stored output" in replies[0]
    with pytest.raises(RecordNotFoundError):  # the app asking in the wrong conversation too
        await spill.aload(ref, conversation_id="intruder")
    assert (await spill.aload(ref, conversation_id="owner")).content == "secret " * 100


async def test_a_threshold_below_the_default_preview_needs_no_preview_setting(
    storage_url: str,
) -> None:
    """max_chars below 2,000 alone is accepted (it failed: the default preview was longer),
    and the preview is then max_chars characters."""
    spill = _spill(storage_url, max_chars=100)
    agent = Agent(_slice_reader(100), capabilities=[spill])
    agent.tool_plain(name="big")(lambda: "".join(f"{i:04d}" for i in range(100)))
    result = await agent.run("go", conversation_id="small")
    note = next(
        part.model_response_str()
        for message in result.all_messages()
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart) and part.tool_name == "big"
    )
    assert "first 100 characters" in note
    assert note.endswith("".join(f"{i:04d}" for i in range(25)))
    assert _reassembled(result.all_messages()) == "".join(f"{i:04d}" for i in range(100))


async def test_the_app_gets_a_clear_error_for_an_unknown_output(storage_url: str) -> None:
    """Loading an output that was never stored raises RecordNotFoundError."""
    with pytest.raises(RecordNotFoundError):
        await _spill(storage_url).aload(uuid4(), conversation_id="c")


def test_json_paths_select_keys_indexes_and_quoted_keys() -> None:
    """Paths step through keys, indexes (negative too) and quoted keys; misses say where."""
    value = {"a": [{"b": 1}, {"odd key": [10, 20]}]}
    assert select_json_path(value, "$.a[0].b") == 1
    assert select_json_path(value, "a[-1]['odd key'][1]") == 20
    assert select_json_path(value, "$") == value
    with pytest.raises(LookupError, match=r"\$\.a has no item \[5\]"):
        select_json_path(value, "$.a[5]")
    with pytest.raises(LookupError, match="has no key 'zz'"):
        select_json_path(value, "$.zz")
    with pytest.raises(LookupError, match="cannot read json_path"):
        select_json_path(value, "$.a..b")


def test_preview_longer_than_the_threshold_is_refused() -> None:
    """preview_chars above max_chars fails when the capability is made."""
    with pytest.raises(StorageConfigurationError, match="preview_chars"):
        SpillToolOutputs("memory://", max_chars=10, preview_chars=11)
    # A negative threshold names the preview it was given (it said preview_chars=None).
    with pytest.raises(StorageConfigurationError, match="preview_chars=-1, max_chars=-1"):
        SpillToolOutputs("memory://", max_chars=-1)


async def test_a_model_calling_every_tool_with_made_up_arguments_does_not_break_the_run(
    storage_url: str,
) -> None:
    """TestModel calls the read tool with junk: it gets a note back, the run succeeds."""
    from pydantic_ai.models.test import TestModel

    agent = Agent(TestModel(), capabilities=[_spill(storage_url)])
    agent.tool_plain(name="small")(lambda: "fine")
    result = await agent.run("go")
    notes = [
        part.model_response_str()
        for message in result.all_messages()
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart) and part.tool_name == "read_tool_output"
    ]
    assert notes
    assert notes[0].startswith("[there is no stored output")


async def test_the_app_can_delete_a_spilled_output(storage_url: str) -> None:
    """adelete removes a stored output once; loading it then raises RecordNotFoundError."""
    spill = _spill(storage_url, max_chars=10, preview_chars=5)
    agent = Agent(_slice_reader(10), capabilities=[spill])
    agent.tool_plain(name="big")(lambda: "z" * 30)
    result = await agent.run("go", conversation_id="c")
    ref = _big_ref(result)
    assert await spill.adelete(ref, conversation_id="c")
    assert not await spill.adelete(ref, conversation_id="c")
    with pytest.raises(RecordNotFoundError):
        await spill.aload(ref, conversation_id="c")


async def test_deleting_a_conversation_deletes_its_spilled_outputs(storage_url: str) -> None:
    """MessageStore(spill=...).adelete removes the conversation's outputs, no other's."""
    spill = _spill(storage_url, max_chars=10, preview_chars=5)
    store = MessageStore(storage_url, namespace=f"t{uuid4().hex[:12]}", spill=spill)
    agent = Agent(_slice_reader(10), capabilities=[PersistentConversation(store), spill])
    agent.tool_plain(name="big")(lambda: "z" * 30)
    refs = {}
    for conversation in ("doomed", "kept"):
        result = await agent.run("go", conversation_id=conversation)
        refs[conversation] = _big_ref(result)
    assert (await spill.aload(refs["doomed"], conversation_id="doomed")).text == "z" * 30
    assert await store.adelete("doomed") == 1
    with pytest.raises(RecordNotFoundError):
        await spill.aload(refs["doomed"], conversation_id="doomed")
    assert (await spill.aload(refs["kept"], conversation_id="kept")).text == "z" * 30
    assert await spill.adelete_conversation("doomed") == 0  # nothing left behind
    assert await spill.adelete_conversation("kept") == 1
    with pytest.raises(RecordNotFoundError):
        await spill.aload(refs["kept"], conversation_id="kept")


@pytest.mark.parametrize("storage_url", EXPIRING, indirect=True)
async def test_spilled_outputs_expire_after_ttl(storage_url: str) -> None:
    """With a ttl, a spilled output is gone for the app and the model once it expires."""
    spill = _spill(storage_url, max_chars=10, preview_chars=5, ttl=2.0)
    agent = Agent(_slice_reader(10), capabilities=[spill])
    agent.tool_plain(name="big")(lambda: "z" * 30)
    result = await agent.run("go", conversation_id="brief")
    ref = _big_ref(result)
    assert (await spill.aload(ref, conversation_id="brief")).text == "z" * 30
    await asyncio.sleep(2.5)
    with pytest.raises(RecordNotFoundError):
        await spill.aload(ref, conversation_id="brief")
    assert await spill.adelete_conversation("brief") == 0


async def test_a_fixed_conversation_keeps_the_outputs_spilled_in_its_runs(
    storage_url: str,
) -> None:
    """With PersistentConversation(conversation_id=...), a run's spilled output is kept under
    that conversation: the next run's model reads it, and deleting the conversation deletes it."""
    spill = _spill(storage_url, max_chars=10, preview_chars=5)
    store = MessageStore(storage_url, namespace=spill.namespace, spill=spill)
    replies: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returned = _last_return(messages)
        if returned is not None:
            replies.append(returned.model_response_str())
            return ModelResponse(parts=[TextPart("done")])
        if len(messages) == 1:  # the first run: call the tool
            return ModelResponse(parts=[ToolCallPart("big", {})])
        earlier = next(  # a later run: read what the first run's tool returned
            part.model_response_str()
            for message in messages
            if isinstance(message, ModelRequest)
            for part in message.parts
            if isinstance(part, ToolReturnPart) and part.tool_name == "big"
        )
        return ModelResponse(parts=[ToolCallPart("read_tool_output", {"ref": _ref(earlier)})])

    fixed = PersistentConversation(store, conversation_id="fixed")
    agent = Agent(FunctionModel(model), capabilities=[fixed, spill])
    agent.tool_plain(name="big")(lambda: "z" * 30)
    first = await agent.run("go")
    ref = _ref(replies[0])
    assert first.conversation.conversation_id == "fixed"
    assert (await spill.aload(ref, conversation_id="fixed")).text == "z" * 30
    await agent.run("and the big output?")
    assert replies[1].startswith("[characters 0 to 10 of 30]")
    assert await store.adelete("fixed") == 2
    with pytest.raises(RecordNotFoundError):
        await spill.aload(ref, conversation_id="fixed")


async def test_a_fixed_conversation_refuses_a_run_of_another(storage_url: str) -> None:
    """PersistentConversation(conversation_id="fixed") run with conversation_id="other" is
    refused before the model is called: its turns would go to "fixed" and the outputs it
    spilled to "other" (left behind by deleting "fixed"). Nothing is stored under either."""
    spill = _spill(storage_url, max_chars=10, preview_chars=5)
    store = MessageStore(storage_url, namespace=spill.namespace, spill=spill)
    calls: list[int] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(len(messages))
        return ModelResponse(parts=[TextPart("done")])

    fixed = PersistentConversation(store, conversation_id="fixed")
    agent = Agent(FunctionModel(model), capabilities=[fixed, spill])
    with pytest.raises(StorageUsageError, match="conversation_id='fixed', or none"):
        await agent.run("go", conversation_id="other")
    assert calls == []
    assert [info.conversation_id for info in await store.alist()] == []
    await agent.run("go")  # the fixed one, as before
    assert [info.conversation_id for info in await store.alist()] == ["fixed"]


async def test_a_list_of_images_passes_through_unspilled(storage_url: str) -> None:
    """A tool returning a list of images longer than max_chars as JSON reaches the model as
    images, like a single one: spilled, the model got a note about their JSON instead."""
    spill = _spill(storage_url, max_chars=100, preview_chars=10)
    images = [ImageUrl(f"https://example.com/{i}.png") for i in range(20)]
    agent = Agent(
        FunctionModel(lambda messages, info: _answer_after_big(messages)), capabilities=[spill]
    )
    agent.tool_plain(name="big")(lambda: images)
    result = await agent.run("go", conversation_id="pictures")
    returned = _last_return(result.all_messages()[:-1])
    assert returned is not None
    assert returned.content == images
    assert await spill.adelete_conversation("pictures") == 0


async def test_an_output_spilled_by_a_failed_run_is_deleted_with_its_conversation(
    storage_url: str,
) -> None:
    """As docs/ai.md says: a run failing after a spill stores no turn, so its conversation is
    not listed, but deleting the conversation by id deletes the output (and returns 0)."""
    spill = _spill(storage_url, max_chars=100, preview_chars=10)
    store = MessageStore(storage_url, namespace=spill.namespace, spill=spill)

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if _last_return(messages) is not None:
            raise RuntimeError("the provider is overloaded")
        return ModelResponse(parts=[ToolCallPart("big", {})])

    agent = Agent(FunctionModel(model), capabilities=[PersistentConversation(store), spill])
    agent.tool_plain(name="big")(lambda: "q" * 1_000)
    for conversation in ("failed", "also-failed"):
        with pytest.raises(RuntimeError, match="overloaded"):
            await agent.run("go", conversation_id=conversation)
    assert await store.alist() == []
    assert await store.adelete("failed") == 0
    assert await spill.adelete_conversation("failed") == 0  # deleted by the line above
    assert await spill.adelete_conversation("also-failed") == 1  # left by its failed run
