"""A tree whose models live in several stores: a refusal by one store writes nothing anywhere."""

from __future__ import annotations

from collections.abc import Iterator
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
