"""The codec chain on its own: settings checks, envelopes, and the plain path left alone."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from pydantic import model_serializer

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageConfigurationError,
    StoredDataError,
    StoredRecord,
)
from pydantic_toast._codecs import (
    ENVELOPE_MARK,
    CodecSettings,
    any_encoded,
    decode_record,
    encode_record,
    is_encoded,
)

NOW = datetime(2026, 1, 2, tzinfo=UTC)


def record(data: bytes) -> StoredRecord:
    return StoredRecord("Note", uuid4(), data, 1, NOW, NOW)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"compression": "gzip"}, "compression must be one of zstd"),
        ({"compression": "zstd", "compress_above": -1}, "compress_above must be an int"),
        ({"max_decompressed_size": 1.5}, "max_decompressed_size must be an int"),
        ({"offload": 5}, "offload must be a storage URL"),
        ({"offload": "nosuch://x"}, "offload: .*nosuch"),
        ({"offload": "memory://x", "offload_above": -5}, "offload_above must be an int"),
        ({"offload": "s3://bucket/p", "ttl": 60}, "payloads would outlive"),
    ],
)
def test_bad_codec_settings_are_refused_at_class_definition(
    memory_url: str, config: dict[str, object], problem: str
) -> None:
    with pytest.raises(StorageConfigurationError, match=problem):

        class Note(ExternalBaseModel):
            text: str
            model_config = ExternalConfigDict(storage=memory_url, **config)  # type: ignore[typeddict-item]


def test_models_without_codec_keys_have_no_codec(memory_url: str) -> None:
    class Note(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=memory_url)

    assert Note._toast_settings().codec is None


def test_small_records_stay_plain_and_plain_records_decode_to_themselves() -> None:
    small = record(b'{"text":"hi"}')
    assert encode_record(small, CodecSettings("zstd")) is small
    assert decode_record(small, None) is small
    assert not is_encoded(small.data)


def test_envelope_round_trip_records_codecs_size_and_digest() -> None:
    data = json.dumps({"text": "x" * 100_000}).encode()
    encoded = encode_record(record(data), CodecSettings("zstd", compress_above=0))
    assert is_encoded(encoded.data)
    envelope = json.loads(encoded.data)["$toast"]
    assert envelope["codecs"] == ["zstd"]
    assert envelope["size"] == len(data)
    assert len(envelope["sha256"]) == 64
    assert decode_record(encoded, None).data == data


def test_unknown_codec_is_a_stored_data_error() -> None:
    data = json.dumps({"text": "x" * 10_000}).encode()
    encoded = encode_record(record(data), CodecSettings("zstd", compress_above=0))
    document = json.loads(encoded.data)
    document["$toast"]["codecs"] = ["lzma"]
    with pytest.raises(StoredDataError, match="unknown codec 'lzma'"):
        decode_record(record(json.dumps(document).encode()), None)


def test_malformed_envelope_is_a_stored_data_error() -> None:
    with pytest.raises(StoredDataError, match="envelope"):
        decode_record(record(b'{"$toast": {"codecs": "zstd"}}'), None)


async def test_offloaded_payloads_expire_with_their_records(memory_url: str) -> None:
    """With ttl, the payload goes to an offload store that expires it too (memory:// does)."""
    offload = f"{memory_url}-payloads"

    class Big(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(
            storage=memory_url, offload=offload, offload_above=10, ttl=0.2
        )

    reference = await Big(text="x" * 100).asave()
    assert (await Big.aload(reference)).text == "x" * 100
    store = pydantic_toast.current_storage().memory_store(offload.split("://", 1)[1])
    assert len(store.records()) == 1  # the payload is there
    await asyncio.sleep(0.4)
    with pytest.raises(pydantic_toast.RecordNotFoundError):
        await Big.aload(reference)
    assert store.records() == []  # expired with its record


def test_data_holding_the_envelope_key_is_refused_before_anything_is_written() -> None:
    """An extra key ``$toast`` first in the data would be read back as an envelope (a
    client's body could make a record load as other data): refused, nothing written; after
    a declared field too, since a store may reorder the keys (PostgreSQL's jsonb: the test on
    every backend is in test_every_backend.py)."""
    store = f"memory://{uuid4().hex}"

    class Bag(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=store, extra="allow")

    class Labelled(ExternalBaseModel):
        label: str
        model_config = ExternalConfigDict(storage=store, extra="allow")

    inner = json.dumps({"admin": True}).encode()
    envelope = {"codecs": [], "size": len(inner), "sha256": "0" * 64, "payload": "e30="}
    for value in ("user text", envelope):
        with pytest.raises(pydantic_toast.StorageValidationError, match=r"'\$toast'.*nothing was"):
            Bag(**{"$toast": value}).model_dump()
        with pytest.raises(pydantic_toast.StorageValidationError, match=r"'\$toast'.*nothing was"):
            Labelled(label="x", **{"$toast": value}).model_dump()
    assert pydantic_toast.count(Bag) == 0
    assert pydantic_toast.count(Labelled) == 0
    kept = Labelled(label="x", toast=envelope)  # any other key is data
    assert Labelled.model_validate(kept.model_dump()).model_extra == {"toast": envelope}


def test_a_serializer_of_the_models_own_writing_the_envelope_key_is_refused() -> None:
    """A model serializer of the class's own may write any top-level key: "$toast" anywhere
    among them is refused before anything is written (PostgreSQL's jsonb would put it first,
    and the record would load as an envelope)."""
    store = f"memory://{uuid4().hex}"

    class Flattening(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=store)
        longer_field: str

        @model_serializer(mode="wrap")
        def flatten(self, handler: Any) -> Any:
            return {**handler(self), "$toast": {"v": 1}}

    with pytest.raises(pydantic_toast.StorageValidationError, match=r"'\$toast'.*nothing was"):
        Flattening(longer_field="x").model_dump()
    assert pydantic_toast.count(Flattening) == 0


@pytest.mark.parametrize(
    ("datas", "expected"),
    [
        ([b'{"a":1}', b'{"b":2}'], False),
        ([b'{"$a":1}', b'{"b":2}'], False),  # a third byte of $ that is no envelope
        ([b'{"a":1}', ENVELOPE_MARK + b":{}}"], True),
        ([b"{}", b'{"a":1}'], False),  # shorter than three bytes
        ([b"", ENVELOPE_MARK + b":{}}"], True),
        ([], False),
    ],
)
def test_any_encoded_says_whether_any_data_is_an_envelope(
    datas: list[bytes], expected: bool
) -> None:
    """any_encoded() answers as is_encoded() on each data does, whatever their third bytes and
    lengths, from a list or a one-pass iterator."""
    assert any_encoded(datas) is expected
    assert any_encoded(iter(datas)) is expected
    assert expected is any(map(is_encoded, datas))
