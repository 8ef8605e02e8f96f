"""redis+sentinel:// on a real local setup: 1 primary, 1 replica and 3 sentinels."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from uuid import uuid4

import pytest

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageConnectionError
from pydantic_toast.runtime.storage import Storage
from pydantic_toast.testing.conformance import BackendConformance
from tests import servers
from tests.failover import run_with

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture(scope="module")
def sentinel() -> Iterator[servers.TempRedisSentinel]:
    """A primary, a replica and 3 sentinels for this module, torn down afterwards."""
    try:
        setup = servers.TempRedisSentinel()
    except FileNotFoundError:
        servers.missing_server("Redis Sentinel", "(no variable: needs redis-server)")
        return
    try:
        yield setup
    finally:
        setup.destroy()


class TestRedisSentinelConformance(BackendConformance):
    """The backend conformance suite against redis+sentinel://."""

    @pytest.fixture
    def storage_url(self, sentinel: servers.TempRedisSentinel) -> str:  # type: ignore[override]
        """A fresh key prefix on the Sentinel-managed primary."""
        return sentinel.url(f"conf{uuid4().hex[:10]}")


def test_records_are_written_on_the_primary_the_sentinels_name(
    sentinel: servers.TempRedisSentinel,
) -> None:
    """A save lands on the current primary, under the Redis backend's key layout."""
    prefix = f"where{uuid4().hex[:8]}"

    class Note(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=sentinel.url(prefix), external_name="Note")
        text: str

    with Storage():
        reference = Note(text="hello").model_dump()
    key = f"{prefix}:Note:{reference['id']}"
    assert sentinel.redis_cli("exists", key, port=sentinel.primary_port()).strip() == "1"


def test_an_unknown_service_names_the_fix(sentinel: servers.TempRedisSentinel) -> None:
    """A service no sentinel monitors fails with a connection error that says what to check."""
    url = sentinel.url("x").replace(f"/{sentinel.SERVICE}/", "/nosuchservice/")

    class Lost(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=url, external_name="Lost")
        text: str

    with Storage(), pytest.raises(StorageConnectionError, match="service name"):
        Lost(text="x").model_dump()


# In about 1 run of 3, a redis-py connection opened during the failover (to the primary or a
# sentinel) is collected unclosed (a ResourceWarning: its socket, stream writer or transport);
# not traced to its path in redis-py yet.
# Collected inside the test (gc.collect below) so that the filters apply to it.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function StreamWriter.__del__"
    ":pytest.PytestUnraisableExceptionWarning",
    "ignore:Exception ignored in. <function AbstractConnection.__del__"
    ":pytest.PytestUnraisableExceptionWarning",
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning",
    "ignore:Exception ignored in. <function _SelectorTransport.__del__"
    ":pytest.PytestUnraisableExceptionWarning",
)
def test_failover_during_a_workload(sentinel: servers.TempRedisSentinel) -> None:
    """The primary killed under writes: the sentinels promote the replica and writes resume
    on it without an app restart; the old primary comes back as a replica."""
    victim = sentinel.primary_port()
    promoted: list[float] = []

    def fail_over() -> None:
        sentinel.kill(victim)
        promoted.append(sentinel.wait_promoted(victim))
        sentinel.start_data_node(victim)

    figures = run_with(fail_over, sentinel.url(f"failover{uuid4().hex[:8]}"), seconds_after=3.0)
    print(f"\nSentinel failover: {figures}, promoted after {promoted[0]:.2f} s")
    new_primary = sentinel.primary_port()
    assert new_primary != victim
    sentinel.wait_replica_synced(victim)  # the sentinels made the old primary a replica
    assert figures["acknowledged"] > 0
    assert figures["lost"] < figures["acknowledged"]  # asynchronous replication: a few may go
    assert asyncio.run(_ping(sentinel)) is True
    gc.collect()


def test_sentinels_and_data_nodes_with_different_passwords() -> None:
    """The URL's password reaches the data nodes and sentinel_password the sentinels (each
    requires its own): records round-trip, and neither password shows in the backend."""
    try:
        setup = servers.TempRedisSentinel(password="data-pw-1", sentinel_password="watch-pw-2")
    except FileNotFoundError:
        servers.missing_server("Redis Sentinel", "(no variable: needs redis-server)")
        return
    try:
        url = setup.url(f"auth{uuid4().hex[:8]}")

        class Secret(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=url, external_name="Secret")
            text: str

        with Storage() as storage:
            reference = Secret(text="kept").model_dump()
            assert Secret.model_validate(reference).text == "kept"
            shown = repr(storage) + repr(Secret.model_config)
        for secret in ("data-pw-1", "watch-pw-2"):
            assert secret not in shown
    finally:
        setup.destroy()


async def _ping(sentinel: servers.TempRedisSentinel) -> bool:
    from pydantic_toast.backends.redis_sentinel import RedisSentinelBackend

    backend = RedisSentinelBackend(sentinel.url("ping"))
    await backend.connect()
    try:
        return bool(await backend._connected().ping())
    finally:
        await backend.disconnect()


def test_a_save_on_a_connection_to_a_demoted_primary_lands_on_the_new_one() -> None:
    """The primary demoted while the pool holds a connection to it (no disconnect: roles
    swapped by hand, the sentinels told): the save's READONLY reply drops that connection,
    as redis-py does, and the save is settled on the primary the sentinels now name, instead
    of failing with "a read-only replica: point the storage URL at the primary"."""
    try:
        setup = servers.TempRedisSentinel()
    except FileNotFoundError:
        servers.missing_server("Redis Sentinel", "(no variable: needs redis-server)")
        return
    try:
        old, new = setup.data_ports
        setup.wait_primary_known(old)

        class Note(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=setup.url("demoted"), external_name="Note")
            text: str

        with Storage():
            first = Note(text="before").model_dump()  # the pool now holds a connection to old
            setup.redis_cli("replicaof", "no", "one", port=new)
            setup.redis_cli("replicaof", "127.0.0.1", str(new), port=old)
            for port in setup.sentinel_ports:
                setup.redis_cli("sentinel", "remove", setup.SERVICE, port=port)
                setup.redis_cli(
                    "sentinel", "monitor", setup.SERVICE, "127.0.0.1", str(new), "2", port=port
                )
            assert setup.primary_port() == new
            second = Note(text="after").model_dump()
            assert Note.model_validate(second).text == "after"
            assert Note.model_validate(first).text == "before"
        key = f"demoted:Note:{second['id']}"
        assert setup.redis_cli("exists", key, port=new).strip() == "1"
    finally:
        setup.destroy()
