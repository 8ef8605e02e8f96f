"""Conversations, spilled outputs and payloads never share stored names, whatever namespaces.

One app naturally gives the same ``namespace=`` to its ``MessageStore``, its
``SpillToolOutputs`` and its payloads; each kind of record must still be read, listed and
deleted only by its own kind. The default namespaces keep the names of the first release.
"""

from __future__ import annotations

from uuid import uuid4

from pydantic_ai import Agent

from pydantic_toast.ai import (
    MessageStore,
    PersistentConversation,
    SpillToolOutputs,
    aload_payload,
    astore_payload,
)
from pydantic_toast.ai._storage import backend
from tests.ai_helpers import chat_agent
from tests.integration.test_ai_spill import _slice_reader


def _namespace() -> str:
    """A namespace of this test's own (the PostgreSQL database is shared by the session)."""
    return f"t{uuid4().hex[:12]}"


async def test_a_store_and_its_spill_can_share_a_namespace(storage_url: str) -> None:
    """The same namespace on both: the store loads, lists and deletes only its turns."""
    namespace = _namespace()
    spill = SpillToolOutputs(storage_url, max_chars=10, preview_chars=5, namespace=namespace)
    store = MessageStore(storage_url, namespace=namespace, spill=spill)
    agent = Agent(_slice_reader(10), capabilities=[PersistentConversation(store), spill])
    agent.tool_plain(name="big")(lambda: "z" * 30)
    await agent.run("export the log", conversation_id="audit")
    second = await agent.run("and now?", conversation_id="audit")  # loads the first turn
    history = await store.aload("audit")
    assert history.messages == second.all_messages()
    assert [info.conversation_id for info in await store.alist()] == ["audit"]
    assert await store.adelete("audit") == 2  # both turns, after the spilled outputs
    assert await spill.adelete_conversation("audit") == 0
    assert (await store.aload("audit")).messages == []


async def test_a_spill_named_like_the_default_store_deletes_no_turns(storage_url: str) -> None:
    """SpillToolOutputs(namespace="conversations") leaves the default store's turns alone."""
    store = MessageStore(storage_url)  # the default namespace, "conversations"
    conversation_id = f"victim-{uuid4().hex}"
    agent = chat_agent(store)
    await agent.run("hi", conversation_id=conversation_id)
    await agent.run("again", conversation_id=conversation_id)
    spill = SpillToolOutputs(storage_url, namespace="conversations")
    assert await spill.adelete_conversation(conversation_id) == 0
    assert len((await store.aload(conversation_id)).messages) == 4
    assert await store.adelete(conversation_id) == 2


async def test_a_payload_in_a_store_namespace_is_not_listed(storage_url: str) -> None:
    """A payload stored with a store's namespace is not one of its conversations."""
    namespace = _namespace()
    store = MessageStore(storage_url, namespace=namespace)
    await chat_agent(store).run("hi", conversation_id="c1")
    reference = await astore_payload(storage_url, {"big": "x"}, namespace=namespace)
    assert [info.conversation_id for info in await store.alist()] == ["c1"]
    assert await aload_payload(storage_url, reference, dict, namespace=namespace) == {"big": "x"}
    assert await store.adelete("c1") == 1
    assert await store.alist() == []


async def test_default_namespaces_keep_their_stored_names(storage_url: str) -> None:
    """Records written without namespace= are under the names earlier versions used."""
    conversation_id = f"c-{uuid4().hex}"
    spill = SpillToolOutputs(storage_url, max_chars=10, preview_chars=5)
    store = MessageStore(storage_url, spill=spill)
    agent = Agent(_slice_reader(10), capabilities=[PersistentConversation(store), spill])
    agent.tool_plain(name="big")(lambda: "z" * 30)
    await agent.run("go", conversation_id=conversation_id)
    reference = await astore_payload(storage_url, [1, 2])
    assert reference["class_name"] == "pydantic_toast.ai.payloads"
    explicit = await astore_payload(storage_url, [1, 2], namespace="payloads")
    assert explicit["class_name"] == "pydantic_toast.ai.payloads"
    target = await backend(store._url)
    for class_name in (
        f"pydantic_toast.ai.conversations/{conversation_id}",
        f"pydantic_toast.ai.tool_outputs/{conversation_id}",
    ):
        assert len(await target.list_records(class_name, limit=10)) == 1, class_name
    assert await target.delete(reference.uuid, "pydantic_toast.ai.payloads")
    assert await target.delete(explicit.uuid, "pydantic_toast.ai.payloads")
    assert await store.adelete(conversation_id) == 1
