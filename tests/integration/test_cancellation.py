"""Cancelled and interrupted operations leave nothing behind: no task, no log noise, no leak."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.base import StorageBackend

SERVERS = pytest.mark.parametrize(
    "storage_url",
    [
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
    indirect=True,
)
NOISE = ("never retrieved", "greenlet is being finalized", "ResourceWarning", "Traceback")


def model_on(url: str) -> type[ExternalBaseModel]:
    return type(
        "Note",
        (ExternalBaseModel,),
        {
            "__annotations__": {"text": str},
            "model_config": ExternalConfigDict(storage=url, external_name=f"Note{uuid4().hex}"),
        },
    )


def _open_fds() -> set[str]:
    """What this process's file descriptors point at (files, sockets, pipes)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed by now
            found.add(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
    return found


def _in_use(backend: StorageBackend) -> int:
    """Connections the backend's pool has handed out and not taken back."""
    counts = backend.pool_connections()
    assert counts is not None, f"{backend!r} reports no pool"
    return counts[0]


@pytest.mark.slow
@SERVERS
async def test_a_thousand_cancellations_leave_nothing_behind(
    storage_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """1,000 saves and loads cancelled at random points leak no connection, log no noise."""
    loop = asyncio.get_running_loop()
    unhandled: list[str] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(str(context)))
    note = model_on(storage_url)
    references = [await note(text=str(i)).asave() for i in range(20)]
    backend = (
        await pydantic_toast.current_storage().connected(StorageURL.parse(storage_url))
    ).backend
    rng = random.Random(1234)
    completed = 0
    with caplog.at_level(logging.WARNING):
        for i in range(1000):
            if i % 2:
                task = asyncio.ensure_future(note.aload(rng.choice(references)))
            else:
                task = asyncio.ensure_future(note(text=str(i)).asave())
            if rng.random() < 0.5:
                for _ in range(rng.randrange(8)):  # a random number of loop iterations
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(rng.uniform(0, 0.003))
            task.cancel()
            try:
                await task
                completed += 1
            except asyncio.CancelledError:
                pass
        assert completed < 900  # most were really cancelled mid-way
        assert _in_use(backend) == 0
        # The next operations are unaffected.
        reference = await note(text="after").asave()
        assert (await note.aload(reference)).text == "after"  # type: ignore[attr-defined]
        await pydantic_toast.aclose_storage()
        gc.collect()  # unretrieved exceptions are reported when their futures are collected
        await asyncio.sleep(0)
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in noise + unhandled if "never retrieved" in m or "Task was destroyed" in m]
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


@pytest.mark.slow
@pytest.mark.sqlite
async def test_cancelled_sqlite_operations_close_their_files(storage_url_sqlite: str) -> None:
    """After 1,000 cancellations and aclose_storage(), no descriptor on the file stays open."""
    before = _open_fds()
    note = model_on(storage_url_sqlite)
    reference = await note(text="kept").asave()
    rng = random.Random(99)
    for i in range(1000):
        task = asyncio.ensure_future(note.aload(reference) if i % 2 else note(text="x").asave())
        for _ in range(rng.randrange(8)):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await pydantic_toast.aclose_storage()
    assert _open_fds() - before == set()  # closed now, not when the collector runs


@pytest.mark.sqlite
async def test_a_cancelled_sqlite_save_leaves_the_file_unlocked(storage_url_sqlite: str) -> None:
    """Saves cancelled at each point in turn: another connection can take the write lock after.

    Cancelled between aiosqlite's execute and fetch, an INSERT ... RETURNING held the write
    lock in a closed ("zombie") connection until the garbage collector freed its cursor.
    """
    note = model_on(storage_url_sqlite)
    await note(text="warm").asave()
    other = sqlite3.connect(storage_url_sqlite.removeprefix("sqlite:///"), timeout=0)
    other.isolation_level = None
    try:
        for steps in range(60):
            task = asyncio.ensure_future(note(text=str(steps)).asave())
            for _ in range(steps % 20):
                await asyncio.sleep(0)
            if steps >= 20:
                await asyncio.sleep(0.0001 * (steps - 20))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            other.execute("BEGIN IMMEDIATE")  # "database is locked" if a writer kept its lock
            other.execute("ROLLBACK")
    finally:
        other.close()


@pytest.fixture
def storage_url_sqlite(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated SQLite file of this test's own."""
    path = tmp_path / "toast.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


INTERRUPTED_SCRIPT = textwrap.dedent(
    """
    import os, random, signal, sys, threading, warnings
    from uuid import uuid4
    # Started with SIGINT ignored (a CI runner, `nohup`, a background job of a script), Python
    # keeps it ignored: Ctrl-C as a terminal sends it is what is tested.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    warnings.simplefilter("always", ResourceWarning)
    from pydantic_toast import ExternalBaseModel, ExternalConfigDict

    class Note(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=sys.argv[1], external_name="N" + uuid4().hex)

    Note(text="warm").model_dump()
    delay = random.Random(int(sys.argv[2])).uniform(0.01, 0.3)
    interrupted = False
    try:
        # Started inside the try: on a loaded machine SIGINT can land while start() still waits.
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)).start()
        for i in range(1_000_000):
            Note(text=str(i)).model_dump()
    except KeyboardInterrupt:
        interrupted = True
    reference = Note(text="after").model_dump()
    assert Note.model_validate(reference).text == "after"
    print("interrupted" if interrupted else "not interrupted", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "storage_url",
    [
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
    indirect=True,
)
@pytest.mark.parametrize("seed", range(5))
def test_ctrl_c_during_a_sync_save_leaves_the_next_calls_clean(storage_url: str, seed: int) -> None:
    """SIGINT at a random point of a loop of saves: the next save and load work, stderr is clean."""
    assert_interrupted_cleanly(INTERRUPTED_SCRIPT, storage_url, str(seed), timeout=120)


def assert_interrupted_cleanly(script: str, *args: str, timeout: float) -> None:
    """``script`` run in a fresh interpreter saw its Ctrl-C, went on, and printed no noise."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "interrupted"
    assert not [word for word in NOISE if word in result.stderr], result.stderr


CTRL_C_BEFORE_THE_FIRST_STEP = textwrap.dedent(
    """
    import signal, sys, warnings
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (as in the script above)
    warnings.simplefilter("error")
    from pydantic_toast import ExternalBaseModel, ExternalConfigDict
    from pydantic_toast.runtime.loops import _loops

    class Note(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage="memory://ctrl-c")

    Note(text="warm").model_dump()
    # Queued ahead of the next call's task: SIGINT lands before the task's first step.
    _loops.get_main_loop().call_soon(signal.raise_signal, signal.SIGINT)
    try:
        Note(text="never").model_dump()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    reference = Note(text="after").model_dump()
    assert Note.model_validate(reference).text == "after"
    """
)


def test_ctrl_c_before_a_sync_call_has_started_interrupts_it() -> None:
    """Ctrl-C between a sync call's start and its task's first step: raised, not a hang.

    The task, cancelled before it ran, never reached the code that stops the loop: the call
    waited in the selector forever (the Ctrl-C test above hung 3 runs in 5 on Redis).
    """
    assert_interrupted_cleanly(CTRL_C_BEFORE_THE_FIRST_STEP, timeout=60)


CTRL_C_DURING_THE_FIRST_STEP = textwrap.dedent(
    """
    import asyncio, signal, sys, warnings
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (as in the script above)
    warnings.simplefilter("error")
    from pydantic_toast.runtime.loops import run_sync

    async def interrupted(times):
        for _ in range(times):
            signal.raise_signal(signal.SIGINT)  # in the task's first step (eager on 3.12+)
        await asyncio.sleep(0)
        return "not interrupted"

    async def current():
        return asyncio.current_task().get_name()

    for times in (1, 2):
        try:
            print(run_sync(lambda: interrupted(times)), flush=True)
        except KeyboardInterrupt:
            pass
        assert run_sync(current) == "pydantic-toast"
    print("interrupted", flush=True)
    """
)


def test_ctrl_c_during_a_sync_calls_first_step_interrupts_it() -> None:
    """Ctrl-C (once, and twice) while a sync call's task runs its first step: raised, the
    task is not lost (no "exception was never retrieved"), and the next call works."""
    assert_interrupted_cleanly(CTRL_C_DURING_THE_FIRST_STEP, timeout=60)
