"""Turn PostgreSQL's ``external_records`` into a table hash-partitioned by ``id``.

``pydantic-toast partition URL --partitions N`` (after ``pydantic-toast migrate``): in one
transaction, the table is renamed aside, a partitioned table of the same name is made LIKE it
(every column it has at the current revision, defaults, NOT NULLs, checks and comments), the
primary key and indexes are re-created under their own names (a partitioned table's primary key
must contain the partition key: ``(class_name, id)`` does), ``N`` partitions
``external_records_p<i>`` are attached (``MODULUS N, REMAINDER i``), the old table's owner and
grants are given to the new one, the rows are copied, the old table dropped and its triggers
(the record counts') re-created on the new one. The table keeps its name, columns, comments,
owner and grants (the DBA view and the application's access are unchanged), and Alembic's
later ``ALTER TABLE external_records ADD COLUMN`` reach every partition.

A statement naming one ``(class_name, id)`` (load, save, delete) reaches one partition; listing
a class reads every partition (a Merge Append over their indexes), counting reads the class's
rows of ``external_record_counts``. The table is locked (ACCESS EXCLUSIVE) while the rows are
copied: run it in a maintenance window, or create the partitioned table before the data grows.
"""

from __future__ import annotations

from typing import Any

from pydantic_toast._exceptions import StorageConfigurationError, StorageUsageError

__all__ = ["partition_statements", "partition_table"]

TABLE = "external_records"
OLD = "external_records_unpartitioned"


async def partition_statements(connection: Any, partitions: int) -> list[str]:
    """The DDL that partitions ``external_records`` into ``partitions`` hash partitions.

    Read from the live table (its indexes and primary key), so it fits whatever columns the
    table has at the current migration.

    Raises:
        StorageConfigurationError: ``partitions`` is not from 2 to 1024.
        StorageUsageError: The table is missing or already partitioned.
    """
    if not 2 <= partitions <= 1024:
        raise StorageConfigurationError("--partitions must be from 2 to 1024")
    kind = await connection.fetchval(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = $1 AND n.nspname = current_schema()",
        TABLE,
    )
    if kind is None:
        raise StorageUsageError(f"{TABLE} does not exist: run pydantic-toast migrate first")
    if kind in (b"p", "p"):
        raise StorageUsageError(f"{TABLE} is already partitioned")
    constraints = await connection.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS definition, contype FROM pg_constraint "
        "WHERE conrelid = $1::regclass AND contype IN ('p', 'u')",
        TABLE,
    )
    indexes = await connection.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1 "
        "AND schemaname = current_schema() AND indexname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass)",
        TABLE,
    )
    comment = await connection.fetchval("SELECT obj_description($1::regclass, 'pg_class')", TABLE)
    # The count triggers (migration 0004): re-created on the new table once the rows are copied
    # (the copy must not count them again); the old table's go with it.
    triggers = await connection.fetch(
        "SELECT pg_get_triggerdef(oid) AS definition FROM pg_trigger "
        "WHERE tgrelid = $1::regclass AND NOT tgisinternal ORDER BY tgname",
        TABLE,
    )
    # The new table is the runner's and has no grants: the old one's owner and privileges
    # (the application role's SELECT, INSERT, UPDATE, DELETE) are given to it again.
    owner = await connection.fetchval(
        "SELECT quote_ident(pg_get_userbyid(relowner)) FROM pg_class WHERE oid = $1::regclass",
        TABLE,
    )
    grants = await connection.fetch(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee,"
        " a.privilege_type, a.is_grantable "
        "FROM pg_class c CROSS JOIN aclexplode(c.relacl) a LEFT JOIN pg_roles r "
        "ON r.oid = a.grantee WHERE c.oid = $1::regclass AND a.grantee <> c.relowner "
        "ORDER BY 1, 2",
        TABLE,
    )
    statements = [
        f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE",
        f"ALTER TABLE {TABLE} RENAME TO {OLD}",
    ]
    # Free the names: the new table's key and indexes take them.
    for row in constraints:
        statements.append(
            f'ALTER TABLE {OLD} RENAME CONSTRAINT "{row["conname"]}" TO "{row["conname"]}_old"'
        )
    for row in indexes:
        statements.append(f'ALTER INDEX "{row["indexname"]}" RENAME TO "{row["indexname"]}_old"')
    statements.append(
        f"CREATE TABLE {TABLE} (LIKE {OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING COMMENTS INCLUDING GENERATED INCLUDING STORAGE) PARTITION BY HASH (id)"
    )
    for row in constraints:
        statements.append(
            f'ALTER TABLE {TABLE} ADD CONSTRAINT "{row["conname"]}" {row["definition"]}'
        )
    for row in indexes:
        # pg_indexes gives "CREATE INDEX name ON schema.external_records USING ...".
        statements.append(row["indexdef"])
    if comment is not None:
        statements.append(f"COMMENT ON TABLE {TABLE} IS {_literal(comment)}")
    for remainder in range(partitions):
        statements.append(
            f"CREATE TABLE {TABLE}_p{remainder} PARTITION OF {TABLE} "
            f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {remainder})"
        )
    for name in (TABLE, *(f"{TABLE}_p{remainder}" for remainder in range(partitions))):
        statements.append(f"ALTER TABLE {name} OWNER TO {owner}")
    for row in grants:
        option = " WITH GRANT OPTION" if row["is_grantable"] else ""
        statements.append(f"GRANT {row['privilege_type']} ON {TABLE} TO {row['grantee']}{option}")
    statements += [f"INSERT INTO {TABLE} SELECT * FROM {OLD}", f"DROP TABLE {OLD}"]
    statements += [row["definition"] for row in triggers]
    return statements


async def partition_table(url: str, partitions: int) -> int:
    """Partition ``external_records`` at ``url`` in one transaction; return the rows moved.

    Connects as the library does, with the URL's options (``sslmode`` and the certificate
    files, ``connect_timeout``, ``application_name``) but no ``command_timeout``: copying a
    large table takes as long as it takes. Holds the migrations' advisory lock, so a
    concurrent ``pydantic-toast migrate`` waits until the table is rebuilt, and waits for the
    table's lock no longer than a migration does (``MIGRATION_LOCK_TIMEOUT``).
    """
    import asyncpg

    from pydantic_toast._url import StorageURL
    from pydantic_toast.backends.postgresql import engine_options
    from pydantic_toast.integrations.alembic import TAKE_MIGRATION_LOCK

    address, options = engine_options(StorageURL.parse(url))
    connection = await asyncpg.connect(
        host=address.host,
        port=address.port,
        user=address.username,
        password=address.password,
        database=address.database,
        **{**options["connect_args"], "command_timeout": None},
    )
    try:
        # READ COMMITTED whatever the server's default: see migration_engine().
        async with connection.transaction(isolation="read_committed"):
            await connection.execute(TAKE_MIGRATION_LOCK)
            for statement in await partition_statements(connection, partitions):
                await connection.execute(statement)
            return int(await connection.fetchval(f"SELECT count(*) FROM {TABLE}"))
    except asyncpg.DependentObjectsStillExistError as exc:
        # A view or a foreign key of the DBA's follows the renamed table, which then cannot
        # be dropped. The detail names the objects (schema names only, no data).
        detail = " ".join((exc.detail or "").split())
        raise StorageUsageError(
            f"objects of your own depend on {TABLE} ({detail or exc}): nothing was changed; "
            "drop them, run partition, then create them again"
        ) from None
    finally:
        await connection.close()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
