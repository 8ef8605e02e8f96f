"""Add external_records.expires_at (ttl on SQL stores) and a partial index for the purge.

Revision ID: 0005_record_expiry
Revises: 0004_record_counts
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pydantic_toast.backends.sql_table import UTCDateTime

revision: str = "0005_record_expiry"
down_revision: str | None = "0004_record_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Copied, not imported: a migration must keep meaning what it meant when it was written.
_COMMENT = (
    "NULL: the record never expires. Otherwise when it expires (its last write plus the "
    "model's ttl): from then on pydantic-toast treats the row as missing, and "
    "pydantic-toast purge deletes it."
)
_INDEX = "ix_external_records_expires_at"
_ONLY_EXPIRING = sa.text("expires_at IS NOT NULL")


def upgrade() -> None:
    # Nullable without a default: PostgreSQL adds the column without rewriting the table, and
    # every existing row stays permanent. Plain ALTER TABLE on SQLite too: a batch "move and
    # copy" would drop the table's count triggers (0004_record_counts).
    op.add_column(
        "external_records", sa.Column("expires_at", UTCDateTime(), nullable=True, comment=_COMMENT)
    )
    op.create_index(
        _INDEX,
        "external_records",
        ["expires_at"],
        postgresql_where=_ONLY_EXPIRING,
        sqlite_where=_ONLY_EXPIRING,
    )


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="external_records")
    op.drop_column("external_records", "expires_at")  # SQLite 3.35+: no table copy
