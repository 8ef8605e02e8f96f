"""Create external_records.

Revision ID: 0001_external_records
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from pydantic_toast.backends.sql_table import UTCDateTime

revision: str = "0001_external_records"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "external_records",
        sa.Column(
            "class_name",
            sa.Text(),
            nullable=False,
            comment="The model's stored class name, as in references.",
        ),
        sa.Column("id", sa.Uuid(), nullable=False, comment="The record id, as in references."),
        sa.Column(
            "schema_version",
            sa.Integer(),
            server_default="1",
            nullable=False,
            comment="The model's schema_version when the row was last written.",
        ),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
            comment="The model's fields, keyed by field name.",
        ),
        sa.Column(
            "created_at",
            UTCDateTime(),
            server_default=sa.func.now(),
            nullable=False,
            comment="When the record was first written; never changes.",
        ),
        sa.Column(
            "updated_at",
            UTCDateTime(),
            server_default=sa.func.now(),
            nullable=False,
            comment="When the record was last written.",
        ),
        sa.PrimaryKeyConstraint("class_name", "id", name="pk_external_records"),
        comment="Pydantic models stored by pydantic-toast: one row per model instance, its "
        "fields in data. Schema owned by Alembic (pydantic-toast migrations).",
    )
    op.create_index(
        "ix_external_records_class_name_created_at_id",
        "external_records",
        ["class_name", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_external_records_class_name_created_at_id", table_name="external_records")
    op.drop_table("external_records")
