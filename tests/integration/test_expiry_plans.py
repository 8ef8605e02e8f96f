"""Query plans of expiry on PostgreSQL (count, purge), the purge across classes, migration 0008."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import pydantic_toast
from pydantic_toast.backends.postgresql import _SQL
from pydantic_toast.integrations.cli import main as toast_cli
from tests.integration import test_expiry
from tests.integration.test_expiry import _note, _rows
from tests.integration.test_postgresql import alembic

blank_url = test_expiry.blank_url  # the fixtures: a database of the test's own, PostgreSQL
migrated_url = test_expiry.migrated_url  # and SQLite, blank or migrated

_MIGRATION = "pydantic_toast.migrations.versions.0008_class_expiry_index"
_BY_CLASS = "ix_external_records_class_name_expires_at"
# Rows of one class, one statement: expires_at NULL (permanent) or an offset from now.
_FILL = (
    "INSERT INTO external_records (class_name, id, data, expires_at) "
    "SELECT $1, gen_random_uuid(), '{}', now() + $2::interval FROM generate_series(1, $3)"
)
_HOUR = timedelta(hours=1)


def _plans(url: str, fill: list[tuple[str, timedelta | None, int]], name: str, *args: Any) -> Any:
    """Fill the table (class, offset or None, rows), ANALYZE, then EXPLAIN the shipped
    statement ``name`` with ``args``: its custom plan and its generic plan (as a prepared
    statement gets after five runs), each as JSON (with ANALYZE and BUFFERS for reads)."""
    import asyncpg

    analyze = "" if name == "purge" else "ANALYZE, BUFFERS, "
    literals = ", ".join(f"'{a.isoformat() if isinstance(a, datetime) else a}'" for a in args)

    async def run() -> list[Any]:
        connection = await asyncpg.connect(url)
        try:
            for class_name, offset, rows in fill:
                await connection.execute(_FILL, class_name, offset, rows)
            await connection.execute("ANALYZE external_records")
            custom = await connection.fetchval(
                f"EXPLAIN ({analyze}FORMAT JSON) {_SQL[name]}", *args
            )
            await connection.execute(f"PREPARE shipped AS {_SQL[name]}")
            await connection.execute("SET plan_cache_mode = force_generic_plan")
            generic = await connection.fetchval(
                f"EXPLAIN ({analyze}FORMAT JSON) EXECUTE shipped({literals})"
            )
            return [json.loads(custom)[0]["Plan"], json.loads(generic)[0]["Plan"]]
        finally:
            await connection.close()

    return asyncio.run(run())


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


@pytest.fixture
def pg_url(postgres_admin_url: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own, migrated to head."""
    from tests.integration.conftest import throwaway_database

    with throwaway_database(postgres_admin_url, "toast_expiry_plans_") as url:
        assert toast_cli(["migrate", url]) == 0
        yield url


@pytest.mark.postgresql
def test_count_reads_only_the_expired_rows_of_its_own_class(pg_url: str) -> None:
    """With 50,000 expired rows of another class and 20,000 permanent rows of its own, the
    count statement (custom and generic plan) reads its class's 100 expired rows through the
    (class_name, expires_at) index and nothing else; the count is right."""
    mine = _note(pg_url)
    name = mine.model_config["external_name"]
    fill = [
        ("Other", -_HOUR, 50_000),
        (name, None, 20_000),
        (name, -_HOUR, 100),
        (name, _HOUR, 100),
    ]
    for plan in _plans(pg_url, fill, "count", name, datetime.now(UTC)):
        scans = [n for n in _nodes(plan) if n.get("Relation Name") == "external_records"]
        assert scans, plan
        for scan in scans:
            text = json.dumps(plan, indent=1)
            # an index scan names its index; a bitmap heap scan's child does
            indexes = {node.get("Index Name") for node in _nodes(scan)} - {None}
            assert indexes == {_BY_CLASS}, text
            removed = scan.get("Rows Removed by Filter", 0)
            assert (
                scan["Actual Rows"] + removed + scan.get("Rows Removed by Index Recheck", 0) == 100
            ), text
    assert pydantic_toast.count(mine) == 20_100


@pytest.mark.postgresql
def test_purge_chunk_probes_the_primary_key_of_a_large_table(pg_url: str) -> None:
    """With 100,000 expired rows, a purge statement (custom and generic plan) deletes through
    the primary key, with no sequential scan or hash of external_records (it was a Hash Semi
    Join over a Seq Scan of the whole table); the purge then deletes exactly the expired rows."""
    kept = _note(pg_url)
    kept_name = kept.model_config["external_name"]
    fill = [("Old", -_HOUR, 100_000), (kept_name, None, 500), (kept_name, _HOUR, 500)]
    for plan in _plans(pg_url, fill, "purge", "Old", datetime.now(UTC), 1000):
        nodes = list(_nodes(plan))
        text = json.dumps(plan, indent=1)
        for node in nodes:
            assert "Hash" not in node["Node Type"] or node["Node Type"] == "HashAggregate", text
            if node.get("Relation Name") == "external_records":
                assert node["Node Type"] in ("Index Scan", "Index Only Scan", "ModifyTable"), text
        (modified,) = [n for n in nodes if n["Node Type"] == "ModifyTable"]
        (scan,) = [n for n in modified["Plans"] if n.get("Parent Relationship") == "Outer"]
        assert scan["Node Type"] == "Index Scan", text
        assert scan["Index Name"] == "pk_external_records", text
        assert "id = ANY" in scan["Index Cond"], text
    assert pydantic_toast.purge_expired(pg_url, batch_size=10_000) == 100_000
    assert _rows(pg_url, "SELECT class_name, count(*) FROM external_records GROUP BY 1") == [
        (kept_name, 1000)
    ]
    assert pydantic_toast.count(kept) == 1000


def test_purge_goes_through_every_class_in_bounded_batches(migrated_url: str) -> None:
    """Expired rows of three classes among live ones: batches of at most 4 delete exactly the
    expired rows, class after class, and report a running total."""
    notes = [_note(migrated_url, ttl=0.3) for _ in range(3)]
    live = [_note(migrated_url, ttl=60), _note(migrated_url)]
    for note, rows in zip(notes, (7, 1, 5), strict=True):
        for i in range(rows):
            note(text=f"e{i}").model_dump()
    kept = [note(text="kept").model_dump() for note in live for _ in range(2)]
    time.sleep(0.5)
    batches: list[int] = []
    assert pydantic_toast.purge_expired(migrated_url, batch_size=4, progress=batches.append) == 13
    assert batches == [4, 8, 12, 13]
    left = _rows(migrated_url, "SELECT class_name FROM external_records ORDER BY class_name")
    assert left == sorted((r["class_name"],) for r in kept)
    assert [pydantic_toast.count(note) for note in (*notes, *live)] == [0, 0, 0, 2, 2]
    assert pydantic_toast.purge_expired(migrated_url) == 0


@pytest.mark.postgresql
def test_finding_no_expired_class_reads_a_few_index_pages_per_class(pg_url: str) -> None:
    """With 150,000 live expiring rows in three classes and 20,000 permanent rows, the
    statement that lists the classes with expired rows (custom and generic plan) finds none
    by a skip-scan of the (class_name, expires_at) index: one entry read per probe, a few
    buffers per class, never the whole index (a fallback that scanned it for "any expired
    row" took 11.5-17 ms per purge run at 500,000 rows)."""
    fill = [(name, _HOUR, 50_000) for name in ("A", "B", "C")] + [("P", None, 20_000)]
    for plan in _plans(pg_url, fill, "expired_classes", "", datetime.now(UTC), 100):
        text = json.dumps(plan, indent=1)
        scans = [n for n in _nodes(plan) if n.get("Relation Name") == "external_records"]
        assert scans, text
        for scan in scans:
            assert scan["Node Type"] == "Index Only Scan", text
            assert scan["Index Name"] == _BY_CLASS, text
            assert scan["Actual Rows"] <= 1, text  # per loop: the first entry, then stopped
        assert sum(scan["Actual Loops"] for scan in scans) <= 5, text  # 4 steps and the end
        assert plan["Actual Rows"] == 0, text
        assert plan["Shared Hit Blocks"] + plan["Shared Read Blocks"] < 40, text


@pytest.mark.postgresql
def test_listing_expired_classes_skips_from_class_to_class(pg_url: str) -> None:
    """The classes with expired rows come back in name order, at most ``limit``, those with
    only live or permanent rows left out; each read a class's first index entry only."""
    fill = [
        ("A", _HOUR, 1_000),
        ("B", -_HOUR, 1_000),
        ("C", None, 1_000),
        ("D", -_HOUR, 10),
        ("D", _HOUR, 10),
        ("E", -_HOUR, 1),
    ]
    custom, generic = _plans(pg_url, fill, "expired_classes", "", datetime.now(UTC), 2)
    for plan in (custom, generic):
        text = json.dumps(plan, indent=1)
        assert plan["Actual Rows"] == 2, text  # B and D: the limit stopped the walk there
        for scan in _nodes(plan):
            if scan.get("Relation Name") == "external_records":
                assert scan["Actual Rows"] <= 1, text
    listed = _SQL["expired_classes"]
    assert _rows(pg_url, listed, "", datetime.now(UTC), 10) == [("B",), ("D",), ("E",)]
    assert _rows(pg_url, listed, "C", datetime.now(UTC), 10) == [("D",), ("E",)]
    assert _rows(pg_url, listed, "D", datetime.now(UTC), 1) == [("D",)]  # from D on


def test_purge_finds_the_classes_whose_counter_rows_are_missing(migrated_url: str) -> None:
    """Expired rows of a class whose counter rows a DBA deleted (or that were loaded with the
    triggers disabled) are purged like any other: the purge took its classes from the counter
    rows and left them for good."""
    counted, uncounted = _note(migrated_url, ttl=0.3), _note(migrated_url, ttl=0.3)
    for i in range(3):
        counted(text=f"c{i}").model_dump()
    for i in range(5):
        uncounted(text=f"u{i}").model_dump()
    name = uncounted.model_config["external_name"]
    _rows(migrated_url, "DELETE FROM external_record_counts WHERE class_name = $1", name)
    counters = "SELECT count(*) FROM external_record_counts WHERE class_name = $1"
    assert _rows(migrated_url, counters, name) == [(0,)]
    time.sleep(0.5)
    assert pydantic_toast.purge_expired(migrated_url, batch_size=2) == 8
    assert _rows(migrated_url, "SELECT count(*) FROM external_records") == [(0,)]


def test_purge_lists_classes_a_hundred_at_a_time_and_reaches_them_all(
    migrated_url: str,
) -> None:
    """250 classes with two expired rows each (and a live one), more than one list of classes
    holds: the purge reaches every class and deletes every expired row and nothing else, in
    batches that end mid-class."""
    if migrated_url.startswith("sqlite"):
        fill = (
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 749) "
            "INSERT INTO external_records (class_name, id, data, expires_at) "
            "SELECT printf('K%03d', i / 3), lower(hex(randomblob(16))), '{}', "
            "CASE WHEN i % 3 = 0 THEN '2999-01-01 00:00:00' ELSE '2000-01-01 00:00:00' END "
            "FROM n"
        )
    else:
        fill = (
            "INSERT INTO external_records (class_name, id, data, expires_at) "
            "SELECT 'K' || lpad((i / 3)::text, 3, '0'), gen_random_uuid(), '{}', "
            "now() + CASE WHEN i % 3 = 0 THEN interval '1 hour' ELSE interval '-1 hour' END "
            "FROM generate_series(0, 749) i"
        )
    _rows(migrated_url, fill)
    batches: list[int] = []
    assert (
        pydantic_toast.purge_expired(migrated_url, batch_size=333, progress=batches.append) == 500
    )
    assert batches == [333, 500]
    left = "SELECT count(DISTINCT class_name), count(*) FROM external_records"
    assert _rows(migrated_url, left) == [(250, 250)]
    assert pydantic_toast.purge_expired(migrated_url) == 0


def _indexes(url: str) -> list[str]:
    if url.startswith("sqlite"):
        statement = (
            "SELECT name FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'external_records' AND sql IS NOT NULL ORDER BY name"
        )
    else:
        statement = (
            "SELECT indexname FROM pg_indexes WHERE tablename = 'external_records' "
            "ORDER BY indexname"
        )
    return [row[0] for row in _rows(url, statement)]


def test_migration_0008_swaps_the_expiry_index_and_back(blank_url: str) -> None:
    """0008 replaces the index on expires_at by one on (class_name, expires_at), alembic check
    is clean, rows stay; downgrading restores the old index."""
    migration = importlib.import_module(_MIGRATION)
    assert alembic("upgrade", migration.down_revision, url=blank_url).returncode == 0
    before = _indexes(blank_url)
    assert "ix_external_records_expires_at" in before
    note = _note(blank_url, ttl=60)
    reference = note(text="kept").model_dump()
    pydantic_toast.close_storage()
    upgrade = alembic("upgrade", migration.revision, url=blank_url)
    assert upgrade.returncode == 0, upgrade.stderr
    after = _indexes(blank_url)
    assert after == sorted({*before, _BY_CLASS} - {"ix_external_records_expires_at"})
    check = alembic("check", url=blank_url)
    assert check.returncode == 0, check.stderr
    assert note.model_validate(reference).text == "kept"  # type: ignore[attr-defined]
    pydantic_toast.close_storage()
    downgrade = alembic("downgrade", migration.down_revision, url=blank_url)
    assert downgrade.returncode == 0, downgrade.stderr
    assert _indexes(blank_url) == before
    assert _rows(blank_url, "SELECT count(*) FROM external_records") == [(1,)]


@pytest.mark.sqlite
def test_sqlite_purge_deletes_through_the_primary_key(tmp_path: Path) -> None:
    """SQLite's purge statement finds each row of the chunk by the primary key, not by a range
    of the class's expired rows in the (class_name, expires_at) index."""
    from sqlalchemy.dialects import sqlite

    from pydantic_toast.backends.sql import PURGE

    url = f"sqlite:///{tmp_path / 'purge.db'}"
    assert toast_cli(["migrate", url]) == 0
    compiled = PURGE.compile(dialect=sqlite.dialect())
    values = compiled.construct_params(
        {"class_name": "Old", "now": "2026-12-05 00:00:00", "limit": 1000}
    )
    plan = _rows(url, f"EXPLAIN QUERY PLAN {compiled}", *(values[k] for k in compiled.positiontup))
    # the DELETE's own scan: the top-level row on the table (the others are subqueries)
    (delete,) = [row[3] for row in plan if row[1] == 0 and "external_records" in row[3]]
    assert delete.startswith("SEARCH external_records USING INDEX sqlite_autoindex"), plan
    assert delete.endswith("(class_name=? AND id=?)"), plan


@pytest.mark.sqlite
def test_sqlite_lists_expired_classes_by_a_skip_scan(tmp_path: Path) -> None:
    """SQLite lists the classes with expired rows by probes of the (class_name, expires_at)
    index (the next class, then its oldest expiry), never a scan of a table or an index."""
    from sqlalchemy.dialects import sqlite

    from pydantic_toast.backends.sql import EXPIRED_CLASSES

    url = f"sqlite:///{tmp_path / 'classes.db'}"
    assert toast_cli(["migrate", url]) == 0
    compiled = EXPIRED_CLASSES.compile(dialect=sqlite.dialect())
    values = compiled.construct_params(
        {"from_class": "", "now": "2026-12-05 00:00:00", "limit": 100}
    )
    plan = _rows(url, f"EXPLAIN QUERY PLAN {compiled}", *(values[k] for k in compiled.positiontup))
    reads = [row[3] for row in plan if "external_records" in row[3]]
    # the first class from from_class on, the next class, a class's oldest expiry
    assert reads == [
        f"SEARCH external_records USING COVERING INDEX {_BY_CLASS} (class_name>?)",
        f"SEARCH external_records USING COVERING INDEX {_BY_CLASS} (class_name>?)",
        f"SEARCH external_records USING COVERING INDEX {_BY_CLASS} (class_name=? AND expires_at>?)",
    ], plan
