"""Add external_records.revision (optimistic concurrency); existing rows get revision 1.

Revision ID: 0003_record_revisions
Revises: 0002_exact_data
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_record_revisions"
down_revision: str | None = "0002_exact_data"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COMMENT = (
    "1 when the row is inserted, one more on every write by pydantic-toast. Writes check it "
    "(optimistic concurrency): a writer that changes a row by hand must increment it too, or "
    "concurrent pydantic-toast writers may overwrite the change."
)


def upgrade() -> None:
    # A constant server default: PostgreSQL 11+ adds the column without rewriting the table.
    with op.batch_alter_table("external_records") as batch:
        batch.add_column(
            sa.Column(
                "revision", sa.Integer(), server_default="1", nullable=False, comment=_COMMENT
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("external_records") as batch:
        batch.drop_column("revision")
