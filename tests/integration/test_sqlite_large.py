"""SQLite's large records: data as the last column (migration 0006), written in pieces as BLOB."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pydantic_core
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

import pydantic_toast
from pydantic_toast import (
    ConcurrencyError,
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
)
from pydantic_toast._records import StoredRecord
from pydantic_toast.backends.sqlite import PIECE, SQLiteBackend
from tests.integration.test_postgresql import alembic

pytestmark = pytest.mark.sqlite
ROOT = Path(__file__).resolve().parents[2]
_MIGRATION = importlib.import_module("pydantic_toast.migrations.versions.0006_sqlite_data_last")


def _rows(path: Path, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    # closing(): a sqlite3 connection's own 'with' commits but never closes (3.13 warns).
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        return [tuple(row) for row in connection.execute(statement, args)]


def _shape(path: Path) -> dict[str, Any]:
    """The table's columns in order, its indexes and triggers, and the class counts."""
    return {
        "columns": [row[1] for row in _rows(path, "PRAGMA table_info(external_records)")],
        "indexes": _rows(
            path,
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'external_records' AND sql IS NOT NULL ORDER BY name",
        ),
        "triggers": _rows(
            path,
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name",
        ),
        "counts": _rows(path, "SELECT class_name, shard, records FROM external_record_counts"),
    }


def _scroll(path: Path, **config: Any) -> type[ExternalBaseModel]:
    settings = ExternalConfigDict(storage=f"sqlite:///{path}", external_name=f"S{uuid4().hex}")
    settings.update(config)  # type: ignore[typeddict-item]
    return type(
        "Scroll",
        (ExternalBaseModel,),
        {"__annotations__": {"text": str}, "model_config": settings},
    )


def _stored(path: Path) -> list[tuple[Any, ...]]:
    """Each row's storage type, length, revision and text (JSON read through CAST)."""
    return sorted(
        _rows(
            path,
            "SELECT typeof(data), length(data), revision, "
            "json_extract(CAST(data AS TEXT), '$.text') FROM external_records",
        ),
        key=lambda row: row[1],
    )


def _json_length(text: str) -> int:
    return len(pydantic_core.to_json({"text": text}))


def test_migration_moves_data_last_with_rows_in_place_and_back(tmp_path: Path) -> None:
    """Upgrading rebuilds the table with data last (rows, indexes, count triggers kept;
    alembic check clean); large records written after it are BLOB, and downgrading puts data
    back in its place with those records made text again."""
    path = tmp_path / "move.db"
    url = f"sqlite:///{path}"
    assert alembic("upgrade", _MIGRATION.down_revision, url=url).returncode == 0
    before = _shape(path)
    assert before["columns"][3] == "data"
    scroll = _scroll(path)
    name = scroll.model_config["external_name"]
    small = scroll(text="small").model_dump()
    large_text = "é∑ line\n" * 300_000  # 3.6 MB of JSON
    large = scroll(text=large_text).model_dump()  # in pieces: data is not last yet, but works
    pydantic_toast.close_storage()
    old = uuid4()  # a large record as the library stored it before: text
    _rows(
        path,
        "INSERT INTO external_records (class_name, id, schema_version, data) VALUES (?, ?, 1, ?)",
        name,
        old.hex,
        pydantic_core.to_json({"text": large_text[1:]}).decode(),
    )
    counts = _rows(path, "SELECT class_name, shard, records FROM external_record_counts")
    assert counts == [(name, 0, 3)]
    stored = _rows(path, "SELECT id, data, revision FROM external_records ORDER BY id")

    # 0006, then 0007 (nothing on SQLite) and 0008: check compares to head
    upgrade = alembic("upgrade", "head", url=url)
    assert upgrade.returncode == 0, upgrade.stderr
    check = alembic("check", url=url)
    assert check.returncode == 0, check.stderr
    assert alembic("downgrade", _MIGRATION.revision, url=url).returncode == 0
    after = _shape(path)
    assert after["columns"] == [c for c in before["columns"] if c != "data"] + ["data"]
    assert after["indexes"] == before["indexes"]  # the partial index keeps its WHERE
    assert after["triggers"] == before["triggers"]
    assert after["counts"] == counts
    assert _rows(path, "SELECT id, data, revision FROM external_records ORDER BY id") == stored
    assert scroll.model_validate(large).text == large_text  # type: ignore[attr-defined]
    assert scroll.model_validate(small).text == "small"  # type: ignore[attr-defined]
    assert scroll.model_validate({"class_name": name, "id": str(old)}).text == large_text[1:]  # type: ignore[attr-defined]
    blob = scroll(text=large_text[::-1])
    blob.model_dump()
    scroll(text="third").model_dump()
    pydantic_toast.close_storage()
    assert _rows(path, "SELECT records FROM external_record_counts") == [(5,)], "triggers kept"
    kinds = _rows(path, "SELECT typeof(data), count(*) FROM external_records GROUP BY 1")
    assert sorted(kinds) == [("blob", 2), ("text", 3)]

    downgrade = alembic("downgrade", _MIGRATION.down_revision, url=url)
    assert downgrade.returncode == 0, downgrade.stderr
    back = _shape(path)
    assert back["columns"] == before["columns"]
    assert back["indexes"] == before["indexes"]
    assert back["triggers"] == before["triggers"]
    assert back["counts"] == [(name, 0, 5)]
    assert _rows(path, "SELECT DISTINCT typeof(data) FROM external_records") == [("text",)]
    texts = _rows(path, "SELECT json_extract(data, '$.text') FROM external_records")
    assert sorted(text for (text,) in texts) == sorted(
        ["small", large_text, large_text[1:], large_text[::-1], "third"]
    )


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_migration_as_offline_sql(dialect: str) -> None:
    """``alembic upgrade --sql`` writes the SQLite rebuild without a database to reflect, and
    nothing for PostgreSQL (jsonb is stored out of line wherever the column is)."""
    url = "sqlite:///offline.db" if dialect == "sqlite" else "postgresql://user@localhost/db"
    script = alembic(
        "upgrade", f"{_MIGRATION.down_revision}:{_MIGRATION.revision}", "--sql", url=url
    )
    assert script.returncode == 0, script.stderr
    head, body = script.stdout.split("-- Running upgrade")[:2]
    if dialect == "postgresql":
        assert "external_records" not in body
        # As an online run: the migrations' advisory lock first, then bounded lock waits.
        assert head.index("BEGIN;") < head.index("pg_advisory_xact_lock"), head
        assert "lock_timeout" in head
        return
    assert "pg_advisory_xact_lock" not in head
    steps = [
        "CREATE TABLE _alembic_tmp_external_records",
        "expires_at DATETIME,",
        "data JSON NOT NULL",  # the last column
        "INSERT INTO _alembic_tmp_external_records",
        "DROP TABLE external_records;",
        "RENAME TO external_records;",
        "CREATE TRIGGER external_records_count_insert",
        "CREATE TRIGGER external_records_count_delete",
        "CREATE TRIGGER external_records_count_move",
    ]
    found = [body.find(step) for step in steps]
    assert -1 not in found, body
    assert found == sorted(found), body
    assert "CREATE INDEX ix_external_records_class_name_created_at_id" in body
    assert "ON external_records (expires_at) WHERE expires_at IS NOT NULL" in body


async def test_a_large_record_round_trips_exactly_as_a_blob_on_every_path(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """A 20 MB record is stored as a BLOB of its JSON text on a first save, an update, a
    last-write-wins save and in a batch, and loads back exactly (alone, in a batch, in a
    page); a record of PIECE bytes stays text."""
    path = tmp_path / "large.db"
    shutil.copy(sqlite_template, path)
    scroll = _scroll(path)
    text = "".join(f'ligne {i} ∑ €é 😀 \\ "q"\n' for i in range(700_000))
    assert len(text.encode()) > 20_000_000
    alone = scroll(text=text)
    first = await alone.asave()  # insert
    alone.text = text[1:]  # type: ignore[attr-defined]
    await alone.asave()  # update at revision 1
    pair = [scroll(text=text[::-1]), scroll(text="small")]
    paired = await pydantic_toast.adump(pair)  # one transaction, a large record in it
    edge = "x" * (PIECE - _json_length(""))
    at_piece = await scroll(text=edge).asave()
    wins = _scroll(path, concurrency="last-write-wins")
    overwritten = await wins(text=text[2:]).asave()  # upsert
    assert (await wins.aload(overwritten)).text == text[2:]  # type: ignore[attr-defined]

    assert (await scroll.aload(first)).text == text[1:]  # type: ignore[attr-defined]
    batch = await pydantic_toast.avalidate(list[scroll], [first, *paired, at_piece])  # type: ignore[valid-type]
    assert [item.text for item in batch] == [text[1:], text[::-1], "small", edge]
    page = await pydantic_toast.apage(scroll, limit=10)
    assert {item.text for item in page.items} == {edge, "small", text[::-1], text[1:]}  # type: ignore[attr-defined]
    await pydantic_toast.aclose_storage()
    assert _stored(path) == [
        ("text", _json_length("small"), 1, "small"),
        ("text", PIECE, 1, edge),
        ("blob", _json_length(text[2:]), 1, text[2:]),
        ("blob", _json_length(text[1:]), 2, text[1:]),
        ("blob", _json_length(text[::-1]), 1, text[::-1]),
    ]


async def test_a_stale_large_write_raises_the_conflict_and_writes_nothing(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """On the blob path a stale update, and a batch whose second record is stale, raise
    ConcurrencyError naming the current revision and leave every row as it was."""
    path = tmp_path / "stale.db"
    shutil.copy(sqlite_template, path)
    scroll = _scroll(path)
    text = "a" * 3_000_000
    current = scroll(text=text)
    await current.asave()
    stale = await scroll.aload(current.external_id)  # type: ignore[attr-defined]
    current.text = "b" * 3_000_000  # type: ignore[attr-defined]
    await current.asave()
    before = _stored(path)
    stale.text = "c" * 3_000_000  # type: ignore[attr-defined]
    with pytest.raises(ConcurrencyError) as caught:
        await stale.asave()
    assert (caught.value.expected, caught.value.current) == (1, 2)
    fresh = scroll(text="d" * 3_000_000)
    with pytest.raises(ConcurrencyError):
        await pydantic_toast.adump([fresh, stale])  # the first is written, then rolled back
    assert await pydantic_toast.acount(scroll) == 1
    await pydantic_toast.aclose_storage()
    assert _stored(path) == before == [("blob", _json_length("b" * 3_000_000), 2, "b" * 3_000_000)]


async def test_a_large_first_write_of_a_taken_id_raises_the_conflict(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """A first write (expected revision 0) of a large record whose id is taken writes
    nothing and names the stored revision; the stored record keeps its data."""
    path = tmp_path / "taken.db"
    shutil.copy(sqlite_template, path)
    backend = SQLiteBackend(f"sqlite:///{path}")
    now = datetime.now(UTC)
    first = StoredRecord(
        "Taken", uuid4(), b'{"text":"%b"}' % (b"a" * 2_000_000), 1, now, now, None, 0
    )
    await backend.connect()
    try:
        assert await backend.save_records([first]) == [1]
        again = dataclasses.replace(first, data=b'{"text":"%b"}' % (b"b" * 2_000_000))
        with pytest.raises(ConcurrencyError) as caught:
            await backend.save_records([again])
        assert (caught.value.expected, caught.value.current) == (0, 1)
        (loaded,) = await backend.load_records([("Taken", first.id)])
        assert loaded is not None
        assert loaded.data == first.data
        assert await backend.count("Taken") == 1
    finally:
        await backend.disconnect()


async def test_a_large_record_in_the_callers_transaction_commits_and_rolls_back_with_it(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """Written in pieces inside ``transaction()``, a large record commits with the
    application's row, and a rollback leaves neither."""
    path = tmp_path / "joined.db"
    shutil.copy(sqlite_template, path)
    scroll = _scroll(path)
    text = "é" * 1_500_000
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE invoices (n INTEGER)")
        async with engine.begin() as connection:
            async with pydantic_toast.transaction(connection):
                kept = await scroll(text=text).asave()  # the transaction's first statement
            await connection.exec_driver_sql("INSERT INTO invoices VALUES (1)")
        item = scroll(text=text[1:])

        async def write_then_fail() -> None:
            async with engine.begin() as connection:
                await connection.exec_driver_sql("INSERT INTO invoices VALUES (2)")
                async with pydantic_toast.transaction(connection):
                    await item.asave()
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError, match="abort"):
            await write_then_fail()
        assert (await scroll.aload(kept)).text == text  # type: ignore[attr-defined]
        assert item.external_id is not None  # type: ignore[attr-defined]
        with pytest.raises(RecordNotFoundError):
            await scroll.aload(item.external_id)  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
        await pydantic_toast.aclose_storage()
    assert _rows(path, "SELECT n FROM invoices") == [(1,)]
    assert [row[0] for row in _stored(path)] == ["blob"]


_PEAK_PROBE = """
import asyncio, gc, sys
from pathlib import Path
from pydantic_toast import ExternalBaseModel, ExternalConfigDict

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024

class Big(ExternalBaseModel):
    body: str
    model_config = ExternalConfigDict(storage=sys.argv[1])

async def main():
    await Big(body="warm-up").asave()
    big = Big(body="line of a large document; " * 1_600_000)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = rss("VmRSS:")
    await big.asave()
    print((rss("VmHWM:") - before) / len(big.body))

asyncio.run(main())
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_a_large_save_holds_no_copy_of_the_record_beyond_the_models_json(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """A 40 MB save, in a fresh process, peaks at the model's JSON and Pydantic's buffer
    (about 2x), not the 3x of binding it whole (SQLite's copy and the row it assembles)."""
    path = tmp_path / "peak.db"
    shutil.copy(sqlite_template, path)
    probe = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PEAK_PROBE), f"sqlite:///{path}"],
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"},  # freed memory leaves RSS
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert float(probe.stdout) < 2.5
