"""Models served through the application's own engine (``use_engine``) write what they say.

The application's engine is not in autocommit mode (SQLAlchemy's default): a statement the
backend ran through it began a transaction, rolled back when the connection went back to the
pool. Every SQLite save and a PostgreSQL batch delete (owned children) were lost that way,
without an error.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from uuid import uuid4

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    Owned,
    RecordNotFoundError,
    StorageUsageError,
)


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
    ]
)
def storage_and_engine_urls(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """A storage URL of this test's own, and the SQLAlchemy URL of the same database."""
    if request.param == "sqlite":
        path = tmp_path / "toast.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}", f"sqlite+aiosqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_database_url")
        # A spelling of this test's own: an engine handed to the default storage stays there.
        yield (
            f"{url}?application_name=t{uuid4().hex[:12]}",
            url.replace("postgresql://", "postgresql+asyncpg://"),
        )
    pydantic_toast.close_storage()


def models_on(url: str) -> tuple[Any, Any]:
    """A parent class owning a list of children, both stored under names of this test's own."""
    tag = uuid4().hex

    class Child(ExternalBaseModel):
        label: str
        model_config = ExternalConfigDict(storage=url, external_name=f"Child{tag}")

    class Parent(ExternalBaseModel):
        name: str
        children: Annotated[list[Child], Owned] = []
        model_config = ExternalConfigDict(storage=url, external_name=f"Parent{tag}")

    return Parent, Child


async def test_saves_and_owned_deletes_through_the_applications_engine_are_kept(
    storage_and_engine_urls: tuple[str, str],
) -> None:
    """A save is stored, and owned children are deleted, seen from another storage."""
    url, engine_url = storage_and_engine_urls
    parent_class, child_class = models_on(url)
    engine = create_async_engine(engine_url)
    try:
        async with pydantic_toast.Storage() as storage:
            storage.use_engine(url, engine)
            parent = parent_class(name="p", children=[child_class(label="first")])
            reference = await parent.asave()
            first = parent.children[0].external_id
            parent.children = [child_class(label="second")]
            await parent.asave()
            second = parent.children[0].external_id
            parent.name = "renamed"
            await parent.asave()  # one record: a single statement
        async with pydantic_toast.Storage():  # the library's own engine
            assert (await parent_class.aload(reference)).name == "renamed"
            assert (await child_class.aload(second)).label == "second"
            with pytest.raises(RecordNotFoundError):
                await child_class.aload(first)  # replaced: deleted with the update
        async with pydantic_toast.Storage() as storage:
            storage.use_engine(url, engine)
            await pydantic_toast.adelete(parent_class, reference)
        async with pydantic_toast.Storage():
            assert await pydantic_toast.acount(child_class) == 0
    finally:
        await engine.dispose()


async def test_a_rolled_back_move_gives_the_owned_child_back_to_its_old_parent(
    storage_and_engine_urls: tuple[str, str],
) -> None:
    """A child moved between parents dumped together in a transaction() that rolls back
    belongs to its old parent again: the new parent saved alone with it is refused (the old
    parent's stored record still references it), and the move dumped again is kept."""
    url, engine_url = storage_and_engine_urls
    parent_class, child_class = models_on(url)
    one = parent_class(name="one", children=[child_class(label="a")])
    two = parent_class(name="two")
    await pydantic_toast.adump([one, two])
    moved = one.children[0]
    one.children, two.children = [], [moved]
    engine = create_async_engine(engine_url)

    async def move_then_fail() -> None:
        async with engine.begin() as connection:
            async with pydantic_toast.transaction(connection):
                await pydantic_toast.adump([one, two])
            raise RuntimeError("abort")

    try:
        with pytest.raises(RuntimeError, match="abort"):
            await move_then_fail()
    finally:
        await engine.dispose()
    with pytest.raises(StorageUsageError, match="whose stored record still references it"):
        await two.asave()
    await pydantic_toast.adump([one, two])
    assert [c.label for c in (await parent_class.aload(two.external_id)).children] == ["a"]
    assert (await parent_class.aload(one.external_id)).children == []


async def test_a_child_on_another_store_written_again_in_the_transaction_is_not_deleted(
    storage_and_engine_urls: tuple[str, str],
) -> None:
    """Parents in the transaction, owned children on memory:// (outside it, so a dropped
    child's delete waits for the COMMIT): a child the old parent dropped, then written again
    in the same transaction (edited and saved under another parent, or forced), is kept; the
    COMMIT deleted it and the new parent referenced a deleted record. A child dropped and not
    written again is still deleted."""
    url, engine_url = storage_and_engine_urls
    tag = uuid4().hex

    class Child(ExternalBaseModel):
        label: str
        model_config = ExternalConfigDict(storage=f"memory://{tag}", external_name=f"C{tag}")

    class Parent(ExternalBaseModel):
        name: str
        children: Annotated[list[Child], Owned] = []
        model_config = ExternalConfigDict(storage=url, external_name=f"P{tag}")

    one = Parent(name="one", children=[Child(label="a"), Child(label="b"), Child(label="c")])
    two = Parent(name="two")
    await pydantic_toast.adump([one, two])
    edited, forced, dropped = one.children
    engine = create_async_engine(engine_url)
    try:
        async with engine.begin() as connection, pydantic_toast.transaction(connection):
            one.children = []
            await one.asave()  # the three deletes wait for the COMMIT
            edited.label = "edited"  # written by the next dump
            await forced.asave(force=True)
            two.children = [edited, forced]
            await two.asave()
    finally:
        await engine.dispose()
    for _ in range(500):  # the deletes run in a task of their own once the commit is done
        try:
            await Child.aload(dropped.external_id)
        except RecordNotFoundError:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the dropped child was not deleted after the commit")
    loaded = await Parent.aload(two.external_id)
    assert [child.label for child in loaded.children] == ["edited", "b"]


def test_use_engine_with_storage_lifespan_says_where_to_call_it(
    storage_and_engine_urls: tuple[str, str],
) -> None:
    """Inside the lifespan given to storage_lifespan() the URL is connected already: the error
    says to call use_engine() at import time or around storage_lifespan() (it said "in the
    lifespan", which is where it failed), and the latter works."""
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pydantic_toast.fastapi import storage_lifespan

    url, engine_url = storage_and_engine_urls
    parent_class, _ = models_on(url)

    @asynccontextmanager
    async def inner(app: FastAPI) -> AsyncIterator[None]:
        pydantic_toast.use_engine(url, create_async_engine(engine_url))
        yield

    with (
        pytest.raises(StorageUsageError, match=r"at import time .*storage_lifespan\(\) after"),
        TestClient(FastAPI(lifespan=storage_lifespan(parent_class, lifespan=inner))),
    ):
        pass
    pydantic_toast.close_storage()

    engine = create_async_engine(engine_url)

    @asynccontextmanager
    async def outer(app: FastAPI) -> AsyncIterator[None]:
        pydantic_toast.use_engine(url, engine)
        async with storage_lifespan(parent_class)(app):
            yield
        await engine.dispose()

    with TestClient(FastAPI(lifespan=outer)) as client:
        reference = client.portal.call(parent_class(name="via the app's engine").asave)
        assert engine.sync_engine.pool.checkedin() >= 1  # type: ignore[attr-defined]
        loaded = client.portal.call(parent_class.aload, reference)
        assert loaded.name == "via the app's engine"
