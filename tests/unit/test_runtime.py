"""The runtime: sync calls from every context, the async API on the caller's loop, lifecycle."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageConnectionError,
    StorageUsageError,
    StoredRecord,
    register_backend,
)
from pydantic_toast.backends.memory import MemoryBackend
from tests.conftest import CALL_LOGS

ROOT = Path(__file__).resolve().parents[2]


def define(url: str) -> type[ExternalBaseModel]:
    class Item(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=url)

    return Item


def test_sync_from_plain_code_runs_in_the_calling_thread(counting_url: str) -> None:
    """In the main thread with no loop running, the I/O runs in place: no thread hop."""
    item = define(counting_url)
    item.model_validate(item(n=1).model_dump())
    log = CALL_LOGS[counting_url]
    assert {call.thread for call in log.calls} == {threading.main_thread()}
    assert log.connects == 1, "one connection for both calls: pooled, not per call"


@pytest.mark.usefixtures("blocking_calls_allowed")
def test_sync_inside_several_asyncio_runs(counting_url: str) -> None:
    """Sync calls inside async code work across several asyncio.run calls, one after another."""
    item = define(counting_url)

    async def use() -> int:
        reference = item(n=5).model_dump()
        return item.model_validate(reference).n  # type: ignore[attr-defined, no-any-return]

    assert [asyncio.run(use()) for _ in range(3)] == [5, 5, 5]
    threads = {call.thread.name for call in CALL_LOGS[counting_url].calls}
    assert threads == {"pydantic-toast-loop"}


def test_async_api_runs_on_the_callers_loop_and_closes_with_it(counting_url: str) -> None:
    """asave/aload run in the caller's thread; each asyncio.run gets and closes its own backend."""
    item = define(counting_url)
    closed: list[bool] = []

    async def use() -> None:
        reference = await item(n=2).asave()
        assert (await item.aload(reference)).n == 2  # type: ignore[attr-defined]
        closed.append(False)

    for _ in range(2):
        asyncio.run(use())
    log = CALL_LOGS[counting_url]
    assert {call.thread for call in log.calls} == {threading.main_thread()}
    assert log.connects == 2, "one backend per loop, reused within the loop"


def test_concurrent_async_first_use_connects_once(counting_url: str) -> None:
    """Many tasks racing to the first operation share one connect."""
    item = define(counting_url)

    async def many() -> None:
        await asyncio.gather(*(item(n=i).asave() for i in range(50)))

    asyncio.run(many())
    assert CALL_LOGS[counting_url].connects == 1


def test_sync_from_threads(counting_url: str) -> None:
    """Sync calls from worker threads share the library's loop thread and its pool."""
    item = define(counting_url)

    def work(n: int) -> int:
        return item.model_validate(item(n=n).model_dump()).n  # type: ignore[attr-defined, no-any-return]

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(work, range(40))) == list(range(40))
    assert CALL_LOGS[counting_url].connects == 1


class ReentrantBackend(MemoryBackend):
    """A backend that makes a blocking dump from inside its own save (a programming error)."""

    inner: type[ExternalBaseModel] | None = None

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        assert self.inner is not None
        self.inner(n=1).model_dump()
        return []


register_backend("reentrant", ReentrantBackend)


def test_blocking_calls_run_in_tasks_named_after_the_library() -> None:
    """A sync call's task is named "pydantic-toast", run in place or on the library's loop
    thread (Python 3.11 spelled a "Task-<n>" name for each call, 1% of a sync save)."""
    from pydantic_toast.runtime.loops import run_sync

    async def task_name() -> str:
        task = asyncio.current_task()
        assert task is not None
        return task.get_name()

    assert run_sync(task_name) == "pydantic-toast"
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(run_sync, task_name).result() == "pydantic-toast"


@pytest.mark.usefixtures("blocking_calls_allowed")
def test_sync_call_on_the_library_loop_raises_instead_of_deadlocking(memory_url: str) -> None:
    """A blocking call made on pydantic-toast's own loop thread raises StorageUsageError."""
    ReentrantBackend.inner = define(memory_url)

    class Outer(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=f"reentrant://{uuid4().hex}")

    async def dump_from_loop() -> None:
        Outer(n=1).model_dump()  # inside a loop: runs on the loop thread

    with pytest.raises(StorageUsageError, match="would deadlock"):
        asyncio.run(dump_from_loop())


class DownBackend(MemoryBackend):
    """A backend whose server is down."""

    async def connect(self) -> None:
        raise ConnectionRefusedError(111, "Connection refused")


register_backend("down", DownBackend)


def test_outage_is_a_connection_error_never_a_validation_error() -> None:
    """An unreachable store surfaces as StorageConnectionError from dump, validate and aload."""

    class Unreachable(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage="down://user:pw-123@db.internal:5432/x")

    with pytest.raises(StorageConnectionError, match="could not connect") as info:
        Unreachable(n=1).model_dump()
    assert "pw-123" not in str(info.value)
    assert "db.internal:5432" in str(info.value)
    reference = {"class_name": "Unreachable", "id": str(uuid4())}
    with pytest.raises(StorageConnectionError):
        Unreachable.model_validate(reference)
    with pytest.raises(StorageConnectionError):
        asyncio.run(Unreachable.aload(reference))


def test_close_storage_and_reconnect(counting_url: str) -> None:
    """close_storage() closes the sync API's backends; the next call reconnects."""
    item = define(counting_url)
    item(n=1).model_dump()
    pydantic_toast.close_storage()
    item(n=2).model_dump()
    assert CALL_LOGS[counting_url].connects == 2


def test_aclose_storage_closes_the_running_loops_backends(counting_url: str) -> None:
    """aclose_storage() closes the running loop's backends; the next call reconnects."""
    item = define(counting_url)

    async def use() -> None:
        await item(n=1).asave()
        await pydantic_toast.aclose_storage()
        await item(n=2).asave()

    asyncio.run(use())
    assert CALL_LOGS[counting_url].connects == 2


def run_script(code: str) -> subprocess.CompletedProcess[str]:
    # The scripts mix sync calls and event loops on purpose (exit, fork): no blocking warning.
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}",
        "PYDANTIC_TOAST_BLOCKING_CALLS": "off",
    }
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
        check=False,
    )


SCRIPT_PRELUDE = """
import asyncio, os, sys
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
class Item(ExternalBaseModel):
    n: int
    model_config = ExternalConfigDict(storage=os.environ.get("ITEM_URL", "memory://script"))
"""


# Under -X dev, asyncio's debug mode logs every callback that runs longer than 0.1 s
# ("Executing <Task ...> took 0.151 seconds"): on a loaded machine that says how fast the
# machine was, not whether the script exited cleanly. Those lines alone are dropped; every
# other warning, error or traceback still reaches stderr.
SLOW_CALLBACKS_QUIET = """
import logging, time
logging.getLogger("asyncio").addFilter(
    lambda record: not record.getMessage().startswith("Executing ")
)
"""


def test_interpreter_exits_cleanly_after_sync_and_async_use() -> None:
    """A script that used both loops exits at once, with code 0 and nothing on stderr (but
    debug mode's slow-callback notes: one is provoked, as a loaded machine makes them)."""
    result = run_script(
        SCRIPT_PRELUDE
        + SLOW_CALLBACKS_QUIET
        + """
ref = Item(n=1).model_dump()
async def main():
    Item.model_validate(ref)
    time.sleep(0.15)  # a slow callback, as a loaded machine makes: not a failure
    await Item(n=2).asave()
asyncio.run(main())
print("done")
"""
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert result.stderr == ""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_fork_child_uses_its_own_loops_and_parent_keeps_working() -> None:
    """After os.fork the child opens its own pools; the parent's keep working."""
    result = run_script(
        SCRIPT_PRELUDE
        + """
ref = Item(n=1).model_dump()
async def in_loop():
    return Item.model_validate(ref).n
assert asyncio.run(in_loop()) == 1
pid = os.fork()
if pid == 0:
    code = 0 if Item.model_validate(Item(n=3).model_dump()).n == 3 else 1
    code |= 0 if asyncio.run(in_loop()) == 1 else 2
    os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert Item.model_validate(ref).n == 1
assert asyncio.run(in_loop()) == 1
print("parent ok")
"""
    )
    assert result.returncode == 0, result.stderr
    assert "parent ok" in result.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_child_forked_from_a_thread_runs_sync_calls_in_place() -> None:
    """In a child forked by another thread than the main one, that thread is the child's main
    thread: its sync calls run in place, with no loop thread started."""
    result = run_script(
        SCRIPT_PRELUDE
        + """
import threading, warnings
warnings.filterwarnings("ignore", message=".*fork", category=DeprecationWarning)
codes = []
def fork_here():
    pid = os.fork()
    if pid == 0:
        loaded = Item.model_validate(Item(n=4).model_dump()).n == 4
        threads = {thread.name for thread in threading.enumerate()}
        os._exit(0 if loaded and "pydantic-toast-loop" not in threads else 1)
    _, status = os.waitpid(pid, 0)
    codes.append(os.waitstatus_to_exitcode(status))
worker = threading.Thread(target=fork_here)
worker.start()
worker.join()
assert codes == [0], codes
print("child ok")
"""
    )
    assert result.returncode == 0, result.stderr
    assert "child ok" in result.stdout
