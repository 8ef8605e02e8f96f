"""What the conversation store asks of a backend: counted on a logging memory backend."""

from __future__ import annotations

from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart

from pydantic_toast.ai import MessageStore
from tests.conftest import CALL_LOGS, CallLog


def _turn(text: str) -> list[ModelRequest | ModelResponse]:
    return [ModelRequest(parts=[UserPromptPart(text)]), ModelResponse(parts=[TextPart(text)])]


async def test_an_append_writes_one_batch_whatever_the_history(counting_url: str) -> None:
    """At 2 and at 400 stored messages an append is one save of two records and reads nothing."""
    store = MessageStore(counting_url)
    log = CALL_LOGS.setdefault(counting_url, CallLog())
    for size in (1, 200):
        for i in range(size):
            await store.aappend(f"c{size}", _turn(str(i)))
        log.calls.clear()
        await store.aappend(f"c{size}", _turn("one more"))
        assert [(call.method, call.size) for call in log.calls] == [("save", 2)]


async def test_loading_reads_one_batch_of_records_per_page(counting_url: str) -> None:
    """11 turns in pages of 4 are loaded with 3 page reads, each one backend call."""
    store = MessageStore(counting_url, page_size=4)
    for i in range(11):
        await store.aappend("paged", _turn(str(i)))
    log = CALL_LOGS[counting_url]
    log.calls.clear()
    log.listings = 0
    assert len((await store.aload("paged")).messages) == 22
    assert log.calls == []  # no record read besides the pages
    assert log.listings == 3


def test_a_backend_that_cannot_list_is_refused_when_the_store_is_made() -> None:
    """MessageStore on a save/load-only backend fails at once, naming the methods to add."""
    from typing import Any
    from uuid import UUID

    import pytest

    from pydantic_toast import StorageBackend, StorageConfigurationError, register_backend

    class SaveLoadOnly(StorageBackend):
        async def connect(self) -> None: ...
        async def disconnect(self) -> None: ...
        async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None: ...
        async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
            return None

    from pydantic_toast.runtime.storage import current_storage

    register_backend("saveloadonly", SaveLoadOnly)
    try:
        with pytest.raises(
            StorageConfigurationError, match=r"list_records \(or list_ids\), delete"
        ):
            MessageStore("saveloadonly://x")
    finally:
        current_storage().unregister_backend("saveloadonly")
