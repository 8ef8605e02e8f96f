"""Large records reach PostgreSQL in pieces: streamed by ``COPY`` into a temporary table.

A record's JSON sent as a statement parameter exists three more times in the client while it
is sent: asyncpg encodes the parameters into one buffer, copies that into the Bind message,
and asyncio's transport copies the part the socket did not take at once. For a record of
100 MB that is 400 MB on top of the model's own JSON. Records above :data:`STAGE_ABOVE` bytes
are therefore streamed first, in the statement's transaction, by ``COPY ... FROM STDIN`` in
binary format into a temporary table (pieces of :data:`PIECE` bytes, sent as the socket takes
them); the batch write statement then takes their data from that table. The write itself is
unchanged: one statement, every expected revision checked, all or nothing; the table is
dropped after it (and at the end of the transaction in any case: ``ON COMMIT DROP``), so a
failure half-way leaves nothing behind and writes nothing.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pydantic_toast._records import StoredRecord

__all__ = ["PIECE", "STAGE_ABOVE", "TABLE", "drop", "is_large", "stage", "staged_write"]

# Records of more JSON than this are staged. Below, the extra round trips (create, copy,
# drop) cost more than the copies they save.
STAGE_ABOVE = 1 << 20
# Bytes per COPY data message.
PIECE = 1 << 20
# One name for every staging table: a temporary table is private to its session and dropped
# before its transaction ends, and a fixed name keeps the write statement's text fixed (asyncpg
# prepares and caches a statement per text: a name per save filled that cache).
TABLE = "toast_stage"

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # no flags, no extension
_TRAILER = struct.pack("!h", -1)


def is_large(record: StoredRecord) -> bool:
    """Whether ``record`` is written through a staging table."""
    return len(record.data) > STAGE_ABOVE


async def stage(driver: Any, records: Sequence[StoredRecord]) -> str:
    """Create the temporary table :data:`TABLE`, COPY the large records' JSON into it; return
    its name.

    Its rows are ``(n, data)``, ``n`` the record's 1-based position in ``records``. Run it
    inside a transaction on ``driver`` (an asyncpg connection).
    """
    name = TABLE
    # EXTERNAL: the server does not try to compress the staged text (its jsonb column will).
    await driver.execute(
        f"CREATE TEMPORARY TABLE {name} (n integer, data text) ON COMMIT DROP; "
        f"ALTER TABLE {name} ALTER COLUMN data SET STORAGE EXTERNAL"
    )
    await driver.copy_to_table(
        name, source=_binary_copy(records), columns=["n", "data"], format="binary"
    )
    return name


async def drop(driver: Any, name: str) -> None:
    """Drop the staging table ``name`` (before the transaction ends: its data goes at once)."""
    await driver.execute(f"DROP TABLE {name}")


async def _binary_copy(records: Sequence[StoredRecord]) -> AsyncIterator[bytes | memoryview]:
    """COPY's binary format: each large record a row ``(n, data)``, data in pieces."""
    yield _SIGNATURE
    for n, record in enumerate(records, 1):
        if not is_large(record):
            continue
        data = record.data
        yield struct.pack("!hiii", 2, 4, n, len(data))
        view = memoryview(data)  # slices share the record's bytes
        for start in range(0, len(data), PIECE):
            yield view[start : start + PIECE]
    yield _TRAILER


def staged_write(write_many: str, name: str) -> str:
    """The batch write statement taking large records' data (and exact text) from ``name``.

    The statement gets a tenth array parameter: whether each record's exact text (for
    ``data_exact``) is its staged data. A staged record's ``data`` parameter is NULL.
    """
    plain = "  SELECT * FROM unnest("
    if write_many.count(plain) != 1:
        raise RuntimeError("the batch write statement changed shape: update staged_write")
    staged = (
        "  SELECT r.class_name, r.id, r.schema_version, coalesce(r.data, s.data) AS data,\n"
        "         CASE WHEN r.exact_staged THEN s.data ELSE r.data_exact END AS data_exact,\n"
        "         r.created_at, r.updated_at, r.expected, r.expires_at\n"
        "  FROM unnest("
    )
    before, _, after = write_many.partition(plain)
    arrays, _, rest = after.partition(")\n    AS r(")
    names, _, tail = rest.partition(")\n")
    return (
        f"{before}{staged}{arrays}, $10::boolean[]) WITH ORDINALITY\n"
        f"    AS r({names}, exact_staged, n)\n"
        f"  LEFT JOIN {name} AS s ON s.n = r.n\n{tail}"
    )
