"""Event loops closed without shutting down, and forks: nothing kept that grows without bound.

A loop closed without ``shutdown_asyncgens()`` (``loop.close()`` after ``run_until_complete``)
never tells the library its pools are gone. Its entry used to be kept alive forever in
``_inherited`` with its sockets, files and threads (200 loops: 199 entries, +400 file
descriptors on SQLite, +200 on Redis). It is now released when the next loop registers: the
list stays empty, the descriptors stay flat, and nothing warns (warnings are errors here).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import threading
from collections.abc import Callable
from contextvars import ContextVar
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.backends.memory import MemoryBackend
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


def _server_connections(url: str) -> int | None:
    """The connections the server counts from this process for ``url``, where it can tell.

    PostgreSQL: ``pg_stat_activity`` rows with the URL's ``application_name``. Redis: the
    ``CLIENT LIST`` entries whose client port is one of this process's sockets to the server.
    """
    parts = urlsplit(url)
    if parts.scheme == "postgresql":
        import asyncpg

        name = parse_qs(parts.query)["application_name"][0]

        async def count() -> int:
            connection = await asyncpg.connect(url.partition("?")[0])
            try:
                query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                return int(await connection.fetchval(query, name))
            finally:
                await connection.close()

        return asyncio.run(count())
    if parts.scheme == "redis":
        import redis

        ports = _local_ports_to(parts.port or 6379)
        client = redis.Redis.from_url(url.partition("?")[0])
        try:
            listed = client.client_list()
        finally:
            client.close()
        return sum(int(entry["addr"].rpartition(":")[2]) in ports for entry in listed)
    return None


def _local_ports_to(port: int) -> set[int]:
    """The local ports of this process's established TCP connections to ``port``."""
    inodes = set()
    for descriptor in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{descriptor}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    with open("/proc/net/tcp") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            if fields[2].endswith(f":{port:04X}") and fields[3] == "01" and fields[9] in inodes:
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def _in_a_thread_that_ends(work: Callable[[], None]) -> None:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # re-raised in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


def _save_on_a_loop_left_open(
    model: type[ExternalBaseModel],
    kept: list[asyncio.AbstractEventLoop] | None = None,
    before: Callable[[asyncio.AbstractEventLoop], None] = lambda loop: None,
) -> None:
    """What Pydantic AI's ``agent.run_sync()`` does in a worker thread: a loop of the thread's
    own, set as its event loop, run and never closed; then the thread ends. ``before`` runs
    first, on the new loop."""

    def work() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        if kept is not None:
            kept.append(loop)
        before(loop)
        reference = loop.run_until_complete(pydantic_toast.adump(model(text="x")))
        assert loop.run_until_complete(model.aload(reference)).text == "x"  # type: ignore[attr-defined]

    _in_a_thread_that_ends(work)


# Python's own warnings when a loop that was never closed is collected (the loop, and its
# wake-up socket pair, AF_UNIX): what these threads do (and Pydantic AI does), not the
# library. Any other warning fails: an unclosed transport, the library's TCP sockets.
_LOOP_NEVER_CLOSED = "ignore:unclosed event loop:ResourceWarning"
_ITS_WAKE_UP_SOCKETS = r"ignore:unclosed <socket.socket fd=\d+, family=1,:ResourceWarning"


def _release_and_collect() -> None:
    """Release the last thread's loop too (``close_storage`` does) and collect the loops."""
    pydantic_toast.close_storage()
    assert pydantic_toast.current_storage()._loops == {}
    gc.collect()


@pytest.mark.filterwarnings(_LOOP_NEVER_CLOSED, _ITS_WAKE_UP_SOCKETS)
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_loops_left_open_by_threads_that_ended_release_their_connections(
    storage_url: str,
) -> None:
    """30 threads each run a loop and never close it (Pydantic AI's run_sync in anyio's worker
    threads): each kept its pool for good (+30 PostgreSQL connections, +30 Redis clients, +4
    descriptors a loop). The library's connections on them are now closed when the next loop
    registers, and nothing of the library keeps the loops: connections and descriptors stay
    flat."""
    model = _model(storage_url)
    rounds = {"memory": 200, "s3": 10}.get(storage_url.partition(":")[0], 30)
    for _ in range(3):  # warm up: imports, first connections
        _save_on_a_loop_left_open(model)
    gc.collect()
    connections = _server_connections(storage_url)
    descriptors = _open_descriptors()
    for _ in range(rounds):
        _save_on_a_loop_left_open(model)
    gc.collect()
    assert len(pydantic_toast.current_storage()._loops) <= 1  # the last thread's loop
    if connections is not None:
        assert _server_connections(storage_url) <= connections + 1, connections
    assert _open_descriptors() <= descriptors + 2, (descriptors, _open_descriptors())
    _release_and_collect()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_a_stranded_loop_kept_by_the_application_runs_again_on_new_connections(
    storage_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The application keeps the loops its ended threads left open: the library's connections
    on them are closed all the same (the loops stay open, and the application's own
    connection on one of them still works), and a loop run again by another thread connects
    anew, with nothing of the old pool left to run on it: no error logged, no warning when
    the application closes its loops."""
    model = _model(storage_url)
    rounds = {"memory": 50, "s3": 5}.get(storage_url.partition(":")[0], 15)
    kept: list[asyncio.AbstractEventLoop] = []
    applications, peer = socket.socketpair()
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def open_the_applications_own(loop: asyncio.AbstractEventLoop) -> None:
        streams.append(loop.run_until_complete(asyncio.open_unix_connection(sock=applications)))

    _save_on_a_loop_left_open(model, kept, before=open_the_applications_own)
    connections = _server_connections(storage_url)
    try:
        for _ in range(rounds):
            _save_on_a_loop_left_open(model, kept)
        assert not any(loop.is_closed() for loop in kept)
        if connections is not None:
            assert _server_connections(storage_url) <= connections, connections

        def again() -> None:
            first = kept[0]
            reference = first.run_until_complete(model(text="again").asave())
            loaded = first.run_until_complete(model.aload(reference))
            assert loaded.text == "again"  # type: ignore[attr-defined]
            # The application's own connection on that loop was left alone.
            reader, writer = streams[0]
            writer.write(b"ping")
            first.run_until_complete(writer.drain())
            assert peer.recv(4) == b"ping"
            peer.sendall(b"pong")
            assert first.run_until_complete(reader.readexactly(4)) == b"pong"
            writer.close()
            first.run_until_complete(writer.wait_closed())

        _in_a_thread_that_ends(again)
        # The released loops' last steps run (nothing of the library is left queued there).
        _in_a_thread_that_ends(lambda: kept[1].run_until_complete(asyncio.sleep(0)))
    finally:
        peer.close()
        for loop in kept:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    gc.collect()
    assert [
        record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR
    ] == []


_APPLICATIONS_CONNECTION: ContextVar[object] = ContextVar("applications_connection")


@pytest.mark.filterwarnings(_LOOP_NEVER_CLOSED, _ITS_WAKE_UP_SOCKETS)
def test_a_release_leaves_the_applications_sockets_alone_whatever_reaches_them(
    storage_url: str,
) -> None:
    """The search for the library's sockets on a stranded loop went through a timer handle's
    context into what the application keeps in a ContextVar, and through the engine's logger
    into logging's handlers: the application's own connection kept in either was closed with
    the library's (PostgreSQL). It follows only the drivers' and the library's objects now."""
    model = _model(storage_url)
    kept: list[asyncio.AbstractEventLoop] = []
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    applications, peer = socket.socketpair()
    handler = logging.Handler()
    logger = logging.getLogger(f"application.{uuid4().hex}")
    logger.addHandler(handler)

    def serve_a_request() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        kept.append(loop)

        async def request() -> None:
            opened = await asyncio.open_unix_connection(sock=applications)
            _APPLICATIONS_CONNECTION.set(opened)
            handler.opened = opened  # type: ignore[attr-defined]
            streams.append(opened)
            await pydantic_toast.adump(model(text="x"))  # a timer handle keeps this context

        loop.run_until_complete(request())

    try:
        _in_a_thread_that_ends(serve_a_request)
        _save_on_a_loop_left_open(model)  # another loop registers: the first is released
        assert kept[0] not in pydantic_toast.current_storage()._loops

        def the_applications_connection_still_works() -> None:
            reader, writer = streams[0]
            writer.write(b"ping")
            kept[0].run_until_complete(writer.drain())
            assert peer.recv(4) == b"ping"
            peer.sendall(b"pong")
            assert kept[0].run_until_complete(reader.readexactly(4)) == b"pong"
            writer.close()
            kept[0].run_until_complete(writer.wait_closed())

        _in_a_thread_that_ends(the_applications_connection_still_works)
    finally:
        logger.removeHandler(handler)
        peer.close()
        for loop in kept:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    _release_and_collect()


@pytest.mark.filterwarnings(_LOOP_NEVER_CLOSED, _ITS_WAKE_UP_SOCKETS)
def test_close_storage_in_async_code_releases_stranded_loops_without_warning(
    storage_url: str,
) -> None:
    """``close_storage()`` from inside a running loop, with no loop of the library's yet,
    releases a loop left open by a thread that ended, and reports no blocking call."""
    model = _model(storage_url)
    _save_on_a_loop_left_open(model)
    connections = _server_connections(storage_url)

    async def close_from_async_code() -> None:
        pydantic_toast.close_storage()  # a BlockingStorageCallWarning would fail the test

    asyncio.run(close_from_async_code())
    assert pydantic_toast.current_storage()._loops == {}
    if connections is not None:
        assert _server_connections(storage_url) == connections - 1
    gc.collect()


def test_a_loop_left_with_a_task_pending_keeps_its_connections(storage_url: str) -> None:
    """A thread ends with a task still pending on its open loop (paused, not left): its
    connections are kept when other loops connect, and the task, resumed later by another
    thread, loads through them."""
    model = _model(storage_url)
    reference = pydantic_toast.dump(model(text="kept"))
    loop = asyncio.new_event_loop()
    resume = asyncio.Event()
    pending: list[asyncio.Task[ExternalBaseModel]] = []

    async def load_when_resumed() -> ExternalBaseModel:
        await resume.wait()
        return await model.aload(reference)  # type: ignore[attr-defined, no-any-return]

    def start() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(model.aload(reference))  # type: ignore[attr-defined]
        pending.append(loop.create_task(load_when_resumed()))
        loop.run_until_complete(asyncio.sleep(0))

    try:
        _in_a_thread_that_ends(start)
        entry = pydantic_toast.current_storage()._loops[loop]
        asyncio.run(model.aload(reference))  # type: ignore[attr-defined]  # another loop
        assert pydantic_toast.current_storage()._loops.get(loop) is entry

        def finish() -> None:
            resume.set()
            assert loop.run_until_complete(pending[0]).text == "kept"  # type: ignore[attr-defined]

        _in_a_thread_that_ends(finish)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class _SlowToClose(MemoryBackend):
    """A memory:// backend counting its connections, whose disconnect takes a loop step."""

    opened = 0

    async def connect(self) -> None:
        type(self).opened += 1
        await super().connect()

    async def disconnect(self) -> None:
        await asyncio.sleep(0)
        await super().disconnect()


def test_two_tasks_connecting_a_new_loop_at_once_share_one_entry() -> None:
    """Two loads start together on a new loop while a stale entry is released: one entry and
    one backend for the loop. (The entry was stored only after the release, which awaits: the
    second task made an entry and a backend of its own, the first one's left unclosed.)"""
    with pydantic_toast.Storage() as storage:
        storage.register_backend("slowclose", _SlowToClose)
        model = _model(f"slowclose://{uuid4().hex[:8]}")
        reference = pydantic_toast.dump(model(text="x"))
        _save_on_a_loop_closed_without_shutdown(model)  # a stale entry to release

        async def both() -> None:
            entries = []

            async def load() -> None:
                await model.aload(reference)
                entries.append(storage._loops[asyncio.get_running_loop()])

            await asyncio.gather(load(), load())
            assert entries[0] is entries[1]

        _SlowToClose.opened = 0
        asyncio.run(both())
        assert _SlowToClose.opened == 1


@pytest.mark.filterwarnings(_LOOP_NEVER_CLOSED, _ITS_WAKE_UP_SOCKETS)
def test_agent_run_sync_in_threads_that_end_keeps_connections_flat(storage_url: str) -> None:
    """A real ``Agent(TestModel()).run_sync`` in 20 short-lived threads, its tool saving a
    model: connections to the server stay flat (each thread's loop kept its pool before)."""
    pydantic_ai = pytest.importorskip("pydantic_ai")
    from pydantic_ai.models.test import TestModel

    model = _model(storage_url)
    agent = pydantic_ai.Agent(TestModel())

    @agent.tool_plain
    async def remember(text: str) -> str:
        """Store the text."""
        saved = model(text=text)
        await saved.asave()  # type: ignore[attr-defined]
        return "stored"

    rounds = {"s3": 5}.get(storage_url.partition(":")[0], 20)
    _in_a_thread_that_ends(lambda: agent.run_sync("remember this"))
    gc.collect()
    connections = _server_connections(storage_url)
    descriptors = _open_descriptors()
    for _ in range(rounds):
        _in_a_thread_that_ends(lambda: agent.run_sync("remember this"))
    gc.collect()
    assert len(pydantic_toast.current_storage()._loops) <= 1
    if connections is not None:
        assert _server_connections(storage_url) <= connections + 1, connections
    assert _open_descriptors() <= descriptors + 2, (descriptors, _open_descriptors())
    _release_and_collect()


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
