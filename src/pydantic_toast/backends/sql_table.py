"""The ``external_records`` table, mapped with SQLAlchemy's typed ORM.

Alembic owns this table (``alembic upgrade head``); the library never creates it at run time.
Add :data:`metadata` to your own Alembic ``target_metadata`` so that your ``alembic check``
knows the table (see :mod:`pydantic_toast.integrations.alembic`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "COUNTS_TABLE_NAME",
    "TABLE_NAME",
    "ExternalRecord",
    "ExternalRecordCount",
    "counts_table",
    "metadata",
    "records_table",
]

TABLE_NAME = "external_records"
COUNTS_TABLE_NAME = "external_record_counts"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp on every database: SQLite keeps no zone, so store UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = metadata


class ExternalRecord(Base):
    """One stored model instance: class name, id, schema version, fields, timestamps, revision."""

    __tablename__ = TABLE_NAME
    __table_args__ = (
        Index(None, "class_name", "created_at", "id"),
        # Only expiring rows are indexed (migration 0008), so permanent rows cost the index
        # nothing: a class's expired rows, which its count subtracts, and the purge's chunks.
        Index(
            None,
            "class_name",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL"),
            sqlite_where=text("expires_at IS NOT NULL"),
        ),
        {
            "comment": "Pydantic models stored by pydantic-toast: one row per model instance, "
            "its fields in data. Schema owned by Alembic (pydantic-toast migrations)."
        },
    )

    class_name: Mapped[str] = mapped_column(
        Text, primary_key=True, comment="The model's stored class name, as in references."
    )
    id: Mapped[uuid.UUID] = mapped_column(
        Uuid, primary_key=True, comment="The record id, as in references."
    )
    schema_version: Mapped[int] = mapped_column(
        Integer,
        nullable=False,
        server_default="1",
        comment="The model's schema_version when the row was last written.",
    )
    data: Mapped[dict[str, Any]] = mapped_column(
        JSON().with_variant(JSONB(), "postgresql"),
        nullable=False,
        comment="The model's fields, keyed by field name.",
    )
    data_exact: Mapped[str | None] = mapped_column(
        Text,
        nullable=True,
        comment="NULL for almost every row. When data holds a number that jsonb would "
        "rewrite (-0.0, or a float in exponent form such as 1e+16, which jsonb turns into the "
        "integer 10000000000000000), the exact JSON text of the fields; the library reads "
        "this column first, so an UPDATE of data by hand must set this column to NULL.",
    )
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime,
        nullable=False,
        server_default=func.now(),
        comment="When the record was first written; never changes.",
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime,
        nullable=False,
        server_default=func.now(),
        comment="When the record was last written.",
    )

    revision: Mapped[int] = mapped_column(
        Integer,
        nullable=False,
        server_default="1",
        comment="1 when the row is inserted, one more on every write by pydantic-toast. Writes "
        "check it (optimistic concurrency): a writer that changes a row by hand must increment "
        "it too, or concurrent pydantic-toast writers may overwrite the change.",
    )

    expires_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime,
        nullable=True,
        comment="NULL: the record never expires. Otherwise when it expires (its last write "
        "plus the model's ttl): from then on pydantic-toast treats the row as missing, and "
        "pydantic-toast purge deletes it.",
    )

    def __repr__(self) -> str:
        return f"<ExternalRecord {self.class_name} {self.id}>"


records_table: Table = ExternalRecord.__table__  # type: ignore[assignment]
"""The mapped table, for building Core statements."""


class ExternalRecordCount(Base):
    """Part of one class's record count, kept exact by triggers on ``external_records``.

    A class's count is the sum of its rows: PostgreSQL spreads concurrent writers of one
    class over up to 16 rows (``shard``), so they do not queue on one counter row; SQLite has
    one. Migration ``0004_record_counts`` creates the triggers (insert, delete, an update of
    ``class_name``, truncate) and counts the rows already stored.
    """

    __tablename__ = COUNTS_TABLE_NAME
    __table_args__ = {
        "comment": "How many external_records rows each class has, kept by triggers on "
        "external_records (pydantic-toast migration 0004): a class's count is the sum of its "
        "rows' records. Do not write it by hand."
    }

    class_name: Mapped[str] = mapped_column(
        Text, primary_key=True, comment="The stored class name."
    )
    shard: Mapped[int] = mapped_column(
        SmallInteger,
        primary_key=True,
        comment="Which of the class's counter rows (writers spread over up to 16).",
    )
    records: Mapped[int] = mapped_column(
        BigInteger,
        nullable=False,
        comment="This row's share of the class's count (a share may be negative).",
    )


counts_table: Table = ExternalRecordCount.__table__  # type: ignore[assignment]
"""The mapped counts table, for building Core statements."""
