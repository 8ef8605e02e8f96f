"""pydantic-toast partition: external_records hash-partitioned by id on a throwaway database."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast.backends.postgresql import _SQL
from pydantic_toast.integrations.cli import main as toast_cli
from tests import servers
from tests.integration.conftest import _admin, _with_database
from tests.integration.test_expiry import _note
from tests.integration.test_postgresql import alembic, model_on

pytestmark = pytest.mark.postgresql

_VIEW = """
SELECT c.column_name, c.data_type, c.is_nullable, c.column_default,
       col_description('external_records'::regclass, c.ordinal_position) AS comment
FROM information_schema.columns c
WHERE c.table_name = 'external_records' AND c.table_schema = current_schema()
ORDER BY c.ordinal_position
"""


def _literal(value: Any) -> str:
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text.replace("'", "''") + "'"


def _query(url: str, *statements: tuple[str, tuple[Any, ...]], generic: bool = False) -> list[Any]:
    import asyncpg

    async def run() -> list[Any]:
        connection = await asyncpg.connect(url)
        try:
            if generic:
                await connection.execute("SET plan_cache_mode = force_generic_plan")
            results = []
            for sql, args in statements:
                results.append(await connection.fetch(sql, *args))
            return results
        finally:
            await connection.close()

    return asyncio.run(run())


@pytest.fixture
def partitioned(postgres_admin_url: str) -> Iterator[tuple[str, list[Any], list[Any]]]:
    """A migrated database with records, then partitioned into 8: (url, view before, refs)."""
    database = f"toast_part_{uuid4().hex[:10]}"
    _admin(postgres_admin_url, f'CREATE DATABASE "{database}"')
    url = _with_database(postgres_admin_url, database)
    try:
        assert toast_cli(["migrate", url]) == 0
        note = model_on(url)
        references = [note(text=f"n{i}").model_dump() for i in range(50)]
        pydantic_toast.close_storage()
        (before,) = _query(url, (_VIEW, ()))
        assert toast_cli(["partition", url, "--partitions", "8"]) == 0
        yield url, before, [(note, r) for r in references]
    finally:
        pydantic_toast.close_storage()
        _admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_partitioning_keeps_the_table_the_rows_and_the_dba_view(
    partitioned: tuple[str, list[Any], list[Any]],
) -> None:
    """After partition: 8 hash partitions, same columns and comments, every record loads."""
    url, before, references = partitioned
    view, parts, kind = _query(
        url,
        (_VIEW, ()),
        ("SELECT inhrelid::regclass::text FROM pg_inherits "
         "WHERE inhparent = 'external_records'::regclass", ()),
        ("SELECT relkind FROM pg_class WHERE relname = 'external_records'", ()),
    )  # fmt: skip
    assert [tuple(r) for r in view] == [tuple(r) for r in before]
    assert sorted(r[0] for r in parts) == sorted(f"external_records_p{i}" for i in range(8))
    assert kind[0][0] == b"p" or kind[0][0] == "p"
    for note, reference in references:
        assert note.model_validate(reference).text.startswith("n")
    note = references[0][0]
    assert pydantic_toast.count(note) == 50
    assert toast_cli(["check", url]) == 0


def test_alembic_finds_no_drift_after_partitioning(
    partitioned: tuple[str, list[Any], list[Any]],
) -> None:
    """alembic check sees the same keys, indexes and columns as the migrations make."""
    url, _, _ = partitioned
    check = alembic("check", url=url)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("generic", [False, True], ids=["custom-plan", "generic-plan"])
@pytest.mark.parametrize("statement", ["select_one", "delete", "update", "insert"])
def test_single_record_statements_hit_one_partition(
    partitioned: tuple[str, list[Any], list[Any]], statement: str, generic: bool
) -> None:
    """EXPLAIN of the library's own single-record statements names one partition only."""
    url, _, references = partitioned
    _, reference = references[0]
    id = reference["id"]
    class_name = reference["class_name"]
    now = datetime.now(UTC)
    args: dict[str, tuple[Any, ...]] = {
        "select_one": (class_name, id, now.timestamp()),  # loads pass epoch seconds
        "delete": (class_name, id),
        "update": (1, '{"text": "x"}', None, now, None, class_name, id, 1, now),
        "insert": (class_name, uuid4(), 1, '{"text": "x"}', None, now, now, None),
    }
    # An INSERT routes its row at run time: ANALYZE shows where it went (the test database).
    analyze = "ANALYZE, TIMING OFF, SUMMARY OFF, " if statement == "insert" else ""
    if generic:  # a prepared statement's generic plan prunes when it starts (run-time pruning)
        values = ", ".join("NULL" if a is None else _literal(a) for a in args[statement])
        prepare = (f"PREPARE toast AS {_SQL[statement]}", ())
        run = (f"EXPLAIN ({analyze}COSTS OFF) EXECUTE toast({values})", ())
        _, plan = _query(url, prepare, run, generic=True)
    else:
        (plan,) = _query(url, (f"EXPLAIN ({analyze}COSTS OFF) {_SQL[statement]}", args[statement]))
    text = "\n".join(row[0] for row in plan)
    print(f"\n{statement} ({'generic' if generic else 'custom'} plan):\n{text}")
    # Partitions read (a generic DELETE plan also lists every partition as a result relation
    # it may route to, then removes the subplans of the other seven when it starts).
    scans = [line for line in text.splitlines() if "Scan" in line]
    touched = set(re.findall(r"external_records_p\d+\b", "\n".join(scans)))
    assert len(touched) <= 1, text
    if statement != "insert":
        assert len(touched) == 1 or "Subplans Removed: 7" in text, text


@pytest.mark.slow
def test_partition_connects_with_the_urls_ssl_options(tmp_path: Path) -> None:
    """On a server that takes only connections with a client certificate, partition uses the
    URL's sslcert/sslkey as migrate does. Before, it connected with the bare address (the
    query string dropped: no certificate, sslmode ignored) and the server refused it."""
    with servers.temp_postgres(start=False) as temp:
        temp.enable_ssl()
        client_cert = servers.self_signed_certificate(tmp_path)  # its own CA
        trusted = temp.data / "client_ca.crt"
        trusted.write_bytes(client_cert.read_bytes())
        hba = temp.data / "pg_hba.conf"
        hba.write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n"
        )
        temp.give(trusted, hba)
        temp.configure("ssl_ca_file = 'client_ca.crt'")
        temp.start()
        url = f"{temp.url()}?sslmode=require&sslcert={client_cert}&sslkey={tmp_path / 'server.key'}"
        assert toast_cli(["migrate", url]) == 0
        note = model_on(url)
        reference = note(text="kept").model_dump()
        pydantic_toast.close_storage()
        assert toast_cli(["partition", url, "--partitions", "4"]) == 0
        assert note.model_validate(reference).text == "kept"  # type: ignore[attr-defined]
        (kind,) = _query(
            url, ("SELECT relkind FROM pg_class WHERE relname = 'external_records'", ())
        )
        assert kind[0][0] in (b"p", "p")


def test_partitioning_keeps_the_grants_of_the_application_role(postgres_admin_url: str) -> None:
    """The application connects as its own role, granted what docs/backends/postgresql.md
    says; after the owner partitions the table, that role still saves, loads and counts.
    Before, the new table had no grants: every operation failed with 'insufficient
    privilege' right after the maintenance."""
    database = f"toast_part_{uuid4().hex[:10]}"
    role, password = f"toast_app_{uuid4().hex[:8]}", "app-pw-5"
    _admin(postgres_admin_url, f'CREATE DATABASE "{database}"')
    url = _with_database(postgres_admin_url, database)
    head, _, rest = url.partition("://")
    as_app = f"{head}://{role}:{password}@{rest.rsplit('@', 1)[-1]}"
    try:
        assert toast_cli(["migrate", url]) == 0
        _admin(
            url,
            f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON external_records, external_record_counts "
            f'TO "{role}"',
        )
        note = model_on(as_app)
        before = note(text="before").model_dump()
        pydantic_toast.close_storage()
        assert toast_cli(["partition", url, "--partitions", "4"]) == 0
        after = note(text="after").model_dump()
        assert note.model_validate(before).text == "before"  # type: ignore[attr-defined]
        assert note.model_validate(after).text == "after"  # type: ignore[attr-defined]
        assert pydantic_toast.count(note) == 2
    finally:
        pydantic_toast.close_storage()
        _admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        _admin(postgres_admin_url, f'DROP ROLE IF EXISTS "{role}"')


def test_a_view_on_the_table_stops_partitioning_with_the_fix(
    postgres_admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DBA's view on external_records: partition exits 1 naming the view and what to do,
    and the table stays as it was. Before, the line was the driver's bare 'cannot drop table
    external_records_unpartitioned because other objects depend on it'."""
    database = f"toast_part_{uuid4().hex[:10]}"
    _admin(postgres_admin_url, f'CREATE DATABASE "{database}"')
    url = _with_database(postgres_admin_url, database)
    try:
        assert toast_cli(["migrate", url]) == 0
        _admin(url, "CREATE VIEW recent_records AS SELECT class_name, id FROM external_records")
        capsys.readouterr()
        assert toast_cli(["partition", url, "--partitions", "4"]) == 1
        err = capsys.readouterr().err
        assert "view recent_records depends on" in err
        assert "nothing was changed; drop them, run partition, then create them again" in err
        (kind,) = _query(
            url, ("SELECT relkind FROM pg_class WHERE relname = 'external_records'", ())
        )
        assert kind[0][0] in (b"r", "r")
    finally:
        _admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_purge_on_the_partitioned_table_deletes_exactly_the_expired_rows(
    partitioned: tuple[str, list[Any], list[Any]],
) -> None:
    """Expired rows of two classes spread over the partitions: the purge, in batches, deletes
    them and nothing else (the 50 permanent records and the live expiring ones stay)."""
    url, _, references = partitioned
    short = [_note(url, ttl=0.3), _note(url, ttl=0.3)]
    lasting = _note(url, ttl=60)
    for note, rows in zip(short, (30, 12), strict=True):
        for i in range(rows):
            note(text=f"e{i}").model_dump()
    kept = [lasting(text=f"k{i}").model_dump() for i in range(5)]
    time.sleep(0.5)
    assert pydantic_toast.purge_expired(url, batch_size=8) == 42
    assert [pydantic_toast.count(note) for note in (*short, lasting)] == [0, 0, 5]
    (left,) = _query(url, ("SELECT class_name, count(*) FROM external_records GROUP BY 1", ()))
    note, reference = references[0]
    assert sorted(tuple(row) for row in left) == sorted(
        [(reference["class_name"], len(references)), (kept[0]["class_name"], 5)]
    )
    assert note.model_validate(reference).text == "n0"  # type: ignore[attr-defined]


def test_partition_waits_for_a_migration_in_progress(postgres_admin_url: str) -> None:
    """While another session holds the migrations' advisory lock (a migration running),
    partition waits for it, then partitions: the two never change the table at once."""
    import threading

    from pydantic_toast.integrations.alembic import MIGRATION_LOCK
    from tests.integration.test_migration_ops import _holding_a_lock, _waiting_on_locks

    database = f"toast_part_{uuid4().hex[:10]}"
    _admin(postgres_admin_url, f'CREATE DATABASE "{database}"')
    url = _with_database(postgres_admin_url, database)
    try:
        assert toast_cli(["migrate", url]) == 0
        release = threading.Event()
        holder = _holding_a_lock(url, f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})", release)
        results: list[int] = []
        partition = threading.Thread(
            target=lambda: results.append(toast_cli(["partition", url, "--partitions", "4"]))
        )
        try:
            partition.start()
            _waiting_on_locks(url, 1)  # partition waits for the lock
            assert results == []
        finally:
            release.set()
            holder.join()
        partition.join(60)
        assert results == [0]
        (kind,) = _query(
            url, ("SELECT relkind FROM pg_class WHERE relname = 'external_records'", ())
        )
        assert kind[0][0] in (b"p", "p")
    finally:
        _admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
