"""SQLite: move external_records.data to the last column (a table rebuild); PostgreSQL: nothing.

SQLite can write a value in place, in pieces (incremental blob I/O), only when the value is the
row's last column that holds bytes: otherwise it assembles the whole row in memory first, a
100 MB record costing 2x its size on top of the model's JSON. With ``data`` last, the library
writes records above 1 MiB as ``zeroblob(n)`` filled in 1 MiB pieces (stored as a BLOB of the
JSON's UTF-8 text). SQLite reorders columns only by rebuilding the table (Alembic's batch "move
and copy", one transaction), which drops the table's triggers: the count triggers of
``0004_record_counts`` are created again; the indexes are copied with the table.

Revision ID: 0006_sqlite_data_last
Revises: 0005_record_expiry
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from pydantic_toast.backends.sql_table import UTCDateTime

revision: str = "0006_sqlite_data_last"
down_revision: str | None = "0005_record_expiry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Copied, not imported: a migration must keep meaning what it meant when it was written.
_BEFORE = (
    "class_name",
    "id",
    "schema_version",
    "data",
    "created_at",
    "updated_at",
    "data_exact",
    "revision",
    "expires_at",
)
_DATA_LAST = (*(name for name in _BEFORE if name != "data"), "data")


def _columns() -> dict[str, sa.Column[Any]]:
    """The table's columns as 0005_record_expiry left them (SQLite keeps no comments)."""
    return {
        "class_name": sa.Column("class_name", sa.Text(), nullable=False),
        "id": sa.Column("id", sa.Uuid(), nullable=False),
        "schema_version": sa.Column(
            "schema_version", sa.Integer(), server_default="1", nullable=False
        ),
        "data": sa.Column("data", sa.JSON(), nullable=False),
        "created_at": sa.Column(
            "created_at", UTCDateTime(), server_default=sa.func.now(), nullable=False
        ),
        "updated_at": sa.Column(
            "updated_at", UTCDateTime(), server_default=sa.func.now(), nullable=False
        ),
        "data_exact": sa.Column("data_exact", sa.Text(), nullable=True),
        "revision": sa.Column("revision", sa.Integer(), server_default="1", nullable=False),
        "expires_at": sa.Column("expires_at", UTCDateTime(), nullable=True),
    }


def _table(order: tuple[str, ...]) -> sa.Table:
    """``external_records`` with its columns in ``order``, its key and its indexes."""
    columns = _columns()
    return sa.Table(
        "external_records",
        sa.MetaData(),
        *(columns[name] for name in order),
        sa.PrimaryKeyConstraint("class_name", "id", name="pk_external_records"),
        sa.Index("ix_external_records_class_name_created_at_id", "class_name", "created_at", "id"),
        sa.Index(
            "ix_external_records_expires_at",
            "expires_at",
            sqlite_where=sa.text("expires_at IS NOT NULL"),
        ),
    )


_UPSERT = (
    "INSERT INTO external_record_counts (class_name, shard, records) VALUES ({name}, 0, {delta}) "
    "ON CONFLICT (class_name, shard) DO UPDATE SET records = records + excluded.records;"
)
_COUNT_TRIGGERS = [
    "CREATE TRIGGER external_records_count_insert AFTER INSERT ON external_records BEGIN "
    + _UPSERT.format(name="NEW.class_name", delta=1)
    + " END",
    "CREATE TRIGGER external_records_count_delete AFTER DELETE ON external_records BEGIN "
    + _UPSERT.format(name="OLD.class_name", delta=-1)
    + " END",
    "CREATE TRIGGER external_records_count_move AFTER UPDATE OF class_name ON external_records "
    "WHEN OLD.class_name IS NOT NEW.class_name BEGIN "
    + _UPSERT.format(name="OLD.class_name", delta=-1)
    + " "
    + _UPSERT.format(name="NEW.class_name", delta=1)
    + " END",
]


def _rebuild(order: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL stores a large jsonb out of line (TOAST) wherever the column is
    # A new table in ``order``, filled by INSERT ... SELECT by column name, then renamed. The
    # table is described here, not reflected, so that --sql (offline) works too. The copy goes
    # into a table without triggers, so the counts stay as they are.
    with op.batch_alter_table("external_records", recreate="always", copy_from=_table(order)):
        pass
    for statement in _COUNT_TRIGGERS:
        op.execute(statement)


def upgrade() -> None:
    _rebuild(_DATA_LAST)


def downgrade() -> None:
    # Rows written as BLOB (records above 1 MiB) stay BLOB: the library before this migration
    # read them as JSON text again only through CAST(data AS TEXT), so cast them back first.
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "UPDATE external_records SET data = CAST(data AS TEXT) WHERE typeof(data) = 'blob'"
        )
    _rebuild(_BEFORE)
