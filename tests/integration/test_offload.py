"""TOAST-style tiering: large payloads in S3 (SeaweedFS), the record keeping a pointer."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any
from uuid import UUID

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StoredDataError, StoredRecord
from pydantic_toast._offload import payload_class
from pydantic_toast._url import StorageURL

BIG = "large payloads live out of line. " * 12_000  # ~400 KB of JSON


def report_model(url: str, offload: str, **config: Any) -> type[ExternalBaseModel]:
    tag = hashlib.sha1(url.encode()).hexdigest()[:8]

    class Report(ExternalBaseModel):
        title: str
        body: str = ""
        model_config = ExternalConfigDict(
            storage=url,
            external_name=f"Report_{tag}",
            offload=offload,
            **config,  # type: ignore[typeddict-item]
        )

    return Report


async def _on(url: str, job: Any) -> Any:
    backend = await pydantic_toast.current_storage().connected(StorageURL.parse(url))
    return await job(backend)


async def raw(url: str, class_name: str, id: Any) -> StoredRecord | None:
    async def read(backend: Any) -> StoredRecord | None:
        (record,) = await backend.load_records([(class_name, UUID(str(id)))])
        return record  # type: ignore[no-any-return]

    return await _on(url, read)  # type: ignore[no-any-return]


async def payloads(offload: str, class_name: str) -> int:
    async def count(backend: Any) -> int:
        return await backend.count(payload_class(class_name))  # type: ignore[no-any-return]

    return await _on(offload, count)  # type: ignore[no-any-return]


@pytest.fixture
def offload_url(s3_url: str) -> str:
    return s3_url


async def test_large_records_go_out_of_line_and_come_back(
    storage_url: str, offload_url: str
) -> None:
    """The record holds a pointer (size, SHA-256); the payload is in S3; small ones stay."""
    report = report_model(storage_url, offload_url)
    big, small = report(title="big", body=BIG), report(title="small")
    big_ref, small_ref = await big.asave(), await small.asave()
    name = big_ref["class_name"]

    row = await raw(storage_url, name, big_ref["id"])
    assert row is not None
    envelope = json.loads(row.data)["$toast"]
    assert envelope["offloaded"]["class_name"] == payload_class(name)
    assert envelope["size"] > len(BIG)
    assert len(row.data) < 400  # the DBA sees a small marker row
    small_row = await raw(storage_url, name, small_ref["id"])
    assert small_row is not None
    assert json.loads(small_row.data) == {"title": "small", "body": ""}
    assert await payloads(offload_url, name) == 1

    assert await report.aload(big_ref) == big
    assert await report.aload(small_ref) == small
    page = await pydantic_toast.apage(report, limit=10)
    assert sorted(item.title for item in page.items) == ["big", "small"]  # type: ignore[attr-defined]
    await pydantic_toast.aclose_storage()


async def test_updates_replace_and_deletes_remove_the_payload(
    storage_url: str, offload_url: str
) -> None:
    """An update leaves one payload (the old one is deleted); a delete removes both."""
    report = report_model(storage_url, offload_url)
    item = report(title="v1", body=BIG)
    reference = await item.asave()
    name = reference["class_name"]
    item.body = BIG + "v2"  # type: ignore[attr-defined]
    await item.asave()
    assert await payloads(offload_url, name) == 1
    assert (await report.aload(reference)).body == BIG + "v2"  # type: ignore[attr-defined]
    item.body = "now small"  # type: ignore[attr-defined]
    await item.asave()
    assert await payloads(offload_url, name) == 0  # back inline: the payload went
    item.body = BIG  # type: ignore[attr-defined]
    await item.asave()
    assert await payloads(offload_url, name) == 1

    await pydantic_toast.adelete(report, reference)
    assert await raw(storage_url, name, reference["id"]) is None
    assert await payloads(offload_url, name) == 0
    await pydantic_toast.aclose_storage()


async def test_offload_after_compression(storage_url: str, offload_url: str) -> None:
    """Codecs run first: the offloaded payload is the compressed envelope."""
    report = report_model(storage_url, offload_url, compression="zstd", offload_above=1_000)
    saved = report(title="t", body="".join(f"{n:08d}" for n in range(40_000)))
    reference = await saved.asave()
    row = await raw(storage_url, reference["class_name"], reference["id"])
    assert row is not None
    pointer = json.loads(row.data)["$toast"]["offloaded"]
    payload = await raw(offload_url, pointer["class_name"], pointer["id"])
    assert payload is not None
    assert json.loads(payload.data)["$toast"]["codecs"] == ["zstd"]
    assert await report.aload(reference) == saved
    await pydantic_toast.aclose_storage()


async def test_tampered_or_missing_payload_is_a_stored_data_error(
    storage_url: str, offload_url: str
) -> None:
    report = report_model(storage_url, offload_url)
    reference = await report(title="secret", body=BIG).asave()
    row = await raw(storage_url, reference["class_name"], reference["id"])
    assert row is not None
    pointer = json.loads(row.data)["$toast"]["offloaded"]
    payload = await raw(offload_url, pointer["class_name"], pointer["id"])
    assert payload is not None

    async def overwrite(backend: Any) -> None:
        await backend.save_records(
            [
                StoredRecord(
                    payload.class_name,
                    payload.id,
                    payload.data.replace(b"large", b"LARGE", 1),
                    1,
                    payload.created_at,
                    payload.updated_at,
                )
            ]
        )

    await _on(offload_url, overwrite)
    with pytest.raises(StoredDataError, match="SHA-256") as caught:
        await report.aload(reference)
    assert "secret" not in str(caught.value)

    async def remove(backend: Any) -> None:
        await backend.delete(payload.id, payload.class_name)

    await _on(offload_url, remove)
    with pytest.raises(StoredDataError, match="missing from the offload store"):
        await report.aload(reference)
    await pydantic_toast.aclose_storage()


def test_sync_round_trip(storage_url: str, offload_url: str) -> None:
    report = report_model(storage_url, offload_url)
    saved = report(title="sync", body=BIG)
    assert report.model_validate(saved.model_dump()) == saved
    asyncio.run(pydantic_toast.aclose_storage())
