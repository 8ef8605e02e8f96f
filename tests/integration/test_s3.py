"""S3 specifics on a real SeaweedFS: conformance, key layout, credentials, clear errors."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any
from uuid import UUID, uuid4

import pytest

import pydantic_toast
from pydantic_toast import (
    ConcurrencyError,
    ExternalBaseModel,
    ExternalConfigDict,
    StorageAuthenticationError,
    StorageConfigurationError,
    StorageConnectionError,
    StorageOperationError,
    StoredRecord,
)
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.s3 import _revision_suffix
from pydantic_toast.testing.conformance import BackendConformance
from tests import servers


def on_server(server: servers.TempSeaweedFS, job: Any) -> Any:
    """Run ``await job(client)`` with a raw client of ``server``."""

    async def main() -> Any:
        async with server.admin_client() as client:
            return await job(client)

    return asyncio.run(main())


def model_on(url: str, **config: object) -> type[ExternalBaseModel]:
    return type(
        "Note",
        (ExternalBaseModel,),
        {
            "__annotations__": {"text": str},
            "model_config": ExternalConfigDict(
                storage=url,
                external_name=f"Note{uuid4().hex[:8]}",
                **config,  # type: ignore[typeddict-item]
            ),
        },
    )


class TestS3Conformance(BackendConformance):
    """The s3:// backend against the conformance suite, on SeaweedFS."""

    @pytest.fixture
    def storage_url(self, s3_url: str) -> str:  # type: ignore[override]
        """A fresh prefix in the session's bucket."""
        return s3_url


def test_key_layout_is_documented(
    s3_url: str, seaweedfs: servers.TempSeaweedFS, bucket: str
) -> None:
    """A record is {prefix}/{class_name}/{uuid}.json holding the fields, plus an index entry."""
    note = model_on(s3_url)
    reference = note(text="tea").model_dump()
    prefix = StorageURL.parse(s3_url).path.strip("/")
    key = f"{prefix}/{reference['class_name']}/{reference['id']}.json"

    async def read(client: Any) -> tuple[Any, bytes, list[str]]:
        response = await client.get_object(Bucket=bucket, Key=key)
        async with response["Body"] as body:
            data = await body.read()
        listing = await client.list_objects_v2(
            Bucket=bucket, Prefix=f"{prefix}/.index/{reference['class_name']}/"
        )
        return response["Metadata"], data, [e["Key"] for e in listing.get("Contents", [])]

    metadata, data, index = on_server(seaweedfs, read)
    assert json.loads(data) == {"text": "tea"}
    # Revision 1 and created_at, spelt in whitespace (see the ETag test).
    assert data == b'{"text":"tea"}' + _revision_suffix(1, metadata["toast-created-at"])
    assert data.rstrip(b" \t\r\n") == b'{"text":"tea"}'
    assert set(metadata) == {
        "toast-created-at",
        "toast-updated-at",
        "toast-schema-version",
        "toast-revision",
    }
    assert metadata["toast-revision"] == "1"
    assert len(index) == 1
    assert note.model_validate(reference).text == "tea"  # type: ignore[attr-defined]


def test_credentials_from_the_aws_chain(
    monkeypatch: pytest.MonkeyPatch, seaweedfs: servers.TempSeaweedFS, bucket: str
) -> None:
    """Without keys in the URL, the standard AWS chain (here the environment) supplies them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.SECRET_KEY)
    url = f"s3://{bucket}/chain{uuid4().hex[:8]}?endpoint_url={seaweedfs.endpoint}&region=us-east-1"
    note = model_on(url)
    try:
        assert note.model_validate(note(text="chain").model_dump()).text == "chain"  # type: ignore[attr-defined]
    finally:
        pydantic_toast.close_storage()


def test_no_credentials_anywhere_is_an_authentication_error(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    seaweedfs: servers.TempSeaweedFS,
    bucket: str,
) -> None:
    """With no keys in the URL nor in the AWS chain, the error says where keys can come from."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    url = f"s3://{bucket}/none?endpoint_url={seaweedfs.endpoint}&region=us-east-1"
    note = model_on(url)
    try:
        with pytest.raises(StorageAuthenticationError, match="no AWS credentials were found"):
            note(text="x").model_dump()
    finally:
        pydantic_toast.close_storage()


def test_missing_bucket_is_a_clear_error(seaweedfs: servers.TempSeaweedFS) -> None:
    """A bucket that does not exist is named, with how to create it; the secret never shows."""
    note = model_on(seaweedfs.url(f"nope-{uuid4().hex[:8]}"))
    try:
        with pytest.raises(StorageConnectionError, match="does not exist: create it") as caught:
            note(text="x").model_dump()
    finally:
        pydantic_toast.close_storage()
    assert seaweedfs.SECRET_KEY not in str(caught.value)
    assert "secret" not in repr(caught.value.__cause__)


def test_bad_credentials_are_an_authentication_error(
    seaweedfs: servers.TempSeaweedFS, bucket: str
) -> None:
    """A wrong secret is an authentication error naming the fix, without the secret."""
    note = model_on(seaweedfs.url(bucket, "bad", secret="wrong-secret-value"))
    try:
        with pytest.raises(StorageAuthenticationError, match="check the access key") as caught:
            note(text="x").model_dump()
    finally:
        pydantic_toast.close_storage()
    assert "wrong-secret-value" not in str(caught.value)


def test_access_denied_is_an_authentication_error(
    seaweedfs: servers.TempSeaweedFS, bucket: str
) -> None:
    """An identity that may only read cannot save: the denial names the operation."""
    url = seaweedfs.url(bucket, "ro", key=seaweedfs.READER_KEY, secret=seaweedfs.READER_SECRET)
    note = model_on(url)
    try:
        with pytest.raises(StorageAuthenticationError, match="denied the save"):
            note(text="x").model_dump()
    finally:
        pydantic_toast.close_storage()


def test_unreachable_store_is_a_connection_error(bucket: str) -> None:
    """An endpoint where nothing listens is a connection error naming endpoint_url."""
    url = (
        f"s3://k:s@{bucket}/x?endpoint_url=http://127.0.0.1:{servers.free_port()}"
        "&region=us-east-1&connect_timeout=1"
    )
    note = model_on(url)
    try:
        with pytest.raises(StorageConnectionError, match="endpoint_url"):
            note(text="x").model_dump()
    finally:
        pydantic_toast.close_storage()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3:///prefix", "name the bucket"),
        ("s3://bucket:9000/p", "endpoint_url"),
        ("s3://bucket/p?colour=red", "unknown option"),
        ("s3://onlykey@bucket/p", "both the access key and the secret"),
        ("s3://bucket/p?max_concurrency=0", "must be positive"),
        ("s3://bucket/p?read_timeout=nan", "must be positive"),
    ],
)
def test_bad_urls_are_refused_when_the_class_is_defined(url: str, message: str) -> None:
    """A malformed s3:// URL fails at class definition, naming the fix."""
    with pytest.raises(StorageConfigurationError, match=message):
        model_on(url)


def test_the_secret_is_masked() -> None:
    """The URL's secret key never shows in its str or repr."""
    url = StorageURL.parse("s3://AKIAEXAMPLE:abc/def+ghi@bucket/p?endpoint_url=http://h:1")
    assert "abc/def+ghi" not in str(url)
    assert "abc/def+ghi" not in repr(url)


async def test_concurrent_writers_from_one_revision_one_wins(s3_url: str) -> None:
    """Ten writers holding the same revision: If-Match lets exactly one through."""
    note = model_on(s3_url)
    original = note(text="v1")
    reference = await original.asave()
    copies = [await note.aload(reference) for _ in range(10)]
    for number, copy in enumerate(copies):
        copy.text = f"writer {number}"  # type: ignore[attr-defined]

    outcomes = await asyncio.gather(*(copy.asave() for copy in copies), return_exceptions=True)

    winners = [
        copy for copy, outcome in zip(copies, outcomes, strict=True) if isinstance(outcome, dict)
    ]
    assert len(winners) == 1
    assert all(
        isinstance(outcome, ConcurrencyError)
        for outcome in outcomes
        if not isinstance(outcome, dict)
    )
    stored = await note.aload(reference)
    assert stored.text == winners[0].text  # type: ignore[attr-defined]
    await pydantic_toast.aclose_storage()


def test_a_write_of_identical_bytes_changes_the_etag(
    s3_url: str, seaweedfs: servers.TempSeaweedFS, bucket: str
) -> None:
    """If-Match compares ETags, and S3's ETag is the MD5 of the body alone: a rewrite of the
    same fields must still change it, or a writer that HEADed before it would pass If-Match;
    so must the record's re-creation at revision 1 with the same fields (a new created_at).
    """
    note = model_on(s3_url)
    saved = note(text="same")
    reference = saved.model_dump()
    prefix = StorageURL.parse(s3_url).path.strip("/")
    key = f"{prefix}/{reference['class_name']}/{reference['id']}.json"

    async def etag(client: Any) -> str:
        return str((await client.head_object(Bucket=bucket, Key=key))["ETag"])

    async def raw_rewrites(client: Any) -> tuple[str, str]:
        first = await client.put_object(Bucket=bucket, Key=f"{key}.raw", Body=b"x", Metadata={})
        second = await client.put_object(
            Bucket=bucket, Key=f"{key}.raw", Body=b"x", Metadata={"other": "1"}
        )
        return str(first["ETag"]), str(second["ETag"])

    before = on_server(seaweedfs, etag)
    with pydantic_toast.last_write_wins():
        saved.model_dump()  # the same bytes, revision 2
    after = on_server(seaweedfs, etag)
    assert after != before
    assert note.model_validate(reference).text == "same"  # type: ignore[attr-defined]
    raw_first, raw_second = on_server(seaweedfs, raw_rewrites)
    assert raw_first == raw_second  # why: the store ignores metadata in the ETag
    pydantic_toast.delete(note, reference)
    pydantic_toast.dump(saved, force=True)  # the same bytes at revision 1: a new record
    assert saved.external_revision == 1
    assert on_server(seaweedfs, etag) not in (before, after)


async def _stored_on(
    s3_url: str,
) -> tuple[type[ExternalBaseModel], ExternalBaseModel, Any, StoredRecord]:
    """A note saved on ``s3_url`` with text "v1": its model, the saved instance, the S3
    backend holding it, and its stored record as that backend loads it."""
    note = model_on(s3_url)
    item = note(text="v1")  # type: ignore[call-arg]
    await item.asave()
    name = note._toast_settings().external_name
    connected = await pydantic_toast.current_storage().connected(StorageURL.parse(s3_url))
    backend: Any = connected.backend
    (stored,) = await backend.load_records([(name, item.external_id)])
    return note, item, backend, stored


async def test_a_forced_write_overtaken_by_a_checked_one_takes_the_next_revision(
    s3_url: str,
) -> None:
    """A last-write-wins PUT whose HEAD a checked write overtakes writes revision 3, not a
    second revision 2: the checked writer, taking that revision for its own, would otherwise
    overwrite the forced write unseen on its next save."""
    note, item, backend, stored = await _stored_on(s3_url)
    checked = replace(stored, data=b'{"text":"checked"}', revision=1)
    forced = replace(stored, data=b'{"text":"forced"}', revision=None)
    head = backend._head
    raced: list[int] = []

    async def head_then_a_checked_write(object_key: str) -> Any:
        """The real HEAD, then a checked write of revision 2 before the forced PUT goes out."""
        seen = await head(object_key)
        if not raced:
            raced.append(0)
            raced[:] = await backend.save_records([checked])
        return seen

    backend._head = head_then_a_checked_write
    try:
        assert await backend.save_records([forced]) == [3]
    finally:
        del backend._head
    assert raced == [2]
    with pytest.raises(ConcurrencyError) as caught:
        await backend.save_records([replace(checked, data=b'{"text":"again"}', revision=2)])
    assert caught.value.current == 3
    assert (await note.aload(item.external_id)).text == "forced"  # type: ignore[arg-type, attr-defined]
    await pydantic_toast.aclose_storage()


async def test_a_forced_write_overtaken_every_time_gives_up(s3_url: str) -> None:
    """A forced save whose PUT another write overtakes every time stops after ten attempts
    with StorageOperationError (it looped for as long as the other writes came); the record
    holds the last of the other writes."""
    note, item, backend, stored = await _stored_on(s3_url)
    head = backend._head
    overtaking: list[int] = []  # the revisions the other writes took
    injecting = False

    async def head_then_another_write(object_key: str) -> Any:
        """The real HEAD, then another forced write (whose own HEAD is not overtaken)."""
        nonlocal injecting
        seen = await head(object_key)
        if not injecting:
            injecting = True
            try:
                text = b'{"text":"%d"}' % (len(overtaking) + 1)
                overtaking.extend(
                    await backend.save_records([replace(stored, data=text, revision=None)])
                )
            finally:
                injecting = False
        return seen

    backend._head = head_then_another_write
    try:
        with pytest.raises(StorageOperationError, match="10 times in a row"):
            await backend.save_records([replace(stored, data=b'{"text":"forced"}', revision=None)])
    finally:
        del backend._head
    assert len(overtaking) == 10
    assert (await note.aload(item.external_id)).text == "10"  # type: ignore[arg-type, attr-defined]
    await pydantic_toast.aclose_storage()


async def _batch_of(model: type[ExternalBaseModel], count: int) -> tuple[list[Any], list[Any]]:
    """``count`` stored records of ``model`` loaded back and changed, and their ids."""
    references = await pydantic_toast.adump([model(text=f"v1 {i}") for i in range(count)])
    ids = [UUID(str(reference["id"])) for reference in references]
    loaded = [await model.aload(reference) for reference in references]
    for item in loaded:
        item.text = item.text.replace("v1", "v2")
    return loaded, ids


async def test_batch_conflict_found_by_the_checks_writes_nothing(s3_url: str) -> None:
    """Every revision is checked before any PUT: a record changed before the batch started
    refuses the whole batch, and nothing of it is written."""
    note = model_on(s3_url)
    batch, ids = await _batch_of(note, 5)
    other = await note.aload(ids[3])
    other.text = "someone else"  # type: ignore[attr-defined]
    await other.asave()

    with pytest.raises(ConcurrencyError) as caught:
        await pydantic_toast.adump(batch)

    assert caught.value.id == ids[3]
    assert caught.value.written == {}
    texts = [(await note.aload(id)).text for id in ids]  # type: ignore[attr-defined]
    assert texts == ["v1 0", "v1 1", "v1 2", "someone else", "v1 4"]
    await pydantic_toast.aclose_storage()


@pytest.mark.parametrize("offload", [False, True], ids=["inline", "offloaded"])
async def test_batch_conflict_during_the_puts_writes_the_others(
    seaweedfs: servers.TempSeaweedFS, bucket: str, s3_url: str, offload: bool
) -> None:
    """S3 has no multi-object transaction: a record changed between the checks and its PUT is
    refused, every other record of the batch is written, and ConcurrencyError.written lists
    them (their models remember the new revisions; with offload their payloads stay)."""
    count = 120
    prefix = StorageURL.parse(s3_url).path.strip("/")
    payloads = seaweedfs.url(bucket, f"{prefix}-payloads")
    config: dict[str, object] = {"offload": payloads, "offload_above": 1} if offload else {}
    note = model_on(f"{s3_url}&max_concurrency=1", **config)  # PUTs one at a time, in order
    batch, ids = await _batch_of(note, count)
    name = note._toast_settings().external_name
    ends = {id: f"{prefix}/{name}/{id}.json" for id in (ids[0], ids[-1])}
    raced: list[UUID] = []

    async def other_writer() -> None:
        """Once one end of the batch is written (every check is done), change the other."""
        async with seaweedfs.admin_client() as client:
            while not raced:
                for id, key in ends.items():
                    head = await client.head_object(Bucket=bucket, Key=key)
                    if head["Metadata"].get("toast-revision") == "2":
                        raced.append(next(other for other in ends if other != id))
                        break
                await asyncio.sleep(0.002)
            key = ends[raced[0]]
            head = await client.head_object(Bucket=bucket, Key=key)
            await client.put_object(
                Bucket=bucket, Key=key, Body=b'{"text":"raw writer"}', Metadata=head["Metadata"]
            )

    writer = asyncio.create_task(other_writer())
    with pytest.raises(ConcurrencyError) as caught:
        await pydantic_toast.adump(batch)
    await writer

    (loser,) = raced
    assert caught.value.id == loser
    written = caught.value.written
    assert len(written) == count - 1
    assert set(written.values()) == {2}
    assert (name, loser) not in written
    for item, id in zip(batch, ids, strict=True):
        text = "raw writer" if id == loser else item.text
        assert (await note.aload(id)).text == text  # type: ignore[attr-defined]
    winner = batch[1]
    winner.text = "v3"
    await winner.asave()  # its model remembers revision 2: no conflict
    if offload:
        backend = await pydantic_toast.current_storage().connected(StorageURL.parse(payloads))
        assert await backend.count(f"{name}.payloads") == count  # old ones gone, none extra
    await pydantic_toast.aclose_storage()


async def test_checked_delete_refused_when_a_write_lands_after_its_check(
    seaweedfs: servers.TempSeaweedFS, bucket: str, s3_url: str
) -> None:
    """A write landing between the checked delete's HEAD and its DELETE: the DELETE's If-Match
    is refused (SeaweedFS honours it), nothing is deleted, the index entry is put back."""
    note = model_on(s3_url)
    item = note(text="v1")  # type: ignore[call-arg]
    await item.asave()
    name = note._toast_settings().external_name
    key = f"{StorageURL.parse(s3_url).path.strip('/')}/{name}/{item.external_id}.json"
    connected = await pydantic_toast.current_storage().connected(StorageURL.parse(s3_url))
    backend: Any = connected.backend
    head = backend._head

    async def head_then_another_writer(object_key: str) -> Any:
        """The real HEAD, then a real write by another client before the DELETE goes out."""
        seen = await head(object_key)
        if object_key == key:
            async with seaweedfs.admin_client() as client:
                await client.put_object(
                    Bucket=bucket, Key=key, Body=b'{"text":"raw writer"}', Metadata=seen["Metadata"]
                )
        return seen

    backend._head = head_then_another_writer
    try:
        with pytest.raises(ConcurrencyError) as caught:
            await pydantic_toast.adelete(note, item.external_id, revision=1)  # type: ignore[arg-type]
    finally:
        del backend._head
    assert "nothing was deleted" in str(caught.value)
    assert (await note.aload(item.external_id)).text == "raw writer"  # type: ignore[arg-type, attr-defined]
    page = await pydantic_toast.apage(note, limit=10)
    assert [listed.external_id for listed in page.items] == [item.external_id]  # still listed
    await pydantic_toast.aclose_storage()


async def test_a_class_is_paged_and_counted_apart_from_names_extending_it(s3_url: str) -> None:
    """external_name "Box" and "Box/v2" share the start of their keys; each class's pages and
    count hold its own records only."""

    def box(external_name: str) -> type[ExternalBaseModel]:
        config = ExternalConfigDict(storage=s3_url, external_name=external_name)
        return type(
            "Box", (ExternalBaseModel,), {"__annotations__": {"text": str}, "model_config": config}
        )

    name = f"Box{uuid4().hex[:8]}"
    outer, inner = box(name), box(f"{name}/v2")
    await pydantic_toast.adump([inner(text="inner"), outer(text="outer"), inner(text="inner")])
    assert [item.text for item in (await pydantic_toast.apage(outer, limit=2)).items] == ["outer"]
    assert await pydantic_toast.acount(outer) == 1
    assert await pydantic_toast.acount(inner) == 2
