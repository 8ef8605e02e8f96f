"""A tree whose models live in several stores: a refusal by one store writes nothing anywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageValidationError
from tests.integration.conftest import _delete_redis_prefix

pytestmark = [pytest.mark.postgresql, pytest.mark.redis]


@pytest.fixture
def redis_url(redis_base_url: str) -> Iterator[str]:
    """A Redis URL with a key prefix of this test's own, deleted afterwards."""
    prefix = f"toast_test_{uuid4().hex[:12]}"
    url = f"{redis_base_url}?prefix={prefix}"
    yield url
    pydantic_toast.close_storage()
    _delete_redis_prefix(url, prefix)


@pytest.mark.parametrize("text", ["nul \x00 inside", None], ids=["nul", "nan"])
async def test_a_value_postgresql_refuses_leaves_the_redis_parent_unwritten(
    postgres_database_url: str, redis_url: str, text: str | None
) -> None:
    """A child on PostgreSQL holding NUL (or NaN) under a parent on Redis: the save raises
    StorageValidationError ("nothing was written") and the parent is not stored. The Redis
    batch was written next to the refusal: the parent was stored, took itself for saved, and
    referenced a child that never was, so every load of it failed."""
    tag = uuid4().hex

    class Child(ExternalBaseModel):
        text: str
        score: float = 0.0
        model_config = ExternalConfigDict(storage=postgres_database_url, external_name=f"C{tag}")

    class Parent(ExternalBaseModel):
        name: str
        child: Child
        model_config = ExternalConfigDict(storage=redis_url, external_name=f"P{tag}")

    child = Child(text=text) if text is not None else Child(text="ok", score=float("nan"))
    parent = Parent(name="p", child=child)
    with pytest.raises(StorageValidationError, match="nothing was written"):
        await parent.asave()
    assert await pydantic_toast.acount(Parent) == 0
    assert parent.external_revision is None
    parent.child = Child(text="fixed")
    reference = await parent.asave()
    assert (await Parent.aload(reference)).child.text == "fixed"
    await pydantic_toast.aclose_storage()


async def test_owned_children_outside_the_transaction_wait_for_its_commit(
    postgres_database_url: str, redis_url: str
) -> None:
    """A parent on PostgreSQL deleted or updated inside transaction() keeps its owned children
    on Redis until the transaction commits: a rollback restores the parent with them, a
    commit deletes them. They were deleted at once, so a rolled-back delete or update left a
    stored parent referencing deleted children (every load of it failed)."""
    from typing import Annotated

    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.ext.asyncio import create_async_engine

    from pydantic_toast import Owned, RecordNotFoundError

    tag = uuid4().hex

    class Attachment(ExternalBaseModel):
        blob: str
        model_config = ExternalConfigDict(storage=redis_url, external_name=f"A{tag}")

    class Mail(ExternalBaseModel):
        subject: str
        attachments: Annotated[list[Attachment], Owned] = []
        model_config = ExternalConfigDict(storage=postgres_database_url, external_name=f"M{tag}")

    async def gone(id: object) -> bool:
        for _ in range(200):  # deleted by a task of its own once the commit is done
            try:
                await Attachment.aload(id)
            except RecordNotFoundError:
                return True
            await asyncio.sleep(0.01)
        return False

    async_url = postgres_database_url.replace("postgresql:", "postgresql+asyncpg:")
    engine = create_async_engine(async_url)

    async def failing_commit() -> None:
        async with engine.begin() as connection, pydantic_toast.transaction(connection):
            await pydantic_toast.adelete(Mail, reference)
            for statement in (
                "CREATE TEMP TABLE wanted (id int PRIMARY KEY)",
                "CREATE TEMP TABLE wants (id int REFERENCES wanted DEFERRABLE INITIALLY DEFERRED)",
                "INSERT INTO wants VALUES (1)",  # refused only by the COMMIT
            ):
                await connection.exec_driver_sql(statement)

    try:
        mail = Mail(subject="s", attachments=[Attachment(blob="first")])
        reference = await mail.asave()
        first = mail.attachments[0].external_id
        await _rolled_back(engine, lambda: pydantic_toast.adelete(Mail, reference))
        mail.attachments = [Attachment(blob="second")]
        await _rolled_back(engine, mail.asave)
        stored = await Mail.aload(reference)
        assert [a.blob for a in stored.attachments] == ["first"]
        # A savepoint rolled back undoes the delete in it: the commit of the rest keeps them.
        async with engine.begin() as connection, pydantic_toast.transaction(connection):
            savepoint = await connection.begin_nested()
            await pydantic_toast.adelete(Mail, reference)
            await savepoint.rollback()
        await asyncio.sleep(0.2)  # (a deletion task would have run by now)
        assert (await Attachment.aload(first)).blob == "first"
        assert [a.blob for a in (await Mail.aload(reference)).attachments] == ["first"]
        # A COMMIT that fails (a deferred constraint) keeps them too: SQLAlchemy tells of the
        # commit before sending it.
        with pytest.raises(IntegrityError):
            await failing_commit()
        await asyncio.sleep(0.2)
        assert (await Attachment.aload(first)).blob == "first"
        assert [a.blob for a in (await Mail.aload(reference)).attachments] == ["first"]
        async with engine.begin() as connection, pydantic_toast.transaction(connection):
            stored.attachments = [Attachment(blob="third")]
            await stored.asave()
            assert (await Attachment.aload(first)).blob == "first"  # until the commit
        assert await gone(first)
        third = stored.attachments[0].external_id
        async with engine.begin() as connection, pydantic_toast.transaction(connection):
            await pydantic_toast.adelete(Mail, reference)
        assert await gone(third)
        # Closing the storage right after the commit waits for that work (else cancelled).
        many = Mail(subject="m", attachments=[Attachment(blob=str(n)) for n in range(50)])
        await many.asave()
        async with engine.begin() as connection, pydantic_toast.transaction(connection):
            await pydantic_toast.adelete(Mail, many)
        await pydantic_toast.aclose_storage()
        for attachment in many.attachments:
            with pytest.raises(RecordNotFoundError):
                await Attachment.aload(attachment.external_id)
    finally:
        await engine.dispose()
        await pydantic_toast.aclose_storage()


async def test_offloaded_payloads_outside_the_transaction_wait_for_its_commit(
    postgres_database_url: str, redis_url: str
) -> None:
    """A record on PostgreSQL whose payload is offloaded to Redis, deleted or updated inside a
    transaction() that rolls back, still loads; a committed update deletes the old payload.
    The payload was deleted at once, so the restored record pointed at a missing payload
    (StoredDataError on every load)."""
    from datetime import timedelta

    from sqlalchemy.ext.asyncio import create_async_engine

    class Scan(ExternalBaseModel):
        pixels: str
        model_config = ExternalConfigDict(
            storage=postgres_database_url,
            offload=redis_url,
            offload_above=100,
            external_name=f"S{uuid4().hex}",
        )

    engine = create_async_engine(
        postgres_database_url.replace("postgresql:", "postgresql+asyncpg:")
    )

    try:
        scan = Scan(pixels="x" * 1000)
        reference = await scan.asave()
        await _rolled_back(engine, lambda: pydantic_toast.adelete(Scan, reference))
        assert (await Scan.aload(reference)).pixels == "x" * 1000
        scan.pixels = "y" * 1000
        await _rolled_back(engine, scan.asave)
        stored = await Scan.aload(reference)
        assert stored.pixels == "x" * 1000
        async with engine.begin() as connection, pydantic_toast.transaction(connection):
            stored.pixels = "z" * 1000
            await stored.asave()
        assert (await Scan.aload(reference)).pixels == "z" * 1000
        # The old payload goes once the commit is done; the one uploaded for the rolled-back
        # update stays, an orphan (uploads are not undone).
        for _ in range(200):
            report = await pydantic_toast.afind_orphaned_payloads(Scan, min_age=timedelta(0))
            if report.checked == 2:
                break
            await asyncio.sleep(0.01)
        assert (report.checked, len(report.orphans)) == (2, 1)
    finally:
        await engine.dispose()
        await pydantic_toast.aclose_storage()


class _Abort(Exception):
    """Raised inside a transaction() block to roll it back."""


async def _rolled_back(engine: Any, work: Any) -> None:
    """Run ``work()`` inside ``transaction()`` on ``engine``, then roll the transaction back."""

    async def aborted() -> None:
        async with engine.begin() as connection, pydantic_toast.transaction(connection):
            await work()
            raise _Abort

    with pytest.raises(_Abort):
        await aborted()


async def test_a_failed_deletion_after_the_commit_is_logged_with_what_it_left(
    postgres_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The owned children a committed transaction let go of, on a Redis that went away before
    the commit: their deletion fails in the task that runs after the commit, and the warning
    says which kind of records were left behind (they are found later as orphans)."""
    from typing import Annotated

    from sqlalchemy.ext.asyncio import create_async_engine

    from pydantic_toast import Owned
    from tests import servers

    tag = uuid4().hex
    redis = servers.TempRedis()
    try:

        class Attachment(ExternalBaseModel):
            blob: str
            model_config = ExternalConfigDict(
                storage=f"redis://127.0.0.1:{redis.port}/0?prefix=t{tag}",
                external_name=f"A{tag}",
            )

        class Mail(ExternalBaseModel):
            subject: str
            attachments: Annotated[list[Attachment], Owned] = []
            model_config = ExternalConfigDict(
                storage=postgres_database_url, external_name=f"M{tag}"
            )

        engine = create_async_engine(
            postgres_database_url.replace("postgresql:", "postgresql+asyncpg:")
        )
        try:
            mail = Mail(subject="s", attachments=[Attachment(blob="first")])
            await mail.asave()
            caplog.set_level("WARNING", logger="pydantic_toast")
            async with engine.begin() as connection, pydantic_toast.transaction(connection):
                await pydantic_toast.adelete(Mail, mail)
                redis.stop()
            await pydantic_toast.aclose_storage()  # waits for the work after the commit
        finally:
            await engine.dispose()
    finally:
        redis.stop()
        await pydantic_toast.aclose_storage()
    warnings = [
        r.getMessage() for r in caplog.records if "after a transaction's commit" in r.getMessage()
    ]
    assert len(warnings) == 1, caplog.text
    assert "owned records left" in warnings[0]
    assert f"A{tag} {mail.attachments[0].external_id}" in warnings[0]  # the note: which
