"""Add external_records.data_exact: the exact JSON text where jsonb would rewrite a number.

Revision ID: 0002_exact_data
Revises: 0001_external_records
Create Date: 2026-12-02

Existing rows keep NULL (their jsonb data is read as before). Downgrading drops the column:
rows that needed it keep their jsonb data, with -0.0 read as 0.0 and exponent-form floats such
as 1e+16 read as integers again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_exact_data"
down_revision: str | None = "0001_external_records"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMENT = (
    "NULL for almost every row. When data holds a number that jsonb would rewrite (-0.0, or a "
    "float in exponent form such as 1e+16, which jsonb turns into the integer "
    "10000000000000000), the exact JSON text of the fields; the library reads this column "
    "first, so an UPDATE of data by hand must set this column to NULL."
)


def upgrade() -> None:
    # A nullable column without a default: no table rewrite, instant on large tables.
    op.add_column(
        "external_records",
        sa.Column("data_exact", sa.Text(), nullable=True, comment=COMMENT),
    )


def downgrade() -> None:
    op.drop_column("external_records", "data_exact")
