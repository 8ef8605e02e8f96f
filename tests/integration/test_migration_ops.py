"""Running the migrations as an operator does: two deploys at once, long upgrades, failures."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast.integrations.cli import main as toast_cli
from tests.integration.conftest import _admin

CLI = [sys.executable, "-m", "pydantic_toast.integrations.cli"]


def _waiting_on_locks(url: str, count: int, timeout: float = 30) -> None:
    """Return once ``count`` other sessions on ``url``'s database wait for a lock."""
    import asyncpg

    async def wait() -> None:
        connection = await asyncpg.connect(url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                waiting = await connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
                if waiting >= count:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"fewer than {count} sessions waited for a lock")
        finally:
            await connection.close()

    asyncio.run(wait())


def _holding_a_lock(url: str, sql: str, until: threading.Event) -> threading.Thread:
    """A thread whose session runs ``sql`` in a transaction, held open until ``until`` is set."""
    import asyncpg

    held = threading.Event()

    async def hold() -> None:
        connection = await asyncpg.connect(url)
        try:
            async with connection.transaction():
                await connection.execute(sql)
                held.set()
                await asyncio.to_thread(until.wait, 60)
        finally:
            await connection.close()

    thread = threading.Thread(target=asyncio.run, args=(hold(),))
    thread.start()
    assert held.wait(30), "the lock holder did not start"
    return thread


@pytest.mark.postgresql
def test_two_migrate_runs_at_once_take_turns(empty_database: str) -> None:
    """Two `pydantic-toast migrate` runs that both start while the table is busy: both
    succeed, the second finding the first one's work done. Before, each read revision 0001,
    both waited for the table, and the second failed on the column the first had added."""
    assert toast_cli(["migrate", empty_database, "--revision", "0001_external_records"]) == 0
    release = threading.Event()
    holder = _holding_a_lock(
        empty_database, "LOCK TABLE external_records IN ACCESS SHARE MODE", release
    )
    try:
        runs = [
            subprocess.Popen(
                [*CLI, "migrate", empty_database],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        _waiting_on_locks(empty_database, 2)
    finally:
        release.set()
        holder.join()
    results = [(run.wait(120), *run.communicate()) for run in runs]
    for code, out, err in results:
        assert code == 0, err
        assert "migrated to head" in out
    assert toast_cli(["check", empty_database]) == 0


@pytest.mark.postgresql
def test_migrate_is_not_bounded_by_the_urls_command_timeout(empty_database: str) -> None:
    """A migration that waits for the table longer than the URL's command_timeout (which
    bounds record statements) still runs: before, it failed with a bare 'TimeoutError: '."""
    assert toast_cli(["migrate", empty_database, "--revision", "0004_record_counts"]) == 0
    release = threading.Event()
    holder = _holding_a_lock(
        empty_database, "LOCK TABLE external_records IN ACCESS SHARE MODE", release
    )
    timer = threading.Timer(2.5, release.set)
    timer.start()
    try:
        assert toast_cli(["migrate", f"{empty_database}?command_timeout=1"]) == 0
    finally:
        timer.cancel()
        release.set()
        holder.join()
    assert toast_cli(["check", empty_database]) == 0


@pytest.mark.sqlite
def test_failed_sqlite_migration_leaves_the_file_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A migrate run that fails half-way (here on a table the file already had) leaves the
    file unmigrated, and runs again once the cause is fixed. Before, each CREATE TABLE was
    committed at once: external_records stayed behind without its revision, and every later
    migrate failed with 'table external_records already exists'."""
    file = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(file)) as connection, connection:
        connection.execute("CREATE TABLE external_record_counts (x INTEGER)")
    url = f"sqlite:///{file}"
    assert toast_cli(["migrate", url]) == 1
    assert "external_record_counts already exists" in capsys.readouterr().err
    with contextlib.closing(sqlite3.connect(file)) as connection, connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert "external_records" not in tables
        connection.execute("DROP TABLE external_record_counts")
    assert toast_cli(["migrate", url]) == 0
    assert toast_cli(["check", url]) == 0


@pytest.mark.sqlite
def test_sqlite_migrate_runs_at_once_all_succeed(tmp_path: Path) -> None:
    """Four `pydantic-toast migrate` processes on a new file: each exits 0, the file at head
    in WAL mode. Before, some failed ('table ... already exists', 'expected to match one
    row', or locked) and could leave a half-made table behind."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    runs = [
        subprocess.Popen([*CLI, "migrate", url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [(run.wait(120), run.communicate()[1]) for run in runs]
    assert [code for code, _ in errors] == [0, 0, 0, 0], errors
    assert toast_cli(["check", url]) == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "app.db")) as connection, connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.postgresql
def test_schema_of_its_own_counts_a_dbas_delete(empty_database: str) -> None:
    """Tables migrated into a schema of their own (the role's search_path): a DBA's DELETE
    under the default search_path is counted in that schema. Before, the count triggers
    looked external_record_counts up in the writer's search_path: the DELETE failed with
    'relation "external_record_counts" does not exist' (or, with another install in public,
    changed that install's counts)."""
    from tests.integration.test_postgresql import model_on

    role, password = f"toast_schema_{uuid4().hex[:8]}", "schema-pw-7"
    database = empty_database.rsplit("/", 1)[1]
    _admin(
        empty_database,
        f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'",
        f'CREATE SCHEMA shop AUTHORIZATION "{role}"',
        f'ALTER ROLE "{role}" IN DATABASE "{database}" SET search_path = shop',
    )
    head, _, rest = empty_database.partition("://")
    as_role = f"{head}://{role}:{password}@{rest.rsplit('@', 1)[-1]}"
    try:
        assert toast_cli(["migrate", as_role]) == 0
        note = model_on(as_role)
        references = [note(text=str(n)).model_dump() for n in range(3)]
        pydantic_toast.close_storage()
        _admin(
            empty_database,
            f"DELETE FROM shop.external_records WHERE id = '{references[0]['id']}'",
        )
        assert pydantic_toast.count(note) == 2
    finally:
        pydantic_toast.close_storage()
        _admin(empty_database, f'DROP OWNED BY "{role}"')
        _admin(empty_database, f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.postgresql
def test_migrate_behind_a_long_transaction_gives_up_and_changes_nothing(
    empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A migration whose ALTER TABLE waits behind a long transaction (a report, a pg_dump)
    stops after the lock bound (the server's lock_timeout, 1 s here; else
    MIGRATION_LOCK_TIMEOUT) with one line saying nothing was changed, so the application's
    statements do not queue behind it for as long as the transaction lasts. Before, it waited
    (up to the URL's command_timeout, then indefinitely once that no longer applied to
    migrations)."""
    assert toast_cli(["migrate", empty_database, "--revision", "0004_record_counts"]) == 0
    database = empty_database.rsplit("/", 1)[-1]
    _admin(empty_database, f"ALTER DATABASE \"{database}\" SET lock_timeout = '1s'")
    release = threading.Event()
    holder = _holding_a_lock(
        empty_database, "LOCK TABLE external_records IN ACCESS SHARE MODE", release
    )
    timer = threading.Timer(6, release.set)
    timer.start()
    capsys.readouterr()
    try:
        started = time.monotonic()
        code = toast_cli(["migrate", empty_database])
        waited = time.monotonic() - started
    finally:
        timer.cancel()
        release.set()
        holder.join()
    err = capsys.readouterr().err
    assert code == 1
    assert waited < 5
    assert "lock timeout" in err
    assert "nothing was changed" in err
    assert "ALTER ROLE ... SET lock_timeout" in err
    capsys.readouterr()
    assert toast_cli(["current", empty_database]) == 0
    assert capsys.readouterr().out.strip() == "0004_record_counts"


@pytest.mark.postgresql
def test_runs_take_turns_whatever_the_servers_lock_timeout(empty_database: str) -> None:
    """With the database's lock_timeout at 1 s, a run that starts while another holds the
    migration lock for 3 s waits its turn and succeeds. The advisory lock obeyed the server's
    lock_timeout: the second of two deploys failed, blaming a long transaction."""
    from pydantic_toast.integrations.alembic import MIGRATION_LOCK

    database = empty_database.rsplit("/", 1)[-1]
    _admin(empty_database, f"ALTER DATABASE \"{database}\" SET lock_timeout = '1s'")
    release = threading.Event()
    holder = _holding_a_lock(
        empty_database, f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})", release
    )
    timer = threading.Timer(3, release.set)
    timer.start()
    try:
        run = subprocess.run(
            [*CLI, "migrate", empty_database], capture_output=True, text=True, timeout=120
        )
    finally:
        timer.cancel()
        release.set()
        holder.join()
    assert run.returncode == 0, run.stderr
    assert "migrated to head" in run.stdout
