"""Fixtures shared by every test."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import pytest

from pydantic_toast import (
    ExternalBaseModel,
    PageCursor,
    RecordKey,
    StoredRecord,
    current_storage,
    register_backend,
)
from pydantic_toast.backends.memory import MemoryBackend, MemoryStore

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    """Explain a failed comparison as off CI: truncated, without difflib's full diff.

    With ``CI`` set, pytest diffs the whole of both sides of a failed ``==``; on two lists of
    thousands of similar items difflib's ndiff runs longer than the test timeout, which then
    reports a stack in difflib instead of which assertion failed (a CI run of stop 33). The
    first differing item and the lengths are still shown; ``-v`` gives the full diff.
    """
    from _pytest.assertion import _compare_sequence, truncate

    for module in (_compare_sequence, truncate):
        if hasattr(module, "running_on_ci"):
            module.running_on_ci = lambda: False


@dataclass
class Call:
    """One batch call a backend received."""

    method: str
    size: int
    thread: threading.Thread


@dataclass
class CallLog:
    """What every CountingBackend instance of one URL received."""

    calls: list[Call] = field(default_factory=list)
    connects: int = 0
    listings: int = 0  # list_records calls (list_ids goes through it), kept out of ``calls``

    def of(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]


CALL_LOGS: dict[str, CallLog] = {}


class CountingBackend(MemoryBackend):
    """memory:// that records each batch call, so tests can count round trips."""

    def __init__(self, url: str, *, store: MemoryStore | None = None) -> None:
        super().__init__(url, store=store)
        self.log = CALL_LOGS.setdefault(url, CallLog())

    async def connect(self) -> None:
        self.log.connects += 1

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        self.log.calls.append(Call("save", len(records), threading.current_thread()))
        return await super().save_records(records)

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        self.log.calls.append(Call("load", len(keys), threading.current_thread()))
        return await super().load_records(keys)

    async def list_records(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[StoredRecord]:
        self.log.listings += 1
        return await super().list_records(class_name, limit=limit, after=after)


register_backend("counting", CountingBackend)


def memory_store_of(url: str) -> MemoryStore:
    """The current storage's store behind a ``memory://NAME`` (or ``counting://NAME``) URL."""
    return current_storage().memory_store(url.split("://", 1)[1].split("?", 1)[0])


def count_serializations(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The models that saves serialize to JSON from now on (``_saving._to_json`` wrapped)."""
    from pydantic_toast import _saving

    seen: list[object] = []
    real = _saving._to_json

    def counting(model: ExternalBaseModel, *args: Any) -> bytes:
        seen.append(model)
        return real(model, *args)

    monkeypatch.setattr(_saving, "_to_json", counting)
    return seen


def count_scans(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The documents that saves scan with ``_fidelity.may_be_unreadable`` from now on."""
    from pydantic_toast import _fidelity, _saving

    scanned: list[bytes] = []
    real = _fidelity.may_be_unreadable

    def counting(data: bytes) -> bool:
        scanned.append(data)
        return real(data)

    monkeypatch.setattr(_saving._fidelity, "may_be_unreadable", counting)
    return scanned


@pytest.fixture
def blocking_calls_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test calls the sync API on a running loop on purpose: no BlockingStorageCallWarning."""
    monkeypatch.setenv("PYDANTIC_TOAST_BLOCKING_CALLS", "off")


@pytest.fixture
def memory_url() -> str:
    """A memory:// store of this test's own."""
    return f"memory://{uuid4().hex}"


@pytest.fixture
def counting_url() -> str:
    """A store of this test's own whose batch calls are logged in ``CALL_LOGS[url]``."""
    return f"counting://{uuid4().hex}"
