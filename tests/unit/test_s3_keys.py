"""The s3:// key layout: record keys as documented, index keys in newest-first order."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageConfigurationError
from pydantic_toast.backends.s3 import S3Backend


def test_record_key_is_prefix_class_uuid_json() -> None:
    """A record lives at {prefix}/{class_name}/{uuid}.json, or without a prefix at the root."""
    id = uuid4()
    assert S3Backend("s3://bucket/a/b").key("Order", id) == f"a/b/Order/{id}.json"
    assert S3Backend("s3://bucket").key("Order", id) == f"Order/{id}.json"


def test_index_key_order_is_newest_first_then_id_descending() -> None:
    """Ascending index keys are the records by created_at, then id, both descending."""
    backend = S3Backend("s3://bucket/p")
    base = datetime(2024, 5, 1, tzinfo=UTC)
    rng = random.Random(7)
    records = [
        (
            base + timedelta(microseconds=rng.randrange(0, 5) * rng.choice([1, 10**6, 10**12])),
            UUID(int=rng.getrandbits(128)),
        )
        for _ in range(500)
    ]
    by_key = sorted(records, key=lambda r: backend.index_key("Order", r[0], r[1]))
    assert by_key == sorted(records, reverse=True)


def test_index_key_gives_the_id_back() -> None:
    """The id is read back from an index key (listing needs no other request)."""
    from pydantic_toast.backends.s3 import _uninverted

    id = uuid4()
    key = S3Backend("s3://bucket/p").index_key("Order", datetime.now(UTC), id)
    assert key.startswith("p/.index/Order/")
    assert _uninverted(key.rpartition("-")[2]) == id


@pytest.mark.parametrize("name", ["Box/", "a//b", "/Box", "p/./q", "p/..", "x\\y", ".index/Box"])
def test_names_whose_keys_read_as_other_paths_are_refused_on_s3_only(name: str) -> None:
    """An external_name with an empty, '.' or '..' part between slashes, a backslash or a first
    part '.index' is refused at class definition on S3 (SeaweedFS loaded, listed and counted
    the records of 'Box/' as those of 'Box'), naming the fix; other backends take it."""
    with pytest.raises(StorageConfigurationError, match="set external_name") as info:
        _model("s3://bucket/p?endpoint_url=http://127.0.0.1:1", name)
    assert repr(name) in str(info.value)
    assert _model("memory://", name).__toast_settings__.external_name == name  # type: ignore[attr-defined]


def test_names_that_read_as_one_path_are_taken_on_s3() -> None:
    """Names with slashes between non-empty parts, and dots inside parts, stay allowed."""
    for name in ("Box", "a/b", "shop.Order", "a/.hidden", "v1.index/Box"):
        _model("s3://bucket/p?endpoint_url=http://127.0.0.1:1", name)


def _model(url: str, name: str) -> type[ExternalBaseModel]:
    return type(
        "Box",
        (ExternalBaseModel,),
        {
            "__annotations__": {"x": int},
            "model_config": ExternalConfigDict(storage=url, external_name=name),
        },
    )
