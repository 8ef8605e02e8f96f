"""Writes whose reply is lost, on real servers: the caller is told the truth (issue 10, item 2).

A :class:`~tests.fault_proxy.FaultProxy` sits between the library and a real PostgreSQL,
Redis or SeaweedFS (S3). It forwards a save or delete to the server, throws the server's reply
away and cuts the connection: the server has applied the write, the client saw its connection
drop. Each test then checks what was stored (through a second model class on the server's
own address) and what the caller was told: a save that landed is reported as saved (never a
``ConcurrencyError`` "nothing was written" from a blind retry), a delete that may have landed
is :class:`~pydantic_toast.OutcomeUnknownError` (never "not found"), and a write refused
before anything was sent is retried once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit
from uuid import UUID, uuid4

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import pydantic_toast
from pydantic_toast import (
    ConcurrencyError,
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalStorageError,
    OutcomeUnknownError,
    RecordNotFoundError,
    StorageBusyError,
    StorageConnectionError,
    StorageTimeoutError,
    StoredRecord,
)
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.memory import MemoryBackend
from pydantic_toast.backends.redis import RedisBackend
from pydantic_toast.backends.sqlite import SQLiteBackend
from pydantic_toast.runtime.errors import DriverError
from pydantic_toast.runtime.loops import run_sync
from tests import servers
from tests.fault_proxy import FaultProxy
from tests.integration.conftest import _delete_redis_prefix


@dataclass
class Proxied:
    """A storage URL through a fault proxy, and the same store's direct URL."""

    kind: str
    proxy: FaultProxy
    url: str
    direct: str
    commit: bytes | None  # what a batch's commit sends (None: the batch is one request)


def _through(url: str, port: int) -> str:
    """``url`` with its host's port replaced by ``port`` (loopback)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}{netloc[1]}{host}"))


POSTGRESQL = pytest.param("postgresql", marks=pytest.mark.postgresql)
REDIS = pytest.param("redis", marks=pytest.mark.redis)
S3 = pytest.param("s3", marks=pytest.mark.s3)


@pytest.fixture(params=[POSTGRESQL, REDIS, S3])
def proxied(request: pytest.FixtureRequest) -> Iterator[Proxied]:
    """A proxied storage URL of this test's own, on each networked backend in turn."""
    yield from _proxied(request)


@pytest.fixture(params=[POSTGRESQL, REDIS])
def pooled(request: pytest.FixtureRequest) -> Iterator[Proxied]:
    """The same, on the backends whose pools can drop their idle connections (the S3
    backend's aiohttp pool cannot, so a refused new connection cannot be forced there)."""
    yield from _proxied(request)


def _proxied(request: pytest.FixtureRequest) -> Iterator[Proxied]:
    kind, tag = request.param, uuid4().hex[:12]
    if kind == "postgresql":
        base = request.getfixturevalue("postgres_database_url")
        direct = f"{base}?application_name=t{tag}"
        parsed = urlsplit(base)
        target = (parsed.hostname or "127.0.0.1", parsed.port or 5432)
        commit: bytes | None = b"COMMIT"
    elif kind == "redis":
        base = request.getfixturevalue("redis_base_url")
        direct = f"{base}?prefix=toast_test_{tag}"
        parsed = urlsplit(base)
        target = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        commit = None
    else:
        seaweedfs: servers.TempSeaweedFS = request.getfixturevalue("seaweedfs")
        direct = seaweedfs.url(request.getfixturevalue("bucket"), f"t{tag}")
        target = ("127.0.0.1", seaweedfs.port)
        commit = None
    with FaultProxy(*target) as proxy:
        if kind == "s3":
            url = direct.replace(seaweedfs.endpoint, f"http://127.0.0.1:{proxy.port}")
        else:
            url = _through(direct, proxy.port)
        try:
            yield Proxied(kind, proxy, url, direct, commit)
        finally:
            pydantic_toast.close_storage()
            if kind == "redis":
                _delete_redis_prefix(direct, f"toast_test_{tag}")


def notes_on(proxied: Proxied) -> tuple[type[ExternalBaseModel], type[ExternalBaseModel]]:
    """A model class on the proxied URL, and its twin (same stored name) on the direct one."""
    name = f"Note{uuid4().hex[:10]}"

    def make(url: str) -> type[ExternalBaseModel]:
        return type(
            "Note",
            (ExternalBaseModel,),
            {
                "__annotations__": {"text": str},
                "model_config": ExternalConfigDict(storage=url, external_name=name),
            },
        )

    return make(proxied.url), make(proxied.direct)


def stored(twin: type[ExternalBaseModel], id: UUID) -> tuple[str, int]:
    """The stored text and revision of record ``id``, read on the server's own address."""
    model = twin.model_validate({"class_name": twin.__toast_settings__.external_name, "id": id})  # type: ignore[attr-defined]
    return model.text, model.external_revision  # type: ignore[attr-defined,return-value]


def marker() -> str:
    return f"lost-reply-{uuid4().hex}"


# -- saves ----------------------------------------------------------------------------------


def test_update_whose_reply_is_lost_is_reported_saved(proxied: Proxied) -> None:
    """A revision-checked update that committed, its reply lost: saved at revision 2, once.

    Before the fix, the boundary repeated the save, which found its own first attempt's
    revision and raised ConcurrencyError "nothing was written".
    """
    note, twin = notes_on(proxied)
    item = note(text="first")
    item.model_dump()
    text = marker()
    item.text = text  # type: ignore[attr-defined]
    proxied.proxy.lose_reply_to(text.encode())
    item.model_dump()
    assert proxied.proxy.replies_lost == 1
    assert item.external_revision == 2
    assert stored(twin, item.external_id) == (text, 2)  # type: ignore[attr-defined]
    assert pydantic_toast.count(twin) == 1


def test_create_whose_reply_is_lost_is_reported_saved(proxied: Proxied) -> None:
    """A new record's save (expecting none) that landed, its reply lost: saved, revision 1."""
    note, twin = notes_on(proxied)
    note(text="warm-up").model_dump()  # connected, so the lost request is the save itself
    text = marker()
    item = note(text=text)
    proxied.proxy.lose_reply_to(text.encode())
    reference = item.model_dump()
    assert proxied.proxy.replies_lost == 1
    assert item.external_revision == 1
    assert stored(twin, reference["id"]) == (text, 1)
    assert pydantic_toast.count(twin) == 2
    if proxied.kind == "s3":  # the index entry was written after the settled create
        listed = [str(n.external_id) for n in pydantic_toast.page(twin).items]  # type: ignore[attr-defined]
        assert str(reference["id"]) in listed


def test_batch_whose_commit_reply_is_lost_is_reported_saved(proxied: Proxied) -> None:
    """Two records in one batch; the reply to the batch (its COMMIT on PostgreSQL) is lost."""
    note, twin = notes_on(proxied)
    first, second = note(text="a"), note(text="b")
    pydantic_toast.dump([first, second])
    text = marker()
    first.text, second.text = text, text + "-2"  # type: ignore[attr-defined]
    proxied.proxy.lose_reply_to(proxied.commit or text.encode())
    pydantic_toast.dump([first, second])
    assert proxied.proxy.replies_lost == 1
    assert (first.external_revision, second.external_revision) == (2, 2)
    assert stored(twin, first.external_id) == (text, 2)  # type: ignore[attr-defined]
    assert stored(twin, second.external_id) == (text + "-2", 2)  # type: ignore[attr-defined]


def test_lost_save_that_cannot_be_read_back_is_outcome_unknown(proxied: Proxied) -> None:
    """The reply is lost and the store cannot be reached again to read back, within the reply
    timeout (2 s) that bounds reading back: the caller gets OutcomeUnknownError (a
    StorageConnectionError) naming the record and the fix, not a ConcurrencyError and not
    "nothing was written"; the write itself landed once."""
    proxied = _timing_out(proxied, 2.0)
    note, twin = notes_on(proxied)
    item = note(text="first")
    item.model_dump()
    text = marker()
    item.text = text  # type: ignore[attr-defined]
    proxied.proxy.lose_reply_to(text.encode())
    proxied.proxy.refuse_connections(1000)
    with pytest.raises(ExternalStorageError) as info:
        item.model_dump()
    proxied.proxy.refuse_connections(0)
    error = info.value
    assert type(error) is OutcomeUnknownError, f"{type(error).__name__}: {error}"
    assert isinstance(error, StorageConnectionError)
    assert not isinstance(error, ConcurrencyError)
    message = str(error)
    assert "lost after the save was sent" in message
    assert "unknown" in message
    assert "nothing was written" not in message
    assert "load the record, check its revision" in message
    assert str(item.external_id) in message  # type: ignore[attr-defined]
    assert error.operation == "save"
    assert error.keys == ((twin.__toast_settings__.external_name, item.external_id),)  # type: ignore[attr-defined]
    assert isinstance(error.__cause__, ExternalStorageError)  # the failed read-back
    assert "tried again for 2 s" in message
    assert stored(twin, item.external_id) == (text, 2)  # type: ignore[attr-defined]


# -- reading back meets a store busy or unreachable for a while ------------------------------
#
# The lost reply often comes with the store itself in trouble (restarting, failing over):
# reading back is tried again after a pause while the store is busy or refuses connections,
# for as long as the backend waits for one reply. Before, a read-back refused twice (its one
# retry) or answered busy once raised OutcomeUnknownError although the save had landed.

_REFUSED = 4  # connections refused after the reply is lost: more than a read's one retry


def test_lost_save_whose_read_back_is_refused_for_a_while_is_settled(proxied: Proxied) -> None:
    """The reply is lost and the next connections are refused (the store restarting): reading
    back is tried again until one is accepted: saved at revision 2, written once."""
    note, twin = notes_on(proxied)
    item = note(text="first")
    item.model_dump()
    text = marker()
    item.text = text  # type: ignore[attr-defined]
    proxy = proxied.proxy
    proxy.lose_reply_to(text.encode(), then=lambda: proxy.refuse_connections(_REFUSED))
    item.model_dump()
    assert proxy.replies_lost == 1
    assert proxy.refused == _REFUSED  # each refused connection was a read-back's attempt
    assert item.external_revision == 2  # type: ignore[attr-defined]
    assert stored(twin, item.external_id) == (text, 2)  # type: ignore[attr-defined]
    assert pydantic_toast.count(twin) == 1


# A script running past busy-reply-threshold makes Redis answer every other client "BUSY"
# until it returns (the server a script keeps busy, as in a failover's CLUSTERDOWN).
_BUSY_SCRIPT = """
local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end
local start = now()
while now() - start < tonumber(ARGV[1]) do end
return 1
"""


@dataclass
class BusyRedis:
    """A Redis server of the test's own behind a fault proxy, which a script can keep busy."""

    server: servers.TempRedis
    proxy: FaultProxy
    prefix: str
    busy_since: float = 0.0
    scripts: list[threading.Thread] = dataclasses.field(default_factory=list)

    def proxied(self, **options: object) -> Proxied:
        query = urlencode({"prefix": self.prefix, **options})
        direct = f"redis://127.0.0.1:{self.server.port}/0?prefix={self.prefix}"
        url = f"redis://127.0.0.1:{self.proxy.port}/0?{query}"
        return Proxied("redis", self.proxy, url, direct, None)

    def busy_for(self, seconds: float) -> Callable[[], None]:
        """What keeps the server busy for ``seconds``, returning once it answers BUSY."""

        def start() -> None:
            script = threading.Thread(target=self._run_script, args=(seconds,), daemon=True)
            script.start()
            self.scripts.append(script)
            client = redis.Redis(port=self.server.port)
            try:
                while True:
                    try:
                        client.ping()
                    except redis.ResponseError as exc:
                        if str(exc).startswith("BUSY"):
                            break
                        raise
                    time.sleep(0.005)
            finally:
                client.close()
            self.busy_since = time.monotonic()

        return start

    def _run_script(self, seconds: float) -> None:
        # Sent once: redis-py 8 would send it again after its 5 s default socket timeout.
        once = Retry(NoBackoff(), 0)
        with redis.Redis(port=self.server.port, socket_timeout=seconds + 30, retry=once) as client:
            client.eval(_BUSY_SCRIPT, 0, int(seconds * 1_000_000))

    def wait_idle(self) -> None:
        for script in self.scripts:
            script.join(30)


@pytest.fixture
def busy_redis() -> Iterator[BusyRedis]:
    """A redis-server of this test (never the shared one) answering BUSY 20 ms into a script."""
    try:
        server = servers.TempRedis("--busy-reply-threshold", "20")
    except FileNotFoundError:
        pytest.skip("redis-server is not installed")
    try:
        with FaultProxy("127.0.0.1", server.port) as proxy:
            busy = BusyRedis(server, proxy, f"toast_test_{uuid4().hex[:12]}")
            try:
                yield busy
            finally:
                busy.wait_idle()
                pydantic_toast.close_storage()
    finally:
        server.stop()


@pytest.mark.redis
def test_lost_save_whose_read_back_meets_a_busy_server_is_settled(busy_redis: BusyRedis) -> None:
    """The reply is lost and the server is busy (a script running) for 1.5 s, within the
    reply timeout (5 s): reading back is tried again until the server answers, and the save
    is reported saved at revision 3, the record exactly as saved."""
    proxied = busy_redis.proxied(socket_timeout=5)
    note, twin = notes_on(proxied)
    item = note(text="first")
    item.model_dump()
    item.text = "second"  # type: ignore[attr-defined]
    item.model_dump()  # the save script is loaded on the fresh server (an update runs it)
    text = marker()
    item.text = text  # type: ignore[attr-defined]
    proxied.proxy.lose_reply_to(text.encode(), then=busy_redis.busy_for(1.5))
    item.model_dump()
    waited = time.monotonic() - busy_redis.busy_since
    assert proxied.proxy.replies_lost == 1
    assert 1.0 < waited < 5.0  # settled once the script ended, within the reply timeout
    assert item.external_revision == 3  # type: ignore[attr-defined]
    assert stored(twin, item.external_id) == (text, 3)  # type: ignore[attr-defined]
    assert pydantic_toast.count(twin) == 1


@pytest.mark.redis
def test_lost_save_whose_server_stays_busy_past_the_reply_timeout_is_outcome_unknown(
    busy_redis: BusyRedis,
) -> None:
    """The server stays busy (6 s) past the reply timeout (1 s) that bounds reading back:
    OutcomeUnknownError about 1 s after the server went busy, naming the cause (busy), the
    time tried and the fix; once the server answers again, the save is there, nothing lost."""
    proxied = busy_redis.proxied(socket_timeout=1)
    note, twin = notes_on(proxied)
    item = note(text="first")
    item.model_dump()
    item.text = "second"  # type: ignore[attr-defined]
    item.model_dump()  # the save script is loaded on the fresh server (an update runs it)
    text = marker()
    item.text = text  # type: ignore[attr-defined]
    proxied.proxy.lose_reply_to(text.encode(), then=busy_redis.busy_for(6))
    with pytest.raises(ExternalStorageError) as info:
        item.model_dump()
    waited = time.monotonic() - busy_redis.busy_since
    error = info.value
    assert type(error) is OutcomeUnknownError, f"{type(error).__name__}: {error}"
    assert waited < 2.5  # the reply timeout (1 s) and a last try, not the script's 6 s
    message = str(error)
    assert "reading the records back failed too (StorageBusyError" in message
    assert "tried again for 1 s" in message
    assert "load the record, check its revision" in message
    assert error.keys == ((twin.__toast_settings__.external_name, item.external_id),)  # type: ignore[attr-defined]
    busy_redis.wait_idle()
    assert stored(twin, item.external_id) == (text, 3)  # type: ignore[attr-defined]


def test_save_refused_before_sending_is_retried_once(pooled: Proxied) -> None:
    """A connection that fails while opening (nothing sent) is retried: saved, revision 2."""
    proxied = pooled
    note, twin = notes_on(proxied)
    item = note(text="first")
    item.model_dump()
    _drop_pooled_connections(proxied.url)
    proxied.proxy.refuse_connections(1)
    item.text = "second"  # type: ignore[attr-defined]
    item.model_dump()
    assert proxied.proxy.refused == 1
    assert stored(twin, item.external_id) == ("second", 2)  # type: ignore[attr-defined]


# -- deletes --------------------------------------------------------------------------------


def test_delete_whose_reply_is_lost_is_outcome_unknown_never_not_found(
    proxied: Proxied,
) -> None:
    """The delete landed, its reply was lost: OutcomeUnknownError saying to check, never
    RecordNotFoundError; the record is gone (deleted once), nothing else touched."""
    note, twin = notes_on(proxied)
    kept = note(text="kept")
    kept.model_dump()
    doomed = note(text="doomed")
    reference = doomed.model_dump()
    trigger = _delete_trigger(proxied, reference["id"])
    proxied.proxy.lose_reply_to(trigger)
    with pytest.raises(ExternalStorageError) as info:
        pydantic_toast.delete(note, reference)
    error = info.value
    assert proxied.proxy.replies_lost == 1
    assert type(error) is OutcomeUnknownError, f"{type(error).__name__}: {error}"
    assert not isinstance(error, RecordNotFoundError)
    assert "lost after the delete was sent" in str(error)
    assert "load the record to see whether it is gone" in str(error)
    assert isinstance(error.__cause__, DriverError)
    with pytest.raises(RecordNotFoundError):
        twin.model_validate(reference)
    assert stored(twin, kept.external_id) == ("kept", 1)  # type: ignore[attr-defined]


def test_delete_refused_before_sending_is_retried_once(pooled: Proxied) -> None:
    """A delete whose connection failed while opening is retried (nothing was sent, so the
    retry cannot find its own work): the record is deleted and no error is raised."""
    proxied = pooled
    note, twin = notes_on(proxied)
    reference = note(text="doomed").model_dump()
    _drop_pooled_connections(proxied.url)
    proxied.proxy.refuse_connections(1)
    pydantic_toast.delete(note, reference)
    assert proxied.proxy.refused == 1
    with pytest.raises(RecordNotFoundError):
        twin.model_validate(reference)


# -- replies that do not come in time ----------------------------------------------------
#
# The proxy holds the reply it throws away for 0.2 s of silence before cutting the
# connection; a client timeout of 0.1 s gives up first: the write was applied, the client
# timed out waiting (a slow server or network). Before, that raised StorageTimeoutError
# ("retry"), and retrying an increment applied it twice (202 of 200 increments in an
# adversarial run): now it is settled like a lost reply. On PostgreSQL, asyncpg then asks the
# server to cancel the statement, which had already committed: the cancel comes too late.

_TIMEOUT_OPTION = {"postgresql": "command_timeout", "redis": "socket_timeout", "s3": "read_timeout"}


def _timing_out(proxied: Proxied, seconds: float = 0.1) -> Proxied:
    """``proxied`` with a client timeout (0.1 s) shorter than the proxy's wait (0.2 s)."""
    option = f"{_TIMEOUT_OPTION[proxied.kind]}={seconds}"
    separator = "&" if "?" in proxied.url else "?"
    return dataclasses.replace(proxied, url=f"{proxied.url}{separator}{option}")


@pytest.fixture(params=[POSTGRESQL, REDIS])
def unanswered(request: pytest.FixtureRequest) -> Iterator[Proxied]:
    """A proxied URL on PostgreSQL or Redis, whose client timeout leaves a sent write to the
    server.

    S3 settles such a write the same way as Redis, but SeaweedFS on a loaded machine can take
    longer than the 0.1 s timeout to answer any request, so a test there would measure the
    machine."""
    yield from _proxied(request)


def test_update_whose_reply_times_out_is_reported_saved_once(unanswered: Proxied) -> None:
    """A revision-checked update applied, its reply not in time: read back, reported saved
    at revision 2, written once; the next increment builds on it (never applied twice)."""
    slow = _timing_out(unanswered)
    note, twin = notes_on(slow)
    item = note(text="first")
    item.model_dump()
    text = marker()
    item.text = text  # type: ignore[attr-defined]
    slow.proxy.lose_reply_to(text.encode())
    item.model_dump()
    assert not slow.proxy.armed  # the update was the request whose reply was held back
    assert item.external_revision == 2
    assert stored(twin, item.external_id) == (text, 2)  # type: ignore[attr-defined]
    item.text = "third"  # type: ignore[attr-defined]
    item.model_dump()
    assert stored(twin, item.external_id) == ("third", 3)  # type: ignore[attr-defined]


@pytest.fixture(params=[POSTGRESQL])
def postgresql_proxied(request: pytest.FixtureRequest) -> Iterator[Proxied]:
    """A proxied URL on PostgreSQL."""
    yield from _proxied(request)


def test_save_whose_reply_comes_after_command_timeout_is_reported_saved(
    postgresql_proxied: Proxied, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: an update applied at once whose reply comes after command_timeout, on a
    connection that stays open (a slow network). asyncpg's cancel comes too late to stop it;
    the backend waits for the statement's end on that connection and reads back: reported
    saved at revision 2, written once (before: StorageTimeoutError, "retry")."""
    # The reply comes 0.1 s after the timeout, and 0.1 s before asyncpg stops waiting for it
    # on the connection (the next statement's command_timeout).
    slow = _timing_out(postgresql_proxied, 0.2)
    note, twin = notes_on(slow)
    item = note(text="first")
    item.model_dump()
    text = marker()
    item.text = text  # type: ignore[attr-defined]
    slow.proxy.delay_reply_to(text.encode(), 0.3)
    with caplog.at_level(logging.INFO, logger="pydantic_toast"):
        item.model_dump()
    assert "after the request was sent" not in caplog.text  # settled by the backend itself
    assert not slow.proxy.armed
    assert slow.proxy.replies_lost == 0
    assert item.external_revision == 2
    assert stored(twin, item.external_id) == (text, 2)  # type: ignore[attr-defined]
    item.text = "third"  # type: ignore[attr-defined]
    item.model_dump()
    assert stored(twin, item.external_id) == ("third", 3)  # type: ignore[attr-defined]


def test_delete_whose_reply_times_out_is_outcome_unknown(unanswered: Proxied) -> None:
    """A delete applied, its reply not in time: OutcomeUnknownError saying so."""
    slow = _timing_out(unanswered)
    note, twin = notes_on(slow)
    reference = note(text="doomed").model_dump()
    slow.proxy.lose_reply_to(_delete_trigger(slow, reference["id"]))
    with pytest.raises(OutcomeUnknownError, match="did not come within the timeout") as info:
        pydantic_toast.delete(note, reference)
    assert "load the record to see whether it is gone" in str(info.value)
    with pytest.raises(RecordNotFoundError):
        twin.model_validate(reference)


def test_delete_whose_reply_comes_after_command_timeout_is_outcome_unknown(
    postgresql_proxied: Proxied,
) -> None:
    """PostgreSQL: a delete applied at once whose reply comes after command_timeout, on a
    connection that stays open: the backend waits for the statement's end and finds the
    record gone, which another delete could have done as well: OutcomeUnknownError, never a
    success that may be false, and its message says the delete has ended and found the record
    gone, never that it may still apply; the record is gone, the others are untouched."""
    slow = _timing_out(postgresql_proxied, 0.2)  # the reply comes as in the save's test above
    note, twin = notes_on(slow)
    kept = note(text="kept")
    kept.model_dump()
    reference = note(text="doomed").model_dump()
    slow.proxy.delay_reply_to(_delete_trigger(slow, reference["id"]), 0.3)
    with pytest.raises(OutcomeUnknownError) as info:
        pydantic_toast.delete(note, reference)
    message = str(info.value)
    assert "the delete has ended since, and the record is gone" in message
    assert "still" not in message  # it cannot apply later: it has ended
    assert "load the record to see whether it is gone" not in message  # it is known: gone
    assert message.endswith("do not count this one as having succeeded")
    assert not slow.proxy.armed
    with pytest.raises(RecordNotFoundError):
        twin.model_validate(reference)
    assert stored(twin, kept.external_id) == ("kept", 1)  # type: ignore[attr-defined]


def test_delete_stopped_by_the_cancel_is_a_timeout_safe_to_retry(
    postgresql_proxied: Proxied,
) -> None:
    """PostgreSQL: a delete (plain, then revision-checked) blocked on a row lock past
    command_timeout, which the cancel stopped: StorageTimeoutError, not OutcomeUnknownError;
    the record is still stored, and the retry deletes it."""
    import asyncpg

    slow = _timing_out(postgresql_proxied, 0.5)
    note, twin = notes_on(slow)

    async def scenario() -> None:
        items = [note(text="plain"), note(text="checked")]
        for item in items:
            await pydantic_toast.adump(item)
        locker = await asyncpg.connect(slow.direct.partition("?")[0])
        try:
            for item, revision in zip(items, (None, 1), strict=True):
                async with locker.transaction():
                    await locker.execute(
                        "SELECT 1 FROM external_records WHERE id = $1 FOR UPDATE",
                        item.external_id,  # type: ignore[attr-defined]
                    )
                    with pytest.raises(ExternalStorageError) as info:
                        await pydantic_toast.adelete(note, item, revision=revision)
                error = info.value
                assert type(error) is StorageTimeoutError, f"{type(error).__name__}: {error}"
                assert "timed out" in str(error)
                still = await twin.aload(item.external_id)  # type: ignore[attr-defined]
                assert still.text == item.text  # type: ignore[attr-defined]
                await pydantic_toast.adelete(note, item, revision=revision)
                with pytest.raises(RecordNotFoundError):
                    await twin.aload(item.external_id)  # type: ignore[attr-defined]
        finally:
            await locker.close()

    asyncio.run(scenario())


def test_timeouts_inside_a_transaction_are_outcome_unknown_and_roll_back(
    postgresql_proxied: Proxied,
) -> None:
    """PostgreSQL, inside transaction(): a save or delete past command_timeout leaves the
    caller's transaction unable to commit (SQLAlchemy then refuses every statement until the
    rollback), so it cannot be read back: OutcomeUnknownError, never StorageTimeoutError
    ("nothing applied, retry") and never "saved", whether its reply was only slow or the cancel
    stopped it, saying it is stored only if the transaction commits (never that it may still
    apply on its own); the rollback leaves the record as it was."""
    import asyncpg
    from sqlalchemy.ext.asyncio import create_async_engine

    # The joined statements run on the engine's connections, bounded by its command_timeout;
    # the model's own (its first save) keep the default one.
    slow = postgresql_proxied
    note, twin = notes_on(slow)
    base = slow.url.partition("?")[0].replace("postgresql://", "postgresql+asyncpg://")
    engine = create_async_engine(base, connect_args={"command_timeout": 0.5})

    async def joined_failure(write: Callable[[], Awaitable[Any]]) -> ExternalStorageError:
        with pytest.raises(ExternalStorageError) as info:
            async with engine.begin() as connection, pydantic_toast.transaction(connection):
                await write()
        return info.value

    async def scenario() -> list[ExternalStorageError]:
        item = note(text="first")
        await item.asave()
        async with engine.connect() as connection:  # the dialect's first-connect queries
            await connection.exec_driver_sql("SELECT 1")
        text = marker()
        item.text = text  # type: ignore[attr-defined]
        slow.proxy.delay_reply_to(text.encode(), 0.8)  # applied in the transaction, reply late
        errors = [await joined_failure(item.asave)]
        assert not slow.proxy.armed
        locker = await asyncpg.connect(slow.direct.partition("?")[0])
        try:
            async with locker.transaction():  # the row locked: the cancel stops the statement
                await locker.execute(
                    "SELECT 1 FROM external_records WHERE id = $1 FOR UPDATE",
                    item.external_id,  # type: ignore[attr-defined]
                )
                errors.append(await joined_failure(item.asave))
                errors.append(await joined_failure(lambda: pydantic_toast.adelete(note, item)))
        finally:
            await locker.close()
        loaded = await twin.aload(item.external_id)  # type: ignore[attr-defined]
        assert (loaded.text, loaded.external_revision) == ("first", 1)  # type: ignore[attr-defined]
        return errors

    async def main() -> list[ExternalStorageError]:
        try:
            return await scenario()
        finally:
            await engine.dispose()

    errors = asyncio.run(main())
    for error in errors:
        assert type(error) is OutcomeUnknownError, f"{type(error).__name__}: {error}"
        assert "did not come within the timeout" in str(error)
        assert "stored only if that transaction commits" in str(error)
        assert "still" not in str(error)
        # What to do is the rollback, never saving again outside the transaction.
        assert str(error).endswith(
            "roll the transaction back (then nothing of it is stored) and run it again"
        )
        assert error.keys  # the records concerned are named
        assert str(error.keys[0][1]) in str(error)


# -- helpers --------------------------------------------------------------------------------


def _drop_pooled_connections(url: str) -> None:
    """Close the pool's idle connections, so the next call opens one (through the proxy)."""

    async def drop() -> None:
        connected = await pydantic_toast.current_storage().connected(StorageURL.parse(url))
        await connected.backend.discard_connections()

    run_sync(drop)


def _delete_trigger(proxied: Proxied, id: Any) -> bytes | re.Pattern[bytes]:
    """What only the delete's own request (the one that removes the record) carries."""
    if proxied.kind == "postgresql":
        return UUID(str(id)).bytes  # the id as a binary parameter (the Bind, not the Parse)
    if proxied.kind == "redis":
        return b"DEL"  # the MULTI/DEL/ZREM/EXEC pipeline
    # The record's own DELETE (the index entry's, sent first, names the id inverted).
    return re.compile(rb"DELETE /\S*" + re.escape(f"{id}.json".encode()))


def test_proxy_passes_traffic_through(proxied: Proxied) -> None:
    """Unarmed, the proxy changes nothing (the tests above measure only their fault)."""
    note, twin = notes_on(proxied)
    reference = note(text="plain").model_dump()
    assert stored(twin, reference["id"]) == ("plain", 1)
    assert proxied.proxy.replies_lost == 0
    asyncio.run(asyncio.sleep(0))


# -- memory and SQLite: no connection to lose, the same boundary ----------------------------
#
# These stores have no network between the library and the data, so a reply cannot get lost
# on the way. The boundary's rule is the same for them; it is checked with the real store
# applying the write and then raising what a dying socket raises (ConnectionResetError).


class _LosesReplies:
    """Applies each write to the real store, then loses the reply of the next one armed;
    answers the next ``busy_reads`` reads busy."""

    armed = 0
    busy_reads = 0

    async def load_records(self, keys: Any) -> Any:
        if _LosesReplies.busy_reads:
            _LosesReplies.busy_reads -= 1
            url = self.url  # type: ignore[attr-defined]
            raise StorageBusyError("the store is busy (a test's): retry in a moment", url=url)
        return await super().load_records(keys)  # type: ignore[misc]

    async def save_records(self, records: Any) -> Any:
        result = await super().save_records(records)  # type: ignore[misc]
        _maybe_lose()
        return result

    async def delete(self, id: UUID, class_name: str) -> bool:
        result: bool = await super().delete(id, class_name)  # type: ignore[misc]
        _maybe_lose()
        return result


def _maybe_lose() -> None:
    if _LosesReplies.armed:
        _LosesReplies.armed -= 1
        raise ConnectionResetError(104, "Connection reset by peer")


class _LosingMemory(_LosesReplies, MemoryBackend):
    """``memory://`` losing replies."""


class _LosingSQLite(_LosesReplies, SQLiteBackend):
    """``sqlite://`` losing replies."""


pydantic_toast.register_backend("lostreplymemory", _LosingMemory)
pydantic_toast.register_backend("lostreplysqlite", _LosingSQLite)


@pytest.fixture(params=[pytest.param("memory"), pytest.param("sqlite", marks=pytest.mark.sqlite)])
def local_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A memory or SQLite URL whose backend loses the replies it is told to."""
    if request.param == "memory":
        url = f"lostreplymemory://{uuid4().hex}"
    else:
        path = tmp_path / "toast.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"lostreplysqlite:///{path}"
    _LosesReplies.armed = _LosesReplies.busy_reads = 0
    yield url
    _LosesReplies.armed = _LosesReplies.busy_reads = 0
    pydantic_toast.close_storage()


def local_notes(url: str) -> type[ExternalBaseModel]:
    return type(
        "Note",
        (ExternalBaseModel,),
        {
            "__annotations__": {"text": str},
            "model_config": ExternalConfigDict(storage=url, external_name=f"N{uuid4().hex[:10]}"),
        },
    )


def test_local_update_and_create_whose_reply_is_lost_are_reported_saved(local_url: str) -> None:
    """Memory and SQLite: an update and a create applied, their replies lost: both saved
    once at the right revision (before the fix: ConcurrencyError from the blind retry)."""
    note = local_notes(local_url)
    item = note(text="first")
    item.model_dump()
    item.text = "second"  # type: ignore[attr-defined]
    _LosesReplies.armed = 1
    item.model_dump()
    assert _LosesReplies.armed == 0
    assert item.external_revision == 2  # type: ignore[attr-defined]
    fresh = note(text="new")
    _LosesReplies.armed = 1
    reference = fresh.model_dump()
    assert fresh.external_revision == 1  # type: ignore[attr-defined]
    assert note.model_validate(reference).external_revision == 1  # type: ignore[attr-defined]
    loaded = note.model_validate({"class_name": reference["class_name"], "id": item.external_id})  # type: ignore[attr-defined]
    assert (loaded.text, loaded.external_revision) == ("second", 2)  # type: ignore[attr-defined]
    assert pydantic_toast.count(note) == 2


def test_local_lost_save_whose_read_back_meets_a_busy_store_is_settled(local_url: str) -> None:
    """Memory and SQLite (no reply timeout of their own: reading back is tried for 10 s): an
    update applied, its reply lost, and the store busy for the next three reads: reported
    saved once at revision 2 (before: OutcomeUnknownError at the first busy read)."""
    note = local_notes(local_url)
    item = note(text="first")
    item.model_dump()
    item.text = "second"  # type: ignore[attr-defined]
    _LosesReplies.armed, _LosesReplies.busy_reads = 1, 3
    item.model_dump()
    assert (_LosesReplies.armed, _LosesReplies.busy_reads) == (0, 0)
    assert item.external_revision == 2  # type: ignore[attr-defined]
    loaded = note.model_validate(
        {"class_name": item.__toast_settings__.external_name, "id": item.external_id}
    )  # type: ignore[attr-defined]
    assert (loaded.text, loaded.external_revision) == ("second", 2)  # type: ignore[attr-defined]


def test_local_delete_whose_reply_is_lost_is_outcome_unknown(local_url: str) -> None:
    """Memory and SQLite: a delete applied, its reply lost: OutcomeUnknownError, never
    RecordNotFoundError, and the record is gone."""
    note = local_notes(local_url)
    reference = note(text="doomed").model_dump()
    _LosesReplies.armed = 1
    with pytest.raises(ExternalStorageError) as info:
        pydantic_toast.delete(note, reference)
    assert type(info.value) is OutcomeUnknownError, f"{type(info.value).__name__}: {info.value}"
    assert "lost after the delete was sent" in str(info.value)
    with pytest.raises(RecordNotFoundError):
        note.model_validate(reference)


# -- Redis: a save script is sent once, so an identical record is a rival's ------------------
#
# Neither the library nor redis-py's cluster client (the cluster backend sends its save script
# itself) resends a save script. A record found one revision ahead holding exactly the
# document a save carries was therefore written by another writer who read the same revision
# and wrote the same data in the same microsecond: a conflict, never taken for this write
# (which would lose one of two increments). Shown by sending the same script call twice.


def _record(data: bytes, revision: int | None, id: UUID | None = None) -> StoredRecord:
    now = datetime.now(UTC)
    return StoredRecord(
        class_name="Repeat",
        id=id or uuid4(),
        data=data,
        schema_version=1,
        created_at=now,
        updated_at=now,
        revision=revision,
    )


async def identical_record_scenario(backend: Any) -> None:
    """Each save sent twice: the second is a conflict, and the record holds the first."""
    first = _record(b'{"n":1}', 0)
    assert await backend.save_records([first]) == [1]
    with pytest.raises(ConcurrencyError) as info:
        await backend.save_records([first])
    assert (info.value.expected, info.value.current) == (0, 1)
    update = dataclasses.replace(first, data=b'{"n":2}', revision=1)
    assert await backend.save_records([update]) == [2]
    with pytest.raises(ConcurrencyError) as info:
        await backend.save_records([update])
    assert (info.value.expected, info.value.current) == (1, 2)
    batch = [dataclasses.replace(update, revision=2), _record(b"{}", 0)]
    assert await backend.save_records(batch) == [3, 1]
    with pytest.raises(ConcurrencyError):
        await backend.save_records(batch)
    (loaded,) = await backend.load_records([first.key])
    assert (loaded.data, loaded.revision) == (b'{"n":2}', 3)
    (new,) = await backend.load_records([batch[1].key])
    assert new is not None
    assert new.revision == 1


@pytest.mark.redis
def test_redis_takes_an_identical_record_for_a_rivals(redis_base_url: str) -> None:
    """On a plain Redis server (the cluster's test is in test_redis_cluster.py)."""
    prefix = f"toast_test_{uuid4().hex[:12]}"
    url = f"{redis_base_url}?prefix={prefix}"

    async def main() -> None:
        backend = RedisBackend(url)
        await backend.connect()
        try:
            await identical_record_scenario(backend)
        finally:
            await backend.disconnect()

    try:
        asyncio.run(main())
    finally:
        _delete_redis_prefix(url, prefix)
