"""Compressed records (zstd + SHA-256 + a bomb limit) on every backend, S3 included."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any
from uuid import UUID

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StoredDataError, StoredRecord
from pydantic_toast._codecs import CodecSettings, encode_record
from pydantic_toast._url import StorageURL

BIG = "pydantic-toast keeps large values out of line. " * 2000  # ~94 KB, compressible


def note_model(url: str, **config: Any) -> type[ExternalBaseModel]:
    """A Note class named after the URL; the same qualname on each call (a redefinition)."""
    tag = hashlib.sha1(url.encode()).hexdigest()[:8]

    class Note(ExternalBaseModel):
        title: str
        body: str = ""
        model_config = ExternalConfigDict(
            storage=url,
            external_name=f"Note_{tag}",
            **config,  # type: ignore[typeddict-item]
        )

    return Note


async def _raw(url: str, job: Any) -> Any:
    backend = await pydantic_toast.current_storage().connected(StorageURL.parse(url))
    try:
        return await job(backend)
    finally:
        await pydantic_toast.aclose_storage()


def stored(url: str, class_name: str, id: UUID) -> StoredRecord:
    """The record as the backend holds it (no decoding)."""

    async def read(backend: Any) -> StoredRecord:
        (record,) = await backend.load_records([(class_name, UUID(str(id)))])
        assert record is not None
        return record  # type: ignore[no-any-return]

    return asyncio.run(_raw(url, read))


def overwrite(url: str, record: StoredRecord) -> None:
    """Write ``record`` as is, behind the model's back (damage, or a crafted record)."""

    async def write(backend: Any) -> None:
        await backend.save_records([record])

    asyncio.run(_raw(url, write))


def test_round_trip_compressed_and_plain(storage_url: str) -> None:
    """Large records are stored as a smaller zstd envelope, small ones as plain JSON; both load."""
    note = note_model(storage_url, compression="zstd")
    big = note(title="big", body=BIG)
    small = note(title="small", body="short")
    big_ref, small_ref = big.model_dump(), small.model_dump()

    assert note.model_validate(big_ref) == big
    assert note.model_validate(small_ref) == small
    raw_big = stored(storage_url, big_ref["class_name"], big_ref["id"])
    envelope = json.loads(raw_big.data)["$toast"]
    assert envelope["codecs"] == ["zstd"]
    assert envelope["size"] >= len(BIG)
    assert len(raw_big.data) < len(BIG) / 20  # base64 of zstd of a repetitive text
    raw_small = stored(storage_url, small_ref["class_name"], small_ref["id"])
    assert json.loads(raw_small.data) == {"title": "small", "body": "short"}


async def test_round_trip_compressed_async(storage_url: str) -> None:
    """asave/aload take the same path (nested loads through a LoadSession included)."""
    note = note_model(storage_url, compression="zstd", compress_above=0)
    saved = note(title="t", body=BIG)
    reference = await saved.asave()
    assert await note.aload(reference) == saved
    assert await pydantic_toast.avalidate(list[note], [reference, reference]) == [saved, saved]
    await pydantic_toast.aclose_storage()


async def test_pages_decode_compressed_records(storage_url: str) -> None:
    """apage reads records through list_records, not load_records: they are decoded too."""
    note = note_model(storage_url, compression="zstd")
    saved = [note(title=f"n{number}", body=BIG if number % 2 else "short") for number in range(3)]
    for item in saved:
        await item.asave()
    page = await pydantic_toast.apage(note, limit=10)
    assert sorted(item.title for item in page.items) == ["n0", "n1", "n2"]  # type: ignore[attr-defined]
    assert {item.title: item.body for item in page.items}["n1"] == BIG  # type: ignore[attr-defined]
    await pydantic_toast.aclose_storage()


def test_records_written_before_keep_loading(storage_url: str) -> None:
    """Turning compression on or off never strands a record: each says how it was stored."""
    plain = note_model(storage_url)
    old = plain(title="old", body=BIG)
    old_ref = old.model_dump()

    zipped = note_model(storage_url, compression="zstd")
    assert zipped.model_validate(old_ref) == zipped(title="old", body=BIG, id=old_ref["id"])
    new = zipped(title="new", body=BIG)
    new_ref = new.model_dump()

    plain_again = note_model(storage_url)
    assert plain_again.model_validate(new_ref).body == BIG
    assert plain_again.model_validate(old_ref).body == BIG


def test_unchanged_compressed_model_writes_nothing(storage_url: str) -> None:
    """Change tracking compares the plain JSON, not the envelope: a second dump does no I/O."""
    note = note_model(storage_url, compression="zstd")
    saved = note(title="t", body=BIG)
    reference = saved.model_dump()
    before = stored(storage_url, reference["class_name"], reference["id"])
    saved.model_dump()
    after = stored(storage_url, reference["class_name"], reference["id"])
    assert after.updated_at == before.updated_at


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_payload_is_a_stored_data_error(storage_url: str, damage: str) -> None:
    """A changed or truncated payload fails the SHA-256 check; the error names no data."""
    note = note_model(storage_url, compression="zstd")
    reference = note(title="secret-title", body=BIG).model_dump()
    record = stored(storage_url, reference["class_name"], reference["id"])
    document = json.loads(record.data)
    payload = document["$toast"]["payload"]
    if damage == "flip":
        index = len(payload) // 2
        payload = payload[:index] + ("A" if payload[index] != "A" else "B") + payload[index + 1 :]
    else:
        payload = payload[: len(payload) // 2 // 4 * 4]
    document["$toast"]["payload"] = payload
    overwrite(storage_url, _with_data(record, json.dumps(document).encode()))

    with pytest.raises(StoredDataError, match="SHA-256") as caught:
        note.model_validate(reference)
    message = str(caught.value)
    assert reference["class_name"] in message
    assert str(reference["id"]) in message
    assert "secret-title" not in message
    assert "pydantic-toast keeps" not in message
    assert str(caught.value.id) == str(reference["id"])


def test_bomb_is_refused(storage_url: str) -> None:
    """A record decompressing past max_decompressed_size is refused, whatever it claims."""
    note = note_model(storage_url, compression="zstd", max_decompressed_size=10_000)
    reference = note(title="t", body=BIG).model_dump()  # writing is not limited
    with pytest.raises(StoredDataError, match="decompression bomb"):
        note.model_validate(reference)

    # A crafted envelope that understates its size: decompression itself stops at the limit.
    record = stored(storage_url, reference["class_name"], reference["id"])
    bomb = encode_record(
        _with_data(record, json.dumps({"title": "t", "body": "0" * 5_000_000}).encode()),
        CodecSettings("zstd", 0),
    )
    document = json.loads(bomb.data)
    assert len(bomb.data) < 2_000  # 5 MB of zeros, a few hundred bytes stored
    document["$toast"]["size"] = 100
    overwrite(storage_url, _with_data(record, json.dumps(document).encode()))
    with pytest.raises(StoredDataError, match="more than 10000 bytes"):
        note.model_validate(reference)


def _with_data(record: StoredRecord, data: bytes) -> StoredRecord:
    return StoredRecord(
        class_name=record.class_name,
        id=record.id,
        data=data,
        schema_version=record.schema_version,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )
