"""Reads never write (issue 11 item 6): loads, pages and counts leave every store as it was.

Each store is watched through its own account of writes, not through the library:

* PostgreSQL: the reads run on a database of the test's own whose connections are read-only
  by default (``default_transaction_read_only``): any write the library sent would fail them.
* Redis: a server of the test's own; its ``INFO commandstats`` (commands run inside scripts
  included) show no write command over the reads, and its count of changed keys stays put.
* SQLite: ``PRAGMA data_version`` seen from another connection (it changes with any commit).
* memory: the live entries are the same objects before and after, and no entry is added.

Expired records are among those read (a read that removed one it met would be writing), and
the reads include a page after the cursor of a deleted record.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.integrations.cli import main as toast_cli
from tests import servers
from tests.integration.conftest import _admin

Watch = Callable[[], Any]
"""What a store says of the writes it has taken: the same before and after if none came."""
Store = tuple[str, Callable[[], Watch]]
"""A store's URL, and what to call once the records are written: it returns the watch."""


def _model(url: str, **config: Any) -> type[ExternalBaseModel]:
    class Item(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=url, external_name="Item", **config)
        n: int

    return Item


@pytest.fixture
def postgresql(postgres_admin_url: str, empty_database: str) -> Store:
    """A migrated database of this test's own; once the records are written, its new
    connections are read-only by default (the watch: the reads did not fail)."""
    assert toast_cli(["migrate", empty_database]) == 0
    database = empty_database.rpartition("/")[2]

    def read_only() -> Watch:
        pydantic_toast.close_storage()  # the reads open new connections
        _admin(
            postgres_admin_url,
            f'ALTER DATABASE "{database}" SET default_transaction_read_only = on',
        )
        return lambda: "read-only"

    return empty_database, read_only


@pytest.fixture
def redis_of_its_own() -> Iterator[Store]:
    """A redis-server of this test's own (no other client writes to it): the write commands
    it ran (scripts' included) and its count of changed keys."""
    try:
        server = servers.TempRedis()
    except FileNotFoundError:
        servers.missing_server("Redis", "(no variable: needs redis-server)")
        raise
    client = redis.Redis(port=server.port)
    writing = {
        name.decode() if isinstance(name, bytes) else name
        for name, info in client.command().items()
        if "write" in info["flags"]
    }

    def watch() -> Any:
        stats = client.info("commandstats")
        written = {
            name: figures["calls"]
            for name, figures in stats.items()
            if name.removeprefix("cmdstat_") in writing
        }
        return written, client.info("persistence")["rdb_changes_since_last_save"]

    try:
        yield f"redis://127.0.0.1:{server.port}/0?prefix=reads", lambda: watch
    finally:
        pydantic_toast.close_storage()
        client.close()
        server.stop()


@pytest.fixture
def sqlite(tmp_path: Path, sqlite_template: Path) -> Iterator[Store]:
    """A migrated file of this test's own: its data_version, seen from another connection."""
    path = tmp_path / "reads.db"
    path.write_bytes(sqlite_template.read_bytes())
    watcher = sqlite3.connect(path)
    try:
        yield f"sqlite:///{path}", lambda: lambda: watcher.execute("PRAGMA data_version").fetchone()
    finally:
        pydantic_toast.close_storage()
        watcher.close()


@pytest.fixture
def memory() -> Iterator[Store]:
    """A memory:// store of this test's own: its live entries, by identity."""
    name = f"reads{uuid4().hex[:8]}"

    def watch() -> Any:
        store = pydantic_toast.current_storage().memory_store(name)
        return {record.key: id(record) for record in store.records()}

    yield f"memory://{name}", lambda: watch
    pydantic_toast.current_storage().memory_store(name).clear()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("redis_of_its_own", marks=pytest.mark.redis),
    ]
)
def store(request: pytest.FixtureRequest) -> Store:
    """Each store in turn."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def test_loads_pages_and_counts_write_nothing(store: Store) -> None:
    """Single and batch loads, pages (one after a deleted record's cursor) and counts, over
    live and expired records, leave the store's account of its writes as it was."""
    url, start_reading = store
    item, brief = _model(url), _model(url, ttl=0.2)
    kept = pydantic_toast.dump([item(n=n) for n in range(12)])
    gone = pydantic_toast.page(item, limit=4)
    pydantic_toast.delete(item, gone.items[-1].external_id)
    pydantic_toast.dump([brief(n=100 + n) for n in range(3)])  # the newest, soon expired
    time.sleep(0.5)
    watch = start_reading()
    before = watch()
    one = item.model_validate(kept[0])
    batch = pydantic_toast.validate(list[item], kept[4:8])  # type: ignore[valid-type]
    first = pydantic_toast.page(item, limit=5)
    later = pydantic_toast.page(item, limit=5, after=first.next_after)
    past_deleted = pydantic_toast.page(item, limit=20, after=gone.next_after)
    counted = pydantic_toast.count(item)
    assert watch() == before
    assert one.n == 0  # type: ignore[attr-defined]
    assert [m.n for m in batch] == [4, 5, 6, 7]
    assert counted == 11
    assert {m.n for m in [*first.items, *later.items]} <= set(range(12))
    assert len(first.items) + len(later.items) == 10
    assert len(past_deleted.items) == 8
