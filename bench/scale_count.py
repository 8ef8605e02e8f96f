"""count() and page() at 10k, 100k and 1M records of one class, on every built-in store.

Usage: ``python bench/scale_count.py [postgres_admin_url]`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``; ``--only postgresql,redis,sqlite,memory``;
``SCALE_SIZES=2000`` for a trial run).

Each store is a throwaway one: a PostgreSQL database (migrated, dropped afterwards), a
redis-server of its own on a free port (stopped afterwards), a SQLite file in a temporary
folder, a ``memory://`` store. Records are written in bulk, not one save per row: PostgreSQL
``INSERT ... SELECT generate_series`` (the count triggers fire once per statement), SQLite a
recursive CTE (its row triggers fire per row), Redis pipelined ``SET`` + ``ZADD`` of documents
in the backend's format, memory records put in its store. Record n of the class was created n
seconds after ``BASE``; 10,000 records of another class sit beside them.

At each size, one record is deleted (by the bench, beside the library) after its page cursor
was taken; then, timed through the library in interleaved rounds (every store in turn, the
order rotating, 15 rounds after a warm-up): ``acount``; ``apage`` of 50 records: the first
page, a middle page (from the real cursor of the record half-way down the class) and the page
after the deleted record's cursor; and, for reference, the exact ``count(*)`` (ZCARD) the
stores answer without the library's counter. Median [min-max] in milliseconds.

Round trips: PostgreSQL and Redis are also reached through a loopback proxy that counts the
turns of each connection (the client speaking after the server had): each operation is run
once to warm up (statements prepared, scripts loaded), then counted. Redis also prints the
server's ``INFO commandstats`` deltas of the counted operations (commands run inside a script
included) and the server time of the script call. SQLite counts the calls made to its
connection's thread (aiosqlite's ``Connection._execute``; the library's reads run their one
statement in one such call, not through SQLAlchemy's cursor).

Reads never write: the library's PostgreSQL connections open a database whose default is
``default_transaction_read_only = on`` (the bench's own connection turns it off), so a write
would fail the run; Redis reports its ``rdb_changes_since_last_save`` (the server's count of
changed keys) and any write command in ``INFO commandstats`` over the timed reads; SQLite its
``PRAGMA data_version`` seen from a second connection (it changes on any commit by another);
memory compares its records before and after.

Also prints PostgreSQL's ``EXPLAIN (ANALYZE, BUFFERS)`` of the middle page and the count at
the largest size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import redis.asyncio as aioredis

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, PageCursor
from pydantic_toast._records import StoredRecord
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.postgresql import _SQL
from pydantic_toast.integrations.cli import main as toast_cli

# SCALE_SIZES=2000 for a quick trial run.
SIZES = tuple(int(n) for n in os.environ.get("SCALE_SIZES", "10000,100000,1000000").split(","))
ROUNDS = int(os.environ.get("SCALE_ROUNDS", "15"))
PAGE = 50
BASE = datetime(2020, 1, 1, tzinfo=UTC)
TEXT = "x" * 180
OPERATIONS = ("count()", "first page", "middle page", "page after deleted cursor")


def _model(url: str) -> Any:
    class Item(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=url, external_name="BenchItem")

    return Item


def _created(n: int) -> datetime:
    return BASE + timedelta(seconds=n)


def _middle(size: int) -> str:
    """A cursor at the middle record's time with an id of its own (no record has it)."""
    return PageCursor(_created(size // 2), uuid4()).token()


async def cursor_of(model: Any, n: int) -> str:
    """Record n's own page cursor, as the library hands it out (the ``next_after`` of a page
    that ends on it)."""
    above = PageCursor(_created(n) + timedelta(microseconds=1), UUID(int=0)).token()
    page = await pydantic_toast.apage(model, limit=1, after=above)
    assert len(page.items) == 1
    assert page.next_after is not None
    return page.next_after


class TurnCounter:
    """A loopback TCP proxy to ``127.0.0.1:port`` counting round trips: a turn is the client
    sending after the server (or first) on one connection."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.turns = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            spoke = [False]  # whether the client spoke last on this connection
            for source, sink, from_client in ((client, server, True), (server, client, False)):
                source.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                threading.Thread(
                    target=self._pump, args=(source, sink, spoke, from_client), daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, spoke: list[bool], from_client: bool
    ) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                for end in (source, sink):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)
                return
            with self._lock:  # recorded before forwarding: the reply cannot overtake it
                if from_client and not spoke[0]:
                    self.turns += 1
                spoke[0] = from_client
            sink.sendall(data)

    def close(self) -> None:
        self.listener.close()


async def _backend(url: str) -> Any:
    storage = pydantic_toast.current_storage()
    return (await storage.connected(StorageURL.parse(url))).backend


class Postgres:
    name = "postgresql"

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.database = f"toast_bench_scale_{uuid4().hex[:8]}"
        self.url = admin_url.rsplit("/", 1)[0] + f"/{self.database}"

    async def open(self) -> None:
        admin = await asyncpg.connect(self.admin_url)
        await admin.execute(f'CREATE DATABASE "{self.database}"')
        await admin.close()
        assert await asyncio.to_thread(toast_cli, ["migrate", self.url]) == 0
        # Every connection the library opens is read-only: a read that wrote would fail.
        self.connection = await asyncpg.connect(self.url)
        await self.connection.execute(
            f'ALTER DATABASE "{self.database}" SET default_transaction_read_only = on'
        )
        await self.connection.execute("SET default_transaction_read_only = off")
        await self._insert("Other", 0, 10_000)
        self.model = _model(self.url)
        self.proxy = TurnCounter(StorageURL.parse(self.url).port or 5432)
        self.counted = _model(self.url.replace(f":{self.proxy.target}/", f":{self.proxy.port}/"))

    async def grow(self, have: int, size: int) -> None:
        await self._insert("BenchItem", have, size)
        await self.connection.execute("VACUUM ANALYZE external_records")

    async def _insert(self, class_name: str, start: int, stop: int) -> None:
        await self.connection.execute(
            "INSERT INTO external_records (class_name, id, schema_version, data, created_at, "
            "updated_at) SELECT $1, gen_random_uuid(), 1, jsonb_build_object('text', $4::text), "
            "$5::timestamptz + make_interval(secs => n), now() "
            "FROM generate_series($2::int + 1, $3::int) AS n",
            class_name,
            start,
            stop,
            TEXT,
            BASE,
        )

    async def delete(self, n: int) -> None:
        deleted = await self.connection.execute(
            "DELETE FROM external_records WHERE class_name = 'BenchItem' AND created_at = $1",
            _created(n),
        )
        assert deleted == "DELETE 1", deleted

    async def exact(self) -> int:
        return int(
            await self.connection.fetchval(
                "SELECT count(*) FROM external_records WHERE class_name = 'BenchItem'"
            )
        )

    async def writes(self) -> Any:
        return "read-only connections"

    async def explain(self, size: int) -> str:
        cursor = PageCursor.from_token(_middle(size))
        assert cursor is not None
        rows = await self.connection.fetch(
            f"EXPLAIN (ANALYZE, BUFFERS) {_SQL['page_after']}",
            "BenchItem",
            datetime.now(UTC),
            cursor.created_at,
            cursor.id,
            PAGE,
        )
        count = await self.connection.fetch(
            f"EXPLAIN (ANALYZE, BUFFERS) {_SQL['count']}", "BenchItem", datetime.now(UTC)
        )
        return "\n".join(row[0] for row in [*rows, *count])

    async def close(self) -> None:
        self.proxy.close()
        await self.connection.close()
        admin = await asyncpg.connect(self.admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        await admin.close()


class Redis:
    name = "redis"

    async def open(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.process = subprocess.Popen(  # noqa: ASYNC220  (once, before anything is timed)
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0?prefix=bench"
        self.client = aioredis.Redis(port=self.port)
        for _ in range(100):
            try:
                await self.client.ping()
                break
            except aioredis.ConnectionError:
                await asyncio.sleep(0.05)
        await self._insert("Other", 0, 10_000)
        self.model = _model(self.url)
        self.proxy = TurnCounter(self.port)
        self.counted = _model(self.url.replace(f":{self.port}/", f":{self.proxy.port}/"))
        self.write_commands = {
            name.decode() if isinstance(name, bytes) else name
            for name, info in (await self.client.command()).items()
            if "write" in info["flags"]
        }

    async def grow(self, have: int, size: int) -> None:
        await self._insert("BenchItem", have, size)

    async def _insert(self, class_name: str, start: int, stop: int) -> None:
        stamp = BASE.isoformat()
        for chunk in range(start, stop, 10_000):
            documents: dict[str, bytes] = {}
            scores: dict[str, float] = {}
            for n in range(chunk + 1, min(chunk + 10_000, stop) + 1):
                created = _created(n)
                id = str(uuid4())
                documents[f"bench:{class_name}:{id}"] = (
                    f'{{"created_at":"{created.isoformat()}","revision":1,"schema_version":1,'
                    f'"updated_at":"{stamp}","data":{{"text":"{TEXT}"}}}}'
                ).encode()
                scores[id] = created.timestamp()
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.mset(documents)
                pipe.zadd(f"bench:{class_name}:index", scores)
                await pipe.execute()

    async def delete(self, n: int) -> None:
        score = _created(n).timestamp()
        [member] = await self.client.zrangebyscore("bench:BenchItem:index", score, score)
        await self.client.delete(f"bench:BenchItem:{member.decode()}")
        await self.client.zrem("bench:BenchItem:index", member)

    async def exact(self) -> int:
        return int(await self.client.zcard("bench:BenchItem:index"))

    async def commandstats(self, figure: str = "calls") -> dict[str, int]:
        stats = await self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v[figure]) for name, v in stats.items()}

    async def writes(self) -> Any:
        persistence = await self.client.info("persistence")
        stats = await self.commandstats()
        written = {name: calls for name, calls in stats.items() if name in self.write_commands}
        return persistence["rdb_changes_since_last_save"], written

    async def close(self) -> None:
        self.proxy.close()
        await self.client.aclose()
        self.process.terminate()
        self.process.wait(10)


class SQLite:
    name = "sqlite"

    async def open(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="toast_bench_scale_")
        self.path = Path(self.folder) / "scale.db"
        self.url = f"sqlite:///{self.path}"
        assert await asyncio.to_thread(toast_cli, ["migrate", self.url]) == 0
        self._insert("Other", 0, 10_000)
        self.model = _model(self.url)
        self.counted = self.model
        self.watcher = sqlite3.connect(self.path)

    async def grow(self, have: int, size: int) -> None:
        await asyncio.to_thread(self._insert, "BenchItem", have, size)

    def _insert(self, class_name: str, start: int, stop: int) -> None:
        with sqlite3.connect(self.path) as connection:
            connection.execute(
                "WITH RECURSIVE n(i) AS (SELECT ? + 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "INSERT INTO external_records (class_name, id, schema_version, data, created_at, "
                "updated_at, revision) SELECT ?, lower(hex(randomblob(16))), 1, "
                "json_object('text', ?), "
                "strftime('%Y-%m-%d %H:%M:%f000', ?, '+' || i || ' seconds'), "
                "'2020-01-01 00:00:00.000000', 1 FROM n",
                (start, stop, class_name, TEXT, BASE.strftime("%Y-%m-%d %H:%M:%S")),
            )
            connection.execute("ANALYZE")

    async def delete(self, n: int) -> None:
        def delete() -> None:
            with sqlite3.connect(self.path) as connection:
                deleted = connection.execute(
                    "DELETE FROM external_records WHERE class_name = 'BenchItem' AND "
                    "created_at = ?",
                    (_created(n).strftime("%Y-%m-%d %H:%M:%S.%f"),),
                ).rowcount
                assert deleted == 1, deleted

        await asyncio.to_thread(delete)

    async def exact(self) -> int:
        def count() -> int:
            with sqlite3.connect(self.path) as connection:
                row = connection.execute(
                    "SELECT count(*) FROM external_records WHERE class_name = 'BenchItem'"
                ).fetchone()
                return int(row[0])

        return await asyncio.to_thread(count)

    async def writes(self) -> Any:
        return self.watcher.execute("PRAGMA data_version").fetchone()[0]

    async def close(self) -> None:
        self.watcher.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class Memory:
    name = "memory"
    url = "memory://bench"

    async def open(self) -> None:
        self.store = pydantic_toast.current_storage().memory_store("bench")
        self._insert("Other", 0, 10_000)
        self.model = _model(self.url)
        self.counted = self.model

    async def grow(self, have: int, size: int) -> None:
        self._insert("BenchItem", have, size)

    def _insert(self, class_name: str, start: int, stop: int) -> None:
        data = json.dumps({"text": TEXT}).encode()
        with self.store.lock:
            for n in range(start + 1, stop + 1):
                record = StoredRecord(
                    class_name=class_name,
                    id=uuid4(),
                    data=data,
                    schema_version=1,
                    created_at=_created(n),
                    updated_at=BASE,
                    revision=1,
                )
                self.store.put(record, None)

    async def delete(self, n: int) -> None:
        [record] = [r for r in self.store.records("BenchItem") if r.created_at == _created(n)]
        with self.store.lock:
            assert self.store.pop(record.key)

    async def exact(self) -> int:
        return len(self.store.records("BenchItem"))

    async def writes(self) -> Any:
        return [(record.key, record) for record in self.store.records()]

    async def close(self) -> None:
        self.store.clear()


async def _timed(call: Awaitable[Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await call
    return (time.perf_counter() - start) * 1000, result


def _calls(model: Any, cursors: dict[str, str]) -> dict[str, Callable[[], Awaitable[Any]]]:
    """The timed operations of ``model``, by name."""
    return {
        "count()": lambda: pydantic_toast.acount(model),
        "first page": lambda: pydantic_toast.apage(model, limit=PAGE),
        "middle page": lambda: pydantic_toast.apage(model, limit=PAGE, after=cursors["middle"]),
        "page after deleted cursor": lambda: pydantic_toast.apage(
            model, limit=PAGE, after=cursors["deleted"]
        ),
    }


async def round_trips(store: Any, cursors: dict[str, str]) -> dict[str, str]:
    """Each operation's round trips, counted on its second run (the first warms up)."""
    counted: dict[str, str] = {}
    if store.name == "memory":
        return dict.fromkeys(OPERATIONS, "0 (no I/O)")
    await _backend(store.counted.model_config["storage"])
    statements = [0]
    import aiosqlite.core

    thread_call = aiosqlite.core.Connection._execute

    async def counted_call(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        statements[0] += 1
        return await thread_call(self, fn, *args, **kwargs)

    if store.name == "sqlite":
        aiosqlite.core.Connection._execute = counted_call  # type: ignore[method-assign]
    for what, call in _calls(store.counted, cursors).items():
        await call()
        before = await store.commandstats() if store.name == "redis" else {}
        spent = await store.commandstats("usec") if store.name == "redis" else {}
        statements[0] = 0
        turns = store.proxy.turns if store.name != "sqlite" else 0
        await call()
        if store.name == "sqlite":
            counted[what] = f"{statements[0]} call(s) to the connection's thread"
            continue
        counted[what] = f"{store.proxy.turns - turns}"
        if store.name == "redis":
            after = await store.commandstats()
            delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
            delta.pop("info", None)
            counted[what] += " " + ",".join(f"{k}:{v}" for k, v in sorted(delta.items()))
            server = (await store.commandstats("usec"))["evalsha"] - spent["evalsha"]
            counted[what] += f" (server time of the script: {server} us)"
    if store.name == "sqlite":
        aiosqlite.core.Connection._execute = thread_call  # type: ignore[method-assign]
    return counted


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


async def main(admin_url: str, only: set[str]) -> None:
    stores: list[Any] = [
        s for s in (Postgres(admin_url), Redis(), SQLite(), Memory()) if s.name in only
    ]
    for store in stores:
        await store.open()
    try:
        have = 0
        for deleted, size in enumerate(SIZES, start=1):
            for store in stores:
                start = time.perf_counter()
                await store.grow(have, size)
                print(f"{store.name}: {size:,} records in {time.perf_counter() - start:.1f} s")
            have = size
            cursors: dict[str, dict[str, str]] = {}
            for store in stores:
                cursors[store.name] = {
                    "middle": await cursor_of(store.model, size // 2),
                    "deleted": await cursor_of(store.model, size // 3),
                }
                await store.delete(size // 3)
            written = {store.name: await store.writes() for store in stores}
            samples: dict[tuple[str, str], list[float]] = {}
            for round_ in range(ROUNDS + 1):
                for store in stores[round_ % len(stores) :] + stores[: round_ % len(stores)]:
                    calls = _calls(store.model, cursors[store.name])
                    measured = {what: await _timed(call()) for what, call in calls.items()}
                    measured["count(*) / ZCARD"] = await _timed(store.exact())
                    assert measured["count()"][1] == size - deleted, (
                        store.name,
                        measured["count()"][1],
                    )
                    for what in OPERATIONS[1:]:
                        assert len(measured[what][1].items) == PAGE, (store.name, what)
                    if round_:  # round 0 warms up
                        for what, (ms, _) in measured.items():
                            samples.setdefault((store.name, what), []).append(ms)
            print(f"{size:,} records, {ROUNDS} rounds, {_load()}")
            for (name, what), values in samples.items():
                print(
                    f"{size:>9,} {name:<10} {what:<26} {statistics.median(values):8.2f} ms "
                    f"[{min(values):.2f}-{max(values):.2f}]",
                    flush=True,
                )
            for store in stores:
                now = await store.writes()
                if store.name == "redis":
                    print(
                        f"{size:>9,} redis reads never write: changed keys, write commands "
                        f"{written['redis']} before, {now} after"
                    )
                    assert now == written["redis"]
                elif store.name == "sqlite":
                    print(
                        f"{size:>9,} sqlite reads never write: data_version "
                        f"{written['sqlite']} before, {now} after"
                    )
                    assert now == written["sqlite"]
                elif store.name == "memory":
                    same = len(now) == len(written["memory"]) and all(
                        a[0] == b[0] and a[1] is b[1]
                        for a, b in zip(now, written["memory"], strict=True)
                    )
                    print(f"{size:>9,} memory reads never write: records unchanged: {same}")
                    assert same
                else:
                    print(
                        f"{size:>9,} postgresql reads never write: every read ran on "
                        "read-only connections"
                    )
            for store in stores:
                trips = await round_trips(store, cursors[store.name])
                for what, figure in trips.items():
                    print(f"{size:>9,} {store.name:<10} round trips, {what:<26} {figure}")
        for store in stores:
            if store.name == "postgresql":
                print(await store.explain(SIZES[-1]))
    finally:
        await pydantic_toast.aclose_storage()
        for store in stores:
            await store.close()


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--only")]
    chosen = {"postgresql", "redis", "sqlite", "memory"}
    for a in sys.argv[1:]:
        if a.startswith("--only"):
            chosen = set(a.split("=", 1)[1].split(","))
    asyncio.run(
        main(arguments[0] if arguments else "postgresql://postgres@127.0.0.1:5432/postgres", chosen)
    )
