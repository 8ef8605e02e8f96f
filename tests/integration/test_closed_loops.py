"""Event loops closed without shutting down, and forks: nothing kept that grows without bound.

A loop closed without ``shutdown_asyncgens()`` (``loop.close()`` after ``run_until_complete``)
never tells the library its pools are gone. Its entry used to be kept alive forever in
``_inherited`` with its sockets, files and threads (200 loops: 199 entries, +400 file
descriptors on SQLite, +200 on Redis). It is now released when the next loop registers: the
list stays empty, the descriptors stay flat, and nothing warns (warnings are errors here).
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.runtime import loops
from pydantic_toast.runtime import storage as runtime_storage


def _model(url: str) -> type[ExternalBaseModel]:
    return type(
        "Looped",
        (ExternalBaseModel,),
        {
            "__annotations__": {"text": str},
            "model_config": ExternalConfigDict(
                storage=url, external_name=f"Looped{uuid4().hex[:8]}"
            ),
        },
    )


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _save_on_a_loop_closed_without_shutdown(model: type[ExternalBaseModel]) -> None:
    loop = asyncio.new_event_loop()
    try:
        reference = loop.run_until_complete(pydantic_toast.adump(model(text="x")))
        assert loop.run_until_complete(model.aload(reference)).text == "x"  # type: ignore[attr-defined]
    finally:
        loop.close()  # no shutdown_asyncgens(): the library is not told


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_loops_closed_without_shutdown_are_released(storage_url: str) -> None:
    """1,000 loops on memory://, 40 on the servers, 10 on S3: no entry kept, no descriptor."""
    model = _model(storage_url)
    # S3's client does not close without its loop: each abandoned one waits out 1 s.
    rounds = {"memory": 1000, "s3": 10}.get(storage_url.partition(":")[0], 40)
    for _ in range(5):  # warm up: imports, first connections
        _save_on_a_loop_closed_without_shutdown(model)
    gc.collect()
    inherited = len(runtime_storage._inherited)
    descriptors = _open_descriptors()
    for _ in range(rounds):
        _save_on_a_loop_closed_without_shutdown(model)
    gc.collect()
    assert len(runtime_storage._inherited) == inherited == 0
    assert len(pydantic_toast.current_storage()._loops) <= 1  # the last loop, closed
    assert _open_descriptors() <= descriptors + 2, (descriptors, _open_descriptors())


def test_a_loop_whose_first_thread_ended_stays_the_applications(storage_url: str) -> None:
    """A loop first run by a thread that then ended is run again by a live thread, after
    another loop registered meanwhile: it is not closed and its connections still work. (A
    version that released loops left open by threads that ended closed it: "Event loop is
    closed" for the application.)"""
    model = _model(storage_url)
    loop = asyncio.new_event_loop()
    try:
        first = threading.Thread(target=lambda: loop.run_until_complete(model(text="a").asave()))
        first.start()
        first.join()
        asyncio.run(model(text="b").asave())  # another loop registers
        assert not loop.is_closed()
        reference = loop.run_until_complete(model(text="c").asave())
        assert loop.run_until_complete(model.aload(reference)).text == "c"  # type: ignore[attr-defined]
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_forks_add_one_entry_per_storage_to_the_child_only(memory_url: str) -> None:
    """50 forks in a row: each child keeps its parent's objects; the parent's lists never grow."""
    model = _model(memory_url)
    model(text="x").model_dump()  # the parent has a loop and a backend
    before = (len(runtime_storage._inherited), len(loops._inherited))
    storages = len(list(runtime_storage._live))
    children: list[tuple[int, int]] = []
    for _ in range(50):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read)
            os.write(write, f"{len(runtime_storage._inherited)} {len(loops._inherited)}".encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as answer:
            first, second = answer.read().split()
        os.waitpid(pid, 0)
        children.append((int(first), int(second)))
    assert (len(runtime_storage._inherited), len(loops._inherited)) == before
    assert set(children) == {(before[0] + storages, before[1] + 1)}
