"""SQLite specifics: the embedded default needs its migration and keeps timestamps aware."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pydantic_toast
from pydantic_toast import (
    ConcurrencyError,
    ExternalBaseModel,
    ExternalConfigDict,
    StorageConfigurationError,
    StorageConnectionError,
    StorageSchemaError,
)

pytestmark = pytest.mark.sqlite
ROOT = Path(__file__).resolve().parents[2]


def _memo_on_a_copy(
    tmp_path: Path, sqlite_template: Path, name: str
) -> tuple[Path, type[ExternalBaseModel]]:
    """A migrated SQLite file of the test's own (the template copied as ``name``), and a Memo
    model with one ``text`` field stored in it."""
    path = tmp_path / name
    shutil.copy(sqlite_template, path)

    class Memo(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=f"sqlite:///{path}")

    return path, Memo


def test_unmigrated_file_says_which_command_to_run(tmp_path: Path) -> None:
    """A SQLite file without the table fails with the migrate command, and stays without it."""
    url = f"sqlite:///{tmp_path / 'new.db'}"

    class Memo(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=url)

    with pytest.raises(StorageSchemaError, match="pydantic-toast migrate"):
        Memo(text="x").model_dump()
    pydantic_toast.close_storage()


def test_a_missing_file_is_named_and_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path whose file does not exist (run from another folder, say) fails naming
    the absolute path and the migrate command, and leaves no empty file behind (the first
    connection created one, and the error only said that the table was missing)."""
    monkeypatch.chdir(tmp_path)

    class Elsewhere(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage="sqlite:///shop.db")

    with pytest.raises(StorageSchemaError) as caught:
        Elsewhere(text="x").model_dump()
    message = str(caught.value)
    assert f"the SQLite file shop.db does not exist ({tmp_path / 'shop.db'}, relative" in message
    assert "pydantic-toast migrate sqlite:///shop.db" in message
    assert not (tmp_path / "shop.db").exists()
    pydantic_toast.close_storage()


def test_an_unusable_absolute_path_is_named_with_its_leading_slash(tmp_path: Path) -> None:
    """The error names the file as the URL gives it: /tmp/.../y.db, not tmp/.../y.db."""
    path = tmp_path / "missing-folder" / "y.db"

    class Unreachable(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=f"sqlite:///{path}")

    with pytest.raises(StorageConnectionError) as caught:
        Unreachable(text="x").model_dump()
    assert f"SQLite could not use {path} (" in str(caught.value)
    pydantic_toast.close_storage()


def test_in_memory_sqlite_is_refused_with_a_hint() -> None:
    """sqlite:///:memory: would lose the table per connection: memory:// is suggested."""
    with pytest.raises(StorageConfigurationError, match="memory://"):

        class InMemory(ExternalBaseModel):
            text: str
            model_config = ExternalConfigDict(storage="sqlite:///:memory:")


def test_query_options_are_refused_at_class_definition() -> None:
    """SQLite URLs take no options: a typo or another driver's option is refused, by name,
    instead of being ignored (PostgreSQL and Redis URLs refuse unknown options too)."""
    with pytest.raises(StorageConfigurationError, match=r"unknown option\(s\) bogus, timeout"):

        class Tuned(ExternalBaseModel):
            text: str
            model_config = ExternalConfigDict(storage="sqlite:///tuned.db?timeout=abc&bogus=1")


def test_a_file_that_is_not_a_database_is_named_with_the_fix(tmp_path: Path) -> None:
    """A URL naming a text file: the use and migrate say the file is not a SQLite database
    (the driver's cause used to be dropped: 'failed during connect with DatabaseError'),
    and the file is left as it was."""
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 100)
    url = f"sqlite:///{path}"

    class Misplaced(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=url)

    with pytest.raises(StorageConnectionError, match="is not a SQLite database file") as caught:
        pydantic_toast.count(Misplaced)
    assert str(path) in str(caught.value)
    assert "point it at the database file" in str(caught.value)
    migrate = subprocess.run(
        [sys.executable, "-m", "pydantic_toast", "migrate", url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert migrate.returncode != 0
    assert "is not a SQLite database file" in migrate.stderr
    assert path.read_text() == "not a database\n" * 100


def test_alembic_check_has_no_drift_on_sqlite(tmp_path: Path) -> None:
    """alembic upgrade and check work on a SQLite file too."""
    url = f"sqlite:///{tmp_path / 'checked.db'}"
    for args in (("upgrade", "head"), ("check",), ("downgrade", "base")):
        result = subprocess.run(
            [sys.executable, "-m", "alembic", "-x", f"url={url}", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """The README's demo migrates a SQLite file and runs the quickstart on it."""
    database = tmp_path / "demo.db"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pydantic_toast.integrations.cli",
            "migrate",
            f"sqlite:///{database}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "examples" / "quickstart_demo.py")],
        env={"DEMO_STORAGE_URL": f"sqlite:///{database}", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "async loaded: name='Carol'" in result.stdout
    assert "a missing record is reported" in result.stdout


async def test_a_single_save_writes_the_row_a_batch_writes(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """A lone save (one call to aiosqlite's thread, statement compiled here) stores each column
    as SQLAlchemy's statements do for a batch: the same types and spellings, and it conflicts
    the same way (the current revision named, nothing written)."""
    path = tmp_path / "single.db"
    shutil.copy(sqlite_template, path)

    class Memo(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=f"sqlite:///{path}", ttl=3600)

    single = Memo(text="alone")
    await single.asave()  # insert
    single.text = "alone, again"
    await single.asave()  # update at revision 1
    pair = [Memo(text="first"), Memo(text="second")]
    await pydantic_toast.adump(pair)  # one batch of two: SQLAlchemy's statements
    pair[0].text = "first, again"
    await pydantic_toast.adump([pair[0], Memo(text="third")])
    await pydantic_toast.aclose_storage()

    columns = "id, schema_version, data, data_exact, created_at, updated_at, expires_at, revision"
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = {
            row[5]: row
            for row in db.execute(
                f"SELECT {', '.join(f'typeof({c}), {c}' for c in columns.split(', '))} "
                "FROM external_records"
            )
        }
    alone, batched = rows['{"text":"alone, again"}'], rows['{"text":"first, again"}']

    def shape(row: tuple[object, ...]) -> list[object]:  # the data itself differs
        return [re.sub(r"[0-9a-f]", "0", v) if isinstance(v, str) else v for v in row[:5] + row[6:]]

    assert shape(alone) == shape(batched)
    assert alone[4] == "text", "the JSON, bound as bytes, is stored as text"
    assert alone[1] == str(single.external_id).replace("-", "")  # type: ignore[attr-defined]

    stale = await Memo.aload(single.external_id)  # type: ignore[attr-defined]
    single.text = "moved on"
    await single.asave()
    stale.text = "lost?"
    with pytest.raises(ConcurrencyError) as caught:
        await stale.asave()
    assert (caught.value.expected, caught.value.current) == (2, 3)
    assert (await Memo.aload(single.external_id)).text == "moved on"  # type: ignore[attr-defined]
    await pydantic_toast.aclose_storage()


async def test_a_large_multibyte_record_is_json_text_sqlite_reads(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """A 3 MB record of multi-byte text (written in pieces: a BLOB of its JSON text) is read
    exactly by SQLite's own JSON functions, through CAST(data AS TEXT) as documented, and
    given the BLOB itself too, on a lone save and in a batch alike; a small one stays text."""
    path = tmp_path / "large.db"
    shutil.copy(sqlite_template, path)

    class Scroll(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=f"sqlite:///{path}")

    text = "".join(f'ligne {i} ∑ €é 😀 \\ "q"\n' for i in range(100_000))
    assert len(text.encode()) > 3_000_000
    alone = Scroll(text=text)
    await alone.asave()
    pair = [Scroll(text=text[::-1]), Scroll(text="small")]
    await pydantic_toast.adump(pair)
    assert (await Scroll.aload(alone.external_id)).text == text  # type: ignore[attr-defined]
    await pydantic_toast.aclose_storage()
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT json_extract(CAST(data AS TEXT), '$.text'), json_extract(data, '$.text'), "
            "typeof(data) FROM external_records"
        ).fetchall()
    assert sorted(rows) == sorted(
        [(text, text, "blob"), (text[::-1], text[::-1], "blob"), ("small", "small", "text")]
    )


async def test_a_session_savepoint_rolled_back_undoes_the_saves_made_in_it(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """session.begin_nested() inside transaction(session), a save and a batch save, then the
    savepoint's rollback: neither is stored and the models forget their saves. The session
    emits its SAVEPOINT only at its next use of the connection: both were committed."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    path, Memo = _memo_on_a_copy(tmp_path, sqlite_template, "nested.db")

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        session = AsyncSession(engine)
        async with session, session.begin(), pydantic_toast.transaction(session):
            await Memo(text="before").asave()
            savepoint = await session.begin_nested()
            single, pair = Memo(text="single"), [Memo(text="one"), Memo(text="two")]
            await single.asave()
            await pydantic_toast.adump(pair)
            await savepoint.rollback()
        assert [single.external_revision, *(m.external_revision for m in pair)] == [None] * 3
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert list(db.execute("SELECT data FROM external_records")) == [('{"text":"before"}',)]

        # The savepoint as the transaction's first statement: sqlite3 had not begun the
        # transaction, so the SAVEPOINT began one of its own, whose RELEASE committed the save
        # out of reach of the rollback (and the model took it for rolled back). Two loads
        # gathered in the savepoint both load.
        class Abort(Exception):
            pass

        inner = Memo(text="inner")

        async def saved_then_rolled_back() -> None:
            session = AsyncSession(engine)
            async with session, session.begin(), pydantic_toast.transaction(session):
                async with session.begin_nested():
                    await inner.asave()
                    both = await asyncio.gather(Memo.aload(inner), Memo.aload(inner))
                    assert [memo.text for memo in both] == ["inner", "inner"]
                raise Abort

        with pytest.raises(Abort):
            await saved_then_rolled_back()
        assert inner.external_revision is None
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert list(db.execute("SELECT data FROM external_records")) == [('{"text":"before"}',)]
    finally:
        await engine.dispose()
        await pydantic_toast.aclose_storage()


async def test_a_session_joined_with_create_savepoint_serves_the_test_fixture_pattern(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """A connection's outer transaction, a session joined to it with
    join_transaction_mode="create_savepoint", and transaction(session): a commit inside the
    block releases the session's savepoint, a rollback undoes only what came after it (the
    model forgets that save), and the outer rollback leaves the file as it was. The engine
    has SQLAlchemy's recipe for sqlite3's SAVEPOINTs (docs/backends/sqlite.md): without it,
    sqlite3 begins no transaction at the outer begin(), the session's first SAVEPOINT begins
    one, and its commit commits the application's rows and the records alike."""
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    path, Memo = _memo_on_a_copy(tmp_path, sqlite_template, "fixture.db")

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Any) -> None:
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            connection.exec_driver_sql("BEGIN")

    try:
        async with engine.connect() as connection:
            outer = await connection.begin()
            session = AsyncSession(bind=connection, join_transaction_mode="create_savepoint")
            async with session, pydantic_toast.transaction(session):
                first, second = Memo(text="first"), Memo(text="second")
                await first.asave()
                await session.commit()
                await second.asave()
                await session.rollback()
                assert [first.external_revision, second.external_revision] == [1, None]
                assert (await Memo.aload(first)).text == "first"
                assert await pydantic_toast.acount(Memo) == 1
            await outer.rollback()
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert list(db.execute("SELECT count(*) FROM external_records")) == [(0,)]

        # The same engine handed to use_engine(): the library's AUTOCOMMIT connections skip
        # the recipe's BEGIN (without the guard, a delete was never committed and a batch
        # failed on BEGIN inside BEGIN).
        storage = pydantic_toast.Storage()
        storage.use_engine(f"sqlite:///{path}", engine)
        async with storage:
            kept, gone = Memo(text="kept"), Memo(text="gone")
            await pydantic_toast.adump([kept, gone])
            await pydantic_toast.adelete(Memo, gone.external_id)
        with contextlib.closing(sqlite3.connect(path)) as db:
            texts = [text for (text,) in db.execute("SELECT data FROM external_records")]
        assert texts == ['{"text":"kept"}']
    finally:
        await engine.dispose()
        await pydantic_toast.aclose_storage()


async def test_a_batch_inside_the_callers_transaction_commits_and_rolls_back_with_it(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """A batch save inside ``transaction()`` runs in a savepoint of the caller's transaction:
    it commits and rolls back with the application's rows, and a conflict undoes the batch
    alone. It ran BEGIN IMMEDIATE ... COMMIT of its own: as the transaction's first statement it
    committed, out of reach of the rollback; after another statement it failed."""
    from sqlalchemy.ext.asyncio import create_async_engine

    path, Memo = _memo_on_a_copy(tmp_path, sqlite_template, "joined.db")

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    def stored() -> list[tuple[str, ...]]:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return sorted(db.execute("SELECT data FROM external_records"))

    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE invoices (n INTEGER)")

        async def write_then_fail() -> None:
            async with engine.begin() as connection:
                async with pydantic_toast.transaction(connection):
                    await pydantic_toast.adump([Memo(text="a"), Memo(text="b")])  # the first
                await connection.exec_driver_sql("INSERT INTO invoices VALUES (1)")
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError, match="abort"):
            await write_then_fail()
        assert stored() == []
        kept = Memo(text="kept")
        await kept.asave()
        stale = await Memo.aload(kept.external_id)  # type: ignore[attr-defined]
        kept.text = "moved on"
        await kept.asave()
        stale.text = "lost?"
        async with engine.begin() as connection:
            await connection.exec_driver_sql("INSERT INTO invoices VALUES (2)")
            async with pydantic_toast.transaction(connection):
                with pytest.raises(ConcurrencyError):
                    await pydantic_toast.adump([Memo(text="c"), stale])
                await pydantic_toast.adump([Memo(text="d"), Memo(text="e")])
        assert stored() == [('{"text":"d"}',), ('{"text":"e"}',), ('{"text":"moved on"}',)]
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert list(db.execute("SELECT n FROM invoices")) == [(2,)]
    finally:
        await engine.dispose()
        await pydantic_toast.aclose_storage()


async def test_a_single_save_or_load_is_one_call_to_the_connection_thread(
    tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiosqlite runs each call in the connection's thread, and each call costs a hop there
    and back: a single load, a page and a count took five (SQLAlchemy's cursor: open, execute,
    fetch, close, then the pool's rollback on return) and a single save two; each is one now.
    Counted at aiosqlite's one entry to its thread."""
    import aiosqlite.core

    _, Memo = _memo_on_a_copy(tmp_path, sqlite_template, "hops.db")

    calls: list[str] = []
    through = aiosqlite.core.Connection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await through(self, fn, *args, **kwargs)

    try:
        reference = await Memo(text="warm").asave()  # connects: not counted
        await Memo.aload(reference)
        monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counted)
        loaded = await Memo.aload(reference)
        load_calls, calls[:] = list(calls), []
        await Memo(text="saved").asave()
        save_calls, calls[:] = list(calls), []
        assert (loaded.text, load_calls, save_calls) == (
            "warm",
            ["_execute_fetchall"],
            ["_execute_fetchall"],
        )
        page = await pydantic_toast.apage(Memo, limit=1)
        later = await pydantic_toast.apage(Memo, limit=5, after=page.next_after)
        counted = await pydantic_toast.acount(Memo)
        assert ([m.text for m in [*page.items, *later.items]], counted) == (["saved", "warm"], 2)
        assert calls == ["_execute_fetchall"] * 3
    finally:
        monkeypatch.undo()
        await pydantic_toast.aclose_storage()


async def test_the_one_call_load_reads_what_sqlalchemy_reads(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """The single-record load (one call to sqlite3) and the SQLAlchemy path of a batch give
    the same records: data as bytes (text and a record written in pieces, a BLOB), aware
    timestamps with their microseconds, revision and schema version; a missing and an
    expired record are None."""
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    from pydantic_toast._records import StoredRecord
    from pydantic_toast.backends.sqlite import PIECE, SQLiteBackend

    path = tmp_path / "same.db"
    shutil.copy(sqlite_template, path)
    backend = SQLiteBackend(f"sqlite:///{path}")
    await backend.connect()
    try:
        when = datetime.now(UTC).replace(microsecond=678901) - timedelta(hours=1)
        records = [
            StoredRecord(
                class_name="Same",
                id=uuid4(),
                data=data,
                schema_version=3,
                created_at=when,
                updated_at=when,
                revision=0,
                ttl=ttl,
            )
            for data, ttl in (
                (b'{"text":"small"}', None),
                (b'{"text":"' + b"x" * PIECE + b'"}', None),
                (b'{"text":"kept"}', 10**8),
            )
        ]
        await backend.save_records(records)
        expired = StoredRecord(
            class_name="Same",
            id=uuid4(),
            data=b"{}",
            schema_version=1,
            created_at=when,
            updated_at=when,
            revision=0,
            ttl=1,
        )
        await backend.save_records([expired])
        keys = [(record.class_name, record.id) for record in records]
        both = await backend.load_records([*keys, ("Same", uuid4())])  # SQLAlchemy's path
        for key, expected in zip(keys, both, strict=False):
            (alone,) = await backend.load_records([key])
            assert alone == expected
            assert alone is not None
            assert (alone.created_at, alone.updated_at) == (when, when)
            assert alone.created_at.tzinfo is not None
            assert alone.schema_version == 3
            assert alone.revision == 1
        assert [r.data for r in both[:3] if r is not None] == [r.data for r in records]
        assert await backend.load_records([("Same", uuid4())]) == [None]
        assert await backend.load_records([("Same", expired.id)]) == [None]
    finally:
        await backend.disconnect()


async def test_a_connection_returned_inside_a_transaction_is_rolled_back(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """The pool no longer rolls back every connection returned to it (the backend's
    connections autocommit, and its single saves and loads call sqlite3 directly, unseen by
    SQLAlchemy): one returned inside a transaction begun on the driver is still rolled back,
    its write undone and the file's write lock released."""
    from pydantic_toast.backends.sqlite import SQLiteBackend

    path = tmp_path / "reset.db"
    shutil.copy(sqlite_template, path)
    backend = SQLiteBackend(f"sqlite:///{path}")
    await backend.connect()
    try:
        async with backend.engine.connect() as connection:
            driver: Any = (await connection.get_raw_connection()).driver_connection
            await driver.execute("BEGIN IMMEDIATE")
            await driver.execute(
                "INSERT INTO external_record_counts (class_name, shard, records) "
                "VALUES ('Left', 0, 7)"
            )
            assert driver.in_transaction
        with contextlib.closing(sqlite3.connect(path, timeout=0.5)) as other:
            other.execute("BEGIN IMMEDIATE")  # the lock is free
            assert other.execute("SELECT count(*) FROM external_record_counts").fetchone() == (0,)
            other.execute("ROLLBACK")
    finally:
        await backend.disconnect()


@pytest.mark.parametrize("large", [False, True], ids=["row", "large-row"])
def test_a_row_whose_created_at_sql_wrote_saves_with_its_revision_check(
    tmp_path: Path, sqlite_template: Path, large: bool
) -> None:
    """A row whose created_at is spelt as SQL writes it (the column's default,
    CURRENT_TIMESTAMP: no fraction of a second) loads, and saves with checks: the check
    compares the instant, not the text; a re-creation is still another record."""
    path, Memo = _memo_on_a_copy(tmp_path, sqlite_template, "sql_time.db")
    body = "x" * (2_000_000 if large else 10)
    memo = Memo(text=body)
    reference = memo.model_dump()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "UPDATE external_records SET created_at = '2026-01-02 03:04:05' WHERE id = ?",
            (reference["id"].replace("-", ""),),
        )
        assert db.total_changes == 1
    loaded = Memo.model_validate(reference)
    loaded.text = body + "!"  # type: ignore[attr-defined]
    loaded.model_dump()
    assert loaded.external_revision == 2
    stale = Memo.model_validate(reference)
    pydantic_toast.delete(Memo, loaded.external_id)  # type: ignore[arg-type]
    pydantic_toast.dump(loaded, force=True)  # created again
    stale.text = "stale"  # type: ignore[attr-defined]
    with pytest.raises(ConcurrencyError):
        stale.model_dump()
    assert Memo.model_validate(reference).text == body + "!"  # type: ignore[attr-defined]
