"""No user field value in any log record, with every logger at DEBUG, on every backend.

The drivers log at DEBUG what they run: aiosqlite the statement with its parameters,
botocore the request and response bodies, SQLAlchemy's ``sqlalchemy.engine`` the parameters
when INFO is on. The library's engines hide parameters and it installs log filters that
redact the rest, so a program that turns DEBUG on for everything still logs no field value.
"""

from __future__ import annotations

import logging
import traceback
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict

SENTINEL = "S3ntinel-Log-Value-97"


def test_debug_logging_on_every_logger_shows_no_field_value(
    storage_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Save, load, page, count and delete with root at DEBUG: 0 records hold the value."""
    caplog.set_level(logging.DEBUG)
    for name in ("sqlalchemy.engine", "sqlalchemy.pool", "aiosqlite", "botocore", "asyncpg"):
        caplog.set_level(logging.DEBUG, logger=name)  # also what echo=True would turn on
    model = type(
        "Logged",
        (ExternalBaseModel,),
        {
            "__annotations__": {"secret_note": str},
            "model_config": ExternalConfigDict(
                storage=storage_url, external_name=f"Logged{uuid4().hex[:8]}"
            ),
        },
    )
    stored = model(secret_note=SENTINEL)
    reference = stored.model_dump()
    assert model.model_validate(reference).secret_note == SENTINEL  # type: ignore[attr-defined]
    assert pydantic_toast.count(model) == 1
    assert [item.secret_note for item in pydantic_toast.page(model).items] == [SENTINEL]  # type: ignore[attr-defined]
    updated = model.model_validate(reference)
    updated.secret_note = SENTINEL + "-2"  # type: ignore[attr-defined]
    updated.model_dump()
    pydantic_toast.delete(model, reference["id"])
    texts = []
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.msg), repr(record.args)]
        if record.exc_info:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
    hits = [(r.name, r.getMessage()[:200]) for r in caplog.records if SENTINEL in r.getMessage()]
    hits += [("raw", text[:200]) for text in texts if SENTINEL in text]
    names = {record.name for record in caplog.records}
    if not storage_url.startswith("memory"):  # memory:// has no driver that logs
        assert caplog.records  # the drivers did log: the check below is not vacuous
    if storage_url.startswith("sqlite"):
        assert "aiosqlite" in names
    if storage_url.startswith(("sqlite", "postgresql")):  # rows logged, redacted
        assert any(r.getMessage().startswith("Row ") for r in caplog.records), names
    assert not hits, hits[:5]
