"""PostgreSQL: pin the count trigger functions' search_path to the table's schema.

The functions of ``0004_record_counts`` name ``external_record_counts`` without a schema, so a
trigger resolved it through the search_path of whoever wrote to ``external_records``. With
the tables in a schema of their own (a role's ``search_path``, one schema per service), a
DBA's ``DELETE FROM shop.external_records ...`` under the default search_path failed
("relation external_record_counts does not exist"), or, with another install's table in
``public``, changed that install's counts. Each function now runs with ``search_path`` set to
the schema it was created in (the migration's ``current_schema()``). SQLite: nothing.

Revision ID: 0007_count_functions_schema
Revises: 0006_sqlite_data_last
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007_count_functions_schema"
down_revision: str | None = "0006_sqlite_data_last"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Copied, not imported: a migration must keep meaning what it meant when it was written.
_FUNCTIONS = (
    "external_records_count_added",
    "external_records_count_removed",
    "external_records_count_moved",
    "external_records_count_truncated",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Dynamic SQL: the schema is the one the functions were created in, known only on the
    # server (and so in --sql output too).
    alters = "\n".join(
        f"  EXECUTE format('ALTER FUNCTION %I.{name}() SET search_path = %I', "
        "current_schema(), current_schema());"
        for name in _FUNCTIONS
    )
    op.execute(f"DO $$\nBEGIN\n{alters}\nEND\n$$")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in _FUNCTIONS:
        op.execute(f"ALTER FUNCTION {name}() RESET search_path")
