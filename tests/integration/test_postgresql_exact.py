"""PostgreSQL: the exact JSON text beside the jsonb, its migration, and refusals before sending."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageValidationError
from pydantic_toast._records import StoredRecord
from pydantic_toast.backends.jsonb import exact_text

pytestmark = pytest.mark.postgresql
ROOT = Path(__file__).resolve().parents[2]


def model(url: str, **annotations: Any) -> type[ExternalBaseModel]:
    return type(
        "Exact",
        (ExternalBaseModel,),
        {
            "__annotations__": annotations,
            "model_config": ExternalConfigDict(storage=url, external_name=f"Exact{uuid4().hex}"),
        },
    )


def fetch(url: str, query: str, *args: object) -> list[Any]:
    import asyncpg

    async def run() -> list[Any]:
        connection = await asyncpg.connect(url)
        try:
            return list(await connection.fetch(query, *args))
        finally:
            await connection.close()

    return asyncio.run(run())


def alembic(*args: str, url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _record(data: bytes) -> StoredRecord:
    now = datetime.now(UTC)
    return StoredRecord("c", uuid4(), data, 1, now, now)


def test_exact_text_is_kept_only_where_jsonb_would_rewrite_a_number() -> None:
    """The byte scan flags -0.0 and exponent-form numbers, not dates, UUIDs or plain numbers."""
    for flagged in (b'{"a":-0.0}', b'{"a":[1,1e+16]}', b'{"a":1.5e-7}', b'{"a":[-0.0]}'):
        assert exact_text(_record(flagged)) == flagged.decode()
    for plain in (
        b'{"a":0.0,"b":-0.5,"c":12,"d":"2020-01-05T10:00:00-05:00"}',
        b'{"id":"1e4f0c2a-0e11-4e6b-9e1e-000000000000","n":-1.25}',
    ):
        assert exact_text(_record(plain)) is None


def test_dba_reads_jsonb_and_the_library_reads_the_exact_text(postgres_database_url: str) -> None:
    """data stays jsonb for SQL; data_exact is NULL except for rows jsonb would change."""
    cls = model(postgres_database_url, value=int | float, note=str)
    plain = cls(value=2.5, note="2020-01-01")
    special = cls(value=1e16, note="x")
    for instance in (plain, special):
        instance.model_dump()
    rows = {
        row["id"]: row
        for row in fetch(
            postgres_database_url,
            "SELECT id, data->'value' AS value, jsonb_typeof(data->'value') AS kind, data_exact "
            "FROM external_records WHERE id = ANY($1::uuid[])",
            [plain.external_id, special.external_id],
        )
    }
    assert rows[plain.external_id]["data_exact"] is None
    assert rows[special.external_id]["kind"] == "number"  # queryable as usual
    assert rows[special.external_id]["value"] == "10000000000000000"  # what jsonb keeps
    assert '"value":1e+16' in rows[special.external_id]["data_exact"]
    loaded = asyncio.run(cls.aload(special.external_id))
    assert type(loaded.value) is float  # type: ignore[attr-defined]
    special.value = 3  # type: ignore[attr-defined]
    special.model_dump()  # an update that no longer needs the exact text clears it
    (row,) = fetch(
        postgres_database_url,
        "SELECT data_exact FROM external_records WHERE id = $1",
        special.external_id,
    )
    assert row["data_exact"] is None


def test_nan_and_nul_are_refused_before_sending_naming_the_field(
    postgres_database_url: str,
) -> None:
    """NaN, infinities and NUL never reach the server: the error names the field and the id."""
    cls = model(postgres_database_url, price=float, extra=Any)
    for values, field in (
        ({"price": math.nan, "extra": None}, "price"),
        ({"price": 1.0, "extra": {"list": [1, -math.inf]}}, "extra.<key>.1"),  # a key: data
        ({"price": 1.0, "extra": {"text": "a\x00b"}}, "extra.<key>"),
        ({"price": 1.0, "extra": {"ke\x00y": 1}}, "extra"),
    ):
        instance = cls(**values)
        with pytest.raises(StorageValidationError, match="nothing was written") as info:
            instance.model_dump()
        assert info.value.field == field
        assert info.value.id == instance.external_id
        assert "\x00" not in str(info.value)
    ok = cls(price=1.0, extra="NaN and :Infinity and \\u0000 as text")
    assert cls.model_validate(ok.model_dump()).extra == ok.extra  # type: ignore[attr-defined]


def test_migration_0002_upgrades_and_downgrades_with_data_in_place(empty_database: str) -> None:
    """Rows written before 0002 load after it; 0002's exact rows survive a downgrade as jsonb."""
    alembic("upgrade", "0001_external_records", url=empty_database)
    old_id = uuid4()
    fetch(
        empty_database,
        "INSERT INTO external_records (class_name, id, data) VALUES ($1, $2, $3::jsonb)",
        "Before",
        old_id,
        '{"value": 1.5}',
    )
    alembic("upgrade", "head", url=empty_database)
    before = type(
        "Before",
        (ExternalBaseModel,),
        {
            "__annotations__": {"value": float},
            "model_config": ExternalConfigDict(storage=empty_database, external_name="Before"),
        },
    )
    assert before.model_validate({"class_name": "Before", "id": str(old_id)}).value == 1.5  # type: ignore[attr-defined]
    after = model(empty_database, value=int | float)
    reference = after(value=-0.0).model_dump()
    assert str(after.model_validate(reference).value) == "-0.0"  # type: ignore[attr-defined]
    pydantic_toast.close_storage()
    alembic("downgrade", "0001_external_records", url=empty_database)
    rows = fetch(empty_database, "SELECT id, data::text AS data FROM external_records ORDER BY 1")
    assert {row["id"] for row in rows} == {old_id, UUID(reference["id"])}
    columns = fetch(
        empty_database,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'external_records'",
    )
    assert "data_exact" not in {row["column_name"] for row in columns}
