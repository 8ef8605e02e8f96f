"""The per-class record counts: checking the triggers that keep them, and counting again.

``count()`` reads ``external_record_counts``, which triggers on ``external_records`` keep
(migration ``0004_record_counts``). Writes made while a trigger is disabled or missing are not
counted, and nothing at run time notices: ``pydantic-toast check`` reports such triggers
(:func:`count_trigger_faults`), and ``pydantic-toast recount`` counts every class again
(:func:`recount`) once they are back.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from pydantic_toast.backends.sql_table import COUNTS_TABLE_NAME, TABLE_NAME

__all__ = ["COUNT_TRIGGERS", "count_trigger_faults", "recount"]

COUNT_TRIGGERS = {
    "postgresql": (
        "external_records_count_insert",
        "external_records_count_delete",
        "external_records_count_move",
        "external_records_count_truncate",
    ),
    "sqlite": (
        "external_records_count_insert",
        "external_records_count_delete",
        "external_records_count_move",
    ),
}
"""The triggers migration 0004 puts on ``external_records``, by SQL dialect."""

# Enabled for ordinary sessions: 'O' (origin and local) and 'A' (always). 'D' is disabled,
# 'R' fires only under session_replication_role = replica.
_FIRING = ("O", "A")


async def count_trigger_faults(connection: AsyncConnection) -> list[str]:
    """What is wrong with the count triggers on ``connection``'s database (empty: nothing).

    Each fault names the trigger, what is wrong and the fix; disabled triggers come first.
    """
    dialect = connection.dialect.name
    expected = COUNT_TRIGGERS[dialect]
    rows = await _trigger_tree(connection)
    found = {name for name, _, table, _ in rows if table == TABLE_NAME}
    disabled = _to_enable(rows, expected)
    missing = [name for name in expected if name not in found]
    faults = []
    if disabled:
        names = sorted({name for _, name in disabled}, key=expected.index)
        faults.append(
            f"{_triggers(names)} disabled, so rows written since are not counted: "
            + "; ".join(f"ALTER TABLE {table} ENABLE TRIGGER {name}" for table, name in disabled)
            + ", then pydantic-toast recount URL"
        )
    if missing:
        restore = (
            "re-create them from a schema-only dump of a migrated database (pg_dump "
            f"--schema-only -n <schema>: a dump of {TABLE_NAME} alone leaves out their functions)"
            if dialect == "postgresql"
            else "restore the file's schema from a backup"
        )
        faults.append(
            f"{_triggers(missing)} missing, so rows written since are not counted: {restore}, "
            "then pydantic-toast recount URL"
        )
    return faults


async def _trigger_tree(connection: AsyncConnection) -> list[tuple[str, str, str, str | None]]:
    """The triggers on ``external_records`` and on its partitions, at any depth: rows of
    (name, state, table, the table of the trigger it is a clone of, or None)."""
    parent = f"to_regclass('{TABLE_NAME}')"
    if connection.dialect.name != "postgresql":  # SQLite's triggers cannot be disabled
        query = (
            f"SELECT name, 'O', '{TABLE_NAME}', NULL FROM sqlite_master "
            f"WHERE type = 'trigger' AND tbl_name = '{TABLE_NAME}'"
        )
    elif (connection.dialect.server_version_info or (0,)) < (13,):  # no tgparentid yet
        query = (
            "SELECT tgname, tgenabled::text, tgrelid::regclass::text, NULL FROM pg_trigger "
            f"WHERE NOT tgisinternal AND tgrelid = {parent}"
        )
    else:
        # A partitioned table's row trigger has a clone on each partition, and a
        # sub-partitioned partition's clone has clones of its own; each can be disabled alone.
        query = (
            "WITH RECURSIVE tree AS ("
            " SELECT oid, tgname, tgenabled, tgrelid, NULL::regclass AS above FROM pg_trigger"
            f" WHERE NOT tgisinternal AND tgrelid = {parent}"
            " UNION ALL"
            " SELECT t.oid, t.tgname, t.tgenabled, t.tgrelid, tree.tgrelid::regclass"
            " FROM pg_trigger t JOIN tree ON t.tgparentid = tree.oid"
            ") SELECT tgname, tgenabled::text, tgrelid::regclass::text, above::text FROM tree"
        )
    result = await connection.exec_driver_sql(query)
    return cast("list[tuple[str, str, str, str | None]]", result.all())


def _to_enable(
    rows: list[tuple[str, str, str, str | None]], expected: tuple[str, ...]
) -> list[tuple[str, str]]:
    """The (table, trigger) pairs to enable, fewest first: ``ENABLE TRIGGER`` on a
    partitioned table also enables the clones on its partitions, so a disabled clone below a
    disabled trigger needs no statement of its own."""
    state = {(table, name): enabled for name, enabled, table, _ in rows}
    return [
        (table, name)
        for name, enabled, table, above in rows
        if name in expected
        and enabled not in _FIRING
        and (above is None or state.get((above, name)) in _FIRING)
    ]


def _triggers(names: list[str]) -> str:
    if len(names) == 1:
        return f"the count trigger {names[0]} is"
    return f"the count triggers {', '.join(names)} are"


async def recount(url: str) -> int:
    """Count every class's records at ``url`` again, in one transaction; return the classes.

    Writers wait until it commits (PostgreSQL: a ``SHARE ROW EXCLUSIVE`` lock on
    ``external_records``, taken after the migrations' advisory lock and within their lock
    wait bound; readers go on. SQLite: ``BEGIN IMMEDIATE``), so no write falls between the
    count and the new counter rows. Like migration 0004, every row is counted, expired or not:
    ``count()`` leaves out the expired ones itself.
    """
    from pydantic_toast.integrations.alembic import TAKE_MIGRATION_LOCK, migration_engine

    engine = migration_engine(url)
    try:
        async with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                await connection.exec_driver_sql(TAKE_MIGRATION_LOCK)
                await connection.exec_driver_sql(
                    f"LOCK TABLE {TABLE_NAME} IN SHARE ROW EXCLUSIVE MODE"
                )
            else:
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            await connection.execute(text(f"DELETE FROM {COUNTS_TABLE_NAME}"))
            counted = await connection.execute(
                text(
                    f"INSERT INTO {COUNTS_TABLE_NAME} (class_name, shard, records) "
                    f"SELECT class_name, 0, count(*) FROM {TABLE_NAME} GROUP BY class_name"
                )
            )
            await connection.commit()
            return int(counted.rowcount)
    finally:
        await engine.dispose()
