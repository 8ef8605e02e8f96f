"""The pydantic-toast command: help, one-line errors, exit codes and `check`, on real servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast.integrations.cli import EXIT_CODES
from pydantic_toast.integrations.cli import main as toast_cli
from tests import servers
from tests.integration.conftest import _admin

CLI = [sys.executable, "-m", "pydantic_toast.integrations.cli"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = toast_cli(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line(err: str) -> None:
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    """--help of the command and each subcommand is plain text naming what it does."""
    with pytest.raises(SystemExit) as info:
        toast_cli(["--help"])
    assert info.value.code == 0
    top = capsys.readouterr().out
    for name in ("migrate", "downgrade", "current", "check", "exit codes"):
        assert name in top
    for name in (
        "migrate",
        "downgrade",
        "current",
        "check",
        "recount",
        "purge",
        "orphans",
        "reencrypt",
    ):
        with pytest.raises(SystemExit):
            toast_cli([name, "--help"])
        text = capsys.readouterr().out
        assert "--verbose" in text
        assert "DATABASE_URL" in text
        assert "``" not in text
        assert "::" not in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version."""
    with pytest.raises(SystemExit) as info:
        toast_cli(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pydantic-toast {pydantic_toast.__version__}"


def test_python_dash_m_runs_the_command_line(tmp_path: Path) -> None:
    """``python -m pydantic_toast`` is the same command line (where the script is not on
    PATH): it migrates a SQLite file and exits 0."""
    path = tmp_path / "m.db"
    done = subprocess.run(
        [sys.executable, "-m", "pydantic_toast", "migrate", f"sqlite:///{path}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM external_records").fetchone() == (0,)
    finally:
        db.close()


def test_exit_codes_are_documented() -> None:
    """Each exit code has a meaning, shown in --help."""
    assert set(EXIT_CODES) == {0, 1, 2, 3}


def test_misspelled_scheme_suggests_the_right_one(capsys: pytest.CaptureFixture[str]) -> None:
    """postgressql:// is an unknown scheme with a suggestion, and the password stays hidden."""
    code, _, err = run(capsys, "migrate", "postgressql://u:s3cret@127.0.0.1/db")
    assert code == 2
    assert_one_line(err)
    assert "unknown scheme 'postgressql'" in err
    assert "did you mean postgresql?" in err
    assert "s3cret" not in err


def test_other_sqlalchemy_driver_scheme_says_what_to_write(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """postgresql+pg8000:// is refused with the scheme to write instead, the password hidden."""
    code, _, err = run(capsys, "migrate", "postgresql+pg8000://u:s3cret@127.0.0.1/db")
    assert code == 2
    assert_one_line(err)
    assert "write the URL with postgresql:// instead of postgresql+pg8000://" in err
    assert "did you mean" not in err
    assert "s3cret" not in err


def test_redis_needs_no_migration(capsys: pytest.CaptureFixture[str]) -> None:
    """A Redis URL is refused with exit code 2 and a reason."""
    code, _, err = run(capsys, "migrate", "redis://127.0.0.1:6379/0")
    assert code == 2
    assert_one_line(err)
    assert "needs no migration" in err


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://127.0.0.1:6379/0", "redis:// deletes each expired record itself"),
        ("redis+cluster://127.0.0.1:7000/", "redis+cluster:// deletes each expired record"),
        ("memory://", "memory:// deletes each expired record itself"),
        ("s3://bucket/prefix", "s3:// stores no records with a ttl"),
    ],
)
def test_purge_where_nothing_expires_in_place(
    capsys: pytest.CaptureFixture[str], url: str, reason: str
) -> None:
    """purge on a store that keeps no expired records: exit code 2, the reason, no migration."""
    code, _, err = run(capsys, "purge", url)
    assert code == 2
    assert_one_line(err)
    assert reason in err
    assert "nothing to purge" in err
    assert "migration" not in err


def test_partition_of_redis_names_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    """partition on Redis: exit code 2, PostgreSQL only (not "needs no migration")."""
    code, _, err = run(capsys, "partition", "redis://127.0.0.1:6379/0", "--partitions", "4")
    assert code == 2
    assert_one_line(err)
    assert "partition works on PostgreSQL only, not redis://" in err


def test_no_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a URL or DATABASE_URL the command says which to give."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(SystemExit) as info:
        toast_cli(["migrate"])
    assert info.value.code == 2
    assert "DATABASE_URL" in capsys.readouterr().err


@pytest.mark.sqlite
def test_sqlite_check_migrate_current_downgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check says not migrated (3), migrate fixes it (0), current and downgrade work."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    sqlite3.connect(tmp_path / "cli.db").close()  # an empty database file
    code, out, _ = run(capsys, "check", url)
    assert code == 3
    assert "reachable" in out
    assert "NOT migrated" in out
    code, out, _ = run(capsys, "migrate", url)
    assert code == 0
    assert "migrated to head" in out
    code, out, _ = run(capsys, "check", url)
    assert code == 0
    assert "- migrated" in out
    code, out, _ = run(capsys, "current", url)
    assert code == 0
    assert out.strip() != "none"
    assert out.strip() in run(capsys, "check", url)[1]
    code, _, _ = run(capsys, "downgrade", url, "--revision", "base")
    assert code == 0
    assert run(capsys, "current", url)[1].strip() == "none"


@pytest.mark.sqlite
@pytest.mark.parametrize("command", [["check"], ["current"], ["downgrade", "--revision", "base"]])
def test_only_migrate_creates_a_sqlite_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """check on a mistyped file name says the file does not exist (1) and leaves no file
    behind; it used to create an empty file and report it reachable."""
    file = tmp_path / "typo.db"
    code, out, err = run(capsys, command[0], f"sqlite:///{file}", *command[1:])
    assert code == 1
    assert out == ""
    assert f"the SQLite file {file} does not exist" in err
    assert_one_line(err)
    assert not file.exists()
    assert run(capsys, "migrate", f"sqlite:///{file}")[0] == 0
    assert file.exists()


@pytest.mark.sqlite
def test_sqlite_in_a_missing_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SQLite file whose folder does not exist fails in one line with exit code 1."""
    code, _, err = run(capsys, "migrate", f"sqlite:///{tmp_path / 'nope' / 'x.db'}")
    assert code == 1
    assert_one_line(err)


@pytest.mark.postgresql
def test_check_a_migrated_postgres_database(
    postgres_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """check on the session's migrated database reports it reachable and at head."""
    code, out, _ = run(capsys, "check", postgres_database_url)
    assert code == 0, out
    assert "reachable" in out
    assert "- migrated" in out


@pytest.mark.postgresql
def test_migrate_without_create_privilege_names_the_grant(
    empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """migrate as a user who may not create tables: one line naming the owner or the CREATE
    grant, exit 1, no password (it was SQLAlchemy's bare 'permission denied for schema')."""
    role, password = f"toast_nocreate_{uuid4().hex[:8]}", "no-create-pw-3"
    _admin(
        empty_database,
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'",
    )
    head, _, rest = empty_database.partition("://")
    as_role = f"{head}://{role}:{password}@{rest.rsplit('@', 1)[-1]}"
    try:
        code, _, err = run(capsys, "migrate", as_role)
    finally:
        _admin(empty_database, f'DROP OWNED BY "{role}"', f'DROP ROLE IF EXISTS "{role}"')
    assert code == 1
    assert_one_line(err)
    assert "may not create or change the library's tables" in err
    assert "grant the user CREATE on the schema" in err
    assert password not in err


@pytest.mark.postgresql
def test_refused_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening: exit code 1, one line naming the address, no traceback."""
    port = servers.free_port()
    url = f"postgresql://postgres:hunter2@127.0.0.1:{port}/db"
    for command in ("migrate", "check"):
        code, _, err = run(capsys, command, url)
        assert code == 1
        assert_one_line(err)
        assert f"127.0.0.1:{port}" in err
        assert "hunter2" not in err


@pytest.mark.postgresql
def test_verbose_adds_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    """--verbose prints the traceback before the one-line error."""
    url = f"postgresql://postgres@127.0.0.1:{servers.free_port()}/db"
    code, _, err = run(capsys, "migrate", url, "--verbose")
    assert code == 1
    assert "Traceback" in err


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[servers.TempPostgres]:
    """A throwaway local cluster whose TCP connections need the password."""
    with servers.temp_postgres() as cluster:
        yield cluster


@pytest.mark.postgresql
@pytest.mark.slow
def test_wrong_password_is_one_line_without_the_password(
    password_cluster: servers.TempPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong password: exit code 1, 'rejected the credentials', the password never shown."""
    code, _, err = run(capsys, "check", password_cluster.url(password="wr0ng-pass"))
    assert code == 1
    assert_one_line(err)
    assert "rejected the credentials" in err
    assert "wr0ng-pass" not in err


@pytest.mark.postgresql
@pytest.mark.slow
def test_missing_database_is_one_line(
    password_cluster: servers.TempPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database that does not exist: exit code 1 and the createdb hint."""
    code, _, err = run(capsys, "migrate", password_cluster.url(database="no_such_db"))
    assert code == 1
    assert_one_line(err)
    assert "does not exist" in err
    assert f":{password_cluster.PASSWORD}@" not in err


@pytest.mark.postgresql
@pytest.mark.slow
def test_installed_command_migrates_and_checks(password_cluster: servers.TempPostgres) -> None:
    """As a subprocess: check (3), migrate (0), check (0), password masked in every line."""
    url = password_cluster.url()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *argv], capture_output=True, text=True, env=env, timeout=120, check=False
        )

    before = cli("check", url)
    assert before.returncode == 3, before.stderr
    migrated = cli("migrate", url)
    assert migrated.returncode == 0, migrated.stderr
    after = cli("check", url)
    assert after.returncode == 0, after.stderr
    for result in (before, migrated, after):
        assert f":{password_cluster.PASSWORD}@" not in result.stdout + result.stderr
        assert "***" in result.stdout


@pytest.mark.sqlite
def test_module_in_the_current_directory_is_imported(tmp_path: Path) -> None:
    """``--module mymodels`` finds ./mymodels.py without PYTHONPATH=. when run as the installed
    script, whose own folder (not the current one) heads sys.path."""
    project, scripts = tmp_path / "project", tmp_path / "bin"
    project.mkdir()
    scripts.mkdir()
    url = f"sqlite:///{tmp_path / 'tags.db'}"
    assert toast_cli(["migrate", url]) == 0
    (project / "mymodels.py").write_text(
        "from pydantic_toast import ExternalBaseModel, ExternalConfigDict\n\n\n"
        "class Tag(ExternalBaseModel):\n"
        "    label: str\n"
        f"    model_config = ExternalConfigDict(storage={url!r})\n"
    )
    # What pip's console script does: run main() from a file in another folder.
    script = scripts / "pydantic-toast"
    script.write_text(
        "import sys\nfrom pydantic_toast.integrations.cli import main\nsys.exit(main())\n"
    )
    result = subprocess.run(
        [sys.executable, str(script), "orphans", url, "--module", "mymodels", "--class", "Tag"],
        cwd=project, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "checked 0, orphans 0" in result.stderr


@pytest.mark.postgresql
def test_partition_past_the_servers_lock_timeout_names_the_fix(
    empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """partition waiting for a table another session reads, past the lock_timeout a DBA set
    on the database: exit 1, one line saying nothing was changed and which setting to raise
    (it was the driver's bare 'canceling statement due to lock timeout')."""
    assert toast_cli(["migrate", empty_database]) == 0
    database = empty_database.rsplit("/", 1)[1]
    _admin(empty_database, f"ALTER DATABASE \"{database}\" SET lock_timeout = '200ms'")

    async def partition_while_read() -> tuple[int, str]:
        import asyncpg

        reader = await asyncpg.connect(empty_database, server_settings={"lock_timeout": "0"})
        try:
            async with reader.transaction():
                await reader.execute("LOCK TABLE external_records IN ACCESS SHARE MODE")
                code = await asyncio.to_thread(
                    toast_cli, ["partition", empty_database, "--partitions", "4"]
                )
        finally:
            await reader.close()
        return code, capsys.readouterr().err

    code, err = asyncio.run(partition_while_read())
    assert code == 1
    assert_one_line(err)
    assert "lock timeout" in err
    assert "nothing was changed" in err
    assert "ALTER ROLE" in err
    assert toast_cli(["check", empty_database]) == 0  # still at head, not partitioned


@pytest.mark.sqlite
def test_current_and_check_name_an_older_revision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file migrated by an older pydantic-toast (here: to 0003): current prints that
    revision, check names it (exit 3). Both said 'none', as if never migrated, because the
    library's own table check failed on the missing columns."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    assert run(capsys, "migrate", url, "--revision", "0003_record_revisions")[0] == 0
    code, out, _ = run(capsys, "current", url)
    assert (code, out.strip()) == (0, "0003_record_revisions")
    code, out, _ = run(capsys, "check", url)
    assert code == 3
    assert "revision: 0003_record_revisions (head: " in out


@pytest.mark.sqlite
def test_revision_of_a_newer_version_names_the_way_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file a newer pydantic-toast migrated (an application rolled back to an older
    version): check (3), migrate and downgrade (1) say so and name the way back, in one
    line. check used to advise `pydantic-toast migrate`, which failed with Alembic's bare
    "Can't locate revision identified by ..."."""
    file = tmp_path / "newer.db"
    url = f"sqlite:///{file}"
    assert run(capsys, "migrate", url)[0] == 0
    with contextlib.closing(sqlite3.connect(file)) as connection, connection:
        connection.execute("UPDATE pydantic_toast_alembic_version SET version_num = '0099_next'")
    code, out, _ = run(capsys, "check", url)
    assert code == 3
    assert "at revision 0099_next, which pydantic-toast" in out
    assert "a newer pydantic-toast migrated it" in out
    assert "run pydantic-toast migrate" not in out
    for command in (["migrate"], ["downgrade", "--revision", "base"]):
        code, _, err = run(capsys, command[0], url, *command[1:])
        assert code == 1
        assert_one_line(err)
        assert "a newer pydantic-toast migrated it" in err
        assert "downgrade URL --revision 0" in err


@pytest.mark.sqlite
def test_check_at_head_with_the_table_dropped_is_not_migrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The version table at head but external_records dropped by hand: check exits 3 and
    says the tables do not match the revision (not 'migrated', not 'revision: none')."""
    file = tmp_path / "dropped.db"
    url = f"sqlite:///{file}"
    assert run(capsys, "migrate", url)[0] == 0
    with contextlib.closing(sqlite3.connect(file)) as connection, connection:
        connection.execute("DROP TABLE external_records")
    code, out, _ = run(capsys, "check", url)
    assert code == 3
    assert "the library's tables do not match it" in out
    assert "revision: none" not in out


@pytest.mark.postgresql
def test_check_as_the_application_role_names_the_version_table_grant(
    empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """check as a role granted only the two tables: exit 1, one line naming the GRANT on the
    version table (it was SQLAlchemy's bare 'permission denied for table ...'); with the
    grant docs/backends/postgresql.md now lists, check passes."""
    role, password = f"toast_app_{uuid4().hex[:8]}", "app-check-pw-9"
    assert toast_cli(["migrate", empty_database]) == 0
    _admin(
        empty_database,
        f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON external_records, external_record_counts "
        f'TO "{role}"',
    )
    head, _, rest = empty_database.partition("://")
    as_role = f"{head}://{role}:{password}@{rest.rsplit('@', 1)[-1]}"
    try:
        capsys.readouterr()
        code, _, err = run(capsys, "check", as_role)
        assert code == 1
        assert_one_line(err)
        assert "GRANT SELECT ON pydantic_toast_alembic_version TO the user" in err
        assert password not in err
        _admin(empty_database, f'GRANT SELECT ON pydantic_toast_alembic_version TO "{role}"')
        assert run(capsys, "check", as_role)[0] == 0
    finally:
        pydantic_toast.close_storage()
        _admin(empty_database, f'DROP OWNED BY "{role}"', f'DROP ROLE IF EXISTS "{role}"')
