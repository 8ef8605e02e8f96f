"""``s3://``: records as objects in an S3-compatible bucket (AWS, MinIO, SeaweedFS, Ceph).

URL: ``s3://[access_key:secret_key@]bucket[/prefix][?options]``. Without keys in the URL the
client takes credentials from the standard AWS chain (environment, shared config and
credentials files with ``AWS_PROFILE``, SSO, container and instance metadata). Query options:

* ``endpoint_url``: the store's address, for anything but AWS (``http://127.0.0.1:8333``);
* ``region`` (default: the AWS chain's, else ``us-east-1``);
* ``max_concurrency`` (default 32): requests in flight per batch, and the connection pool size;
* ``connect_timeout`` (default 5) and ``read_timeout`` (default 30), in seconds;
* ``addressing_style``: ``path`` (default with an ``endpoint_url``) or ``virtual``.

Key layout, under ``prefix`` (none when the URL has no path):

* ``{prefix}/{class_name}/{uuid}.json``: the record. Its body is the model's fields as JSON,
  exactly as the model wrote them (readable with any S3 tool); ``created_at``, ``updated_at``
  and ``schema_version`` travel as object metadata (``x-amz-meta-toast-*``), so a load is one
  GET.
* ``{prefix}/.index/{class_name}/{inverted created_at}-{inverted id}``: an empty object per
  record, for listing. S3 lists keys in ascending byte order only, so the key spells the
  creation time (microseconds subtracted from 10**16) and the id (each hex digit subtracted
  from ``f``) inverted: key order is then newest first by ``created_at``, then id, and a page
  after a cursor is one ``ListObjectsV2`` call with ``StartAfter``.

Revisions (optimistic concurrency, :attr:`~pydantic_toast.Capability.REVISIONS`) ride on S3's
conditional writes. The revision travels as metadata (``x-amz-meta-toast-revision``; an object
without it is at revision 1). Creating a record is a PUT with ``If-None-Match: *``; writing
revision ``r`` over ``r - 1`` is a HEAD (the stored revision and ETag) and a PUT with
``If-Match: <that ETag>``, so a writer that raced in between makes the PUT fail (412) and the
write raises :class:`~pydantic_toast.ConcurrencyError`. S3's ETag is the MD5 of the body alone
(metadata does not count), so a write of identical bytes would keep the ETag and let a stale
``If-Match`` through: each body therefore ends with JSON whitespace spelling its revision and
``created_at`` (base 4 in space, tab, CR, LF), which makes every write's ETag new, also across
a delete and a re-creation; loads strip it. A checked write also compares the HEAD's
``created_at`` with the one the writer read: a record deleted and created again since is
another record, whatever its revision.

Batches are not atomic: S3 has no multi-object transaction. What a batch save guarantees:

* every record's revision is checked (HEADs, concurrently) before any is written, so a
  conflict found then raises :class:`~pydantic_toast.ConcurrencyError` and writes nothing;
* a record that another writer changes between the checks and its PUT is refused (the PUT is
  conditional), but the batch's other records are all written: the ``ConcurrencyError`` for the
  refused record lists them in ``written`` with their new revisions (and their models remember
  them, so saving again writes only the rest);
* any other failure (the store unreachable, access denied) is raised once every PUT of the
  batch has finished or failed: the records whose PUT succeeded are written, the others not.

Each record alone is all or nothing: a PUT stores the whole object or nothing.

Costs: creating a record is two PUTs (the record, made with ``If-None-Match: *`` so that
concurrent creators cannot both index it, then its index entry); writing an existing record is
a HEAD and the conditional PUT (last-write-wins: the refused conditional PUT, a HEAD for its
``created_at`` and revision, and a PUT with ``If-Match`` on that HEAD's ETag, all again when
another write lands in between, so that two writes never share a revision). A load is one
GET, a delete a HEAD and two DELETEs, a page of ids one LIST (the cursor is an index key: no
lookup), a page of records that LIST and then one GET per record (concurrently; S3 cannot list
bodies, so a page is never one round trip here), a count one LIST per 1,000 records. A write
interrupted between the record and its index entry leaves a record that loads but is not
listed (the index is deleted before the record, so a listing never names a deleted record).

Expiry: S3 has no per-object time to live (an ``Expires`` header only guides caches, and
lifecycle rules expire whole days by prefix), so this backend does not declare
:attr:`~pydantic_toast.Capability.TTL` and a model with ``ttl`` is refused on it. To expire
a class's records, add a bucket lifecycle rule on ``{prefix}/{class_name}/`` and
``{prefix}/.index/{class_name}/``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from pydantic_toast._exceptions import (
    ConcurrencyError,
    StorageConfigurationError,
    StorageOperationError,
    StorageUsageError,
    StoredDataError,
    shorten,
)
from pydantic_toast._records import PageCursor, RecordKey, StoredRecord, one_path
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.base import Capability, RecordBackend
from pydantic_toast.runtime.boundary import connecting

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ["S3Backend"]

_T = TypeVar("_T")
_NUMBERS: dict[str, float] = {"max_concurrency": 32, "connect_timeout": 5.0, "read_timeout": 30.0}
_OPTIONS = {"endpoint_url", "region", "addressing_style", *_NUMBERS}
_INDEX = ".index"  # the first part of the listing index's keys, under the prefix
_CREATED, _UPDATED, _VERSION = "toast-created-at", "toast-updated-at", "toast-schema-version"
_REVISION = "toast-revision"
_PRECONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict")
_WHITESPACE = b" \t\r\n"  # JSON whitespace: base-4 digits of a body's revision
_EPOCH_SPAN = 10**16  # microseconds: past the year 2286
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INVERT = str.maketrans("0123456789abcdef", "fedcba9876543210")
_MISSING = ("404", "NoSuchKey", "NotFound")
_FORCED_ATTEMPTS = 10  # a forced save overtaken this often in a row gives up


class _SendOnce(AIOHTTPSession):
    """aiobotocore's HTTP session without aiohttp's silent second try.

    aiohttp sends a PUT or DELETE again, once, when a reused connection is reset on the way
    (HTTP calls both idempotent). A conditional PUT is not: repeated after it landed, it
    fails its own ``If-Match``/``If-None-Match`` (412) and the save would report a conflict
    with itself. Only the boundary repeats a request, and only one that cannot have landed.
    """

    async def _get_session(self, proxy_url: str | None) -> Any:
        session = await super()._get_session(proxy_url)  # type: ignore[misc]
        session._retry_connection = False  # aiohttp has no public switch for it
        return session


class S3Backend(RecordBackend):
    """Records as JSON objects in an S3 bucket, through aiobotocore."""

    capabilities = frozenset(Capability) - {Capability.TTL}

    @classmethod
    def store_identity(cls, url: StorageURL) -> Hashable:
        """The endpoint, bucket and key prefix."""
        options = _Options.of(url)
        return (options.endpoint_url or "aws", options.bucket, options.prefix)

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        """Check the bucket and options without connecting."""
        _Options.of(url)

    @classmethod
    def check_class_name(cls, class_name: str) -> None:
        """Refuse a stored class name whose keys could be another class's: one with an empty,
        ``.`` or ``..`` part between slashes or a backslash (``Box/``, ``a//b``), which S3
        stores reading keys as paths (SeaweedFS) resolve to other keys (``Box/`` to those of
        ``Box``), or one whose first part is ``.index``, whose records would lie among the index
        entries of another class."""
        if one_path(class_name) and class_name.split("/")[0] != _INDEX:
            return
        raise StorageConfigurationError(
            f"external_name {shorten(repr(class_name))} cannot be kept apart from other classes' "
            "names on S3: some S3 stores read object keys as paths, so an empty, '.' or '..' "
            "part between slashes or a backslash names another class's keys ('Box/' those of "
            f"'Box'), and a first part {_INDEX!r} names the listing index's keys: set "
            "external_name (or rename the class) to a name without them, such as 'Box' or 'a/b'"
        )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._options = _Options.of(StorageURL.parse(url))
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: S3Client | None = None
        self._gate = asyncio.Semaphore(int(self._options.max_concurrency))

    # -- keys -----------------------------------------------------------------------------------

    def key(self, class_name: str, id: UUID) -> str:
        """The record's object key: ``{prefix}/{class_name}/{uuid}.json``."""
        return f"{self._options.prefix}{class_name}/{id}.json"

    def index_key(self, class_name: str, created_at: datetime, id: UUID) -> str:
        """The record's index entry: newest first by ``created_at``, then id, in key order."""
        micros = (created_at - _EPOCH) // timedelta(microseconds=1)  # exact, unlike floats
        return f"{self._index_prefix(class_name)}{_EPOCH_SPAN - micros:017d}-{_inverted(id)}"

    def _index_prefix(self, class_name: str) -> str:
        return f"{self._options.prefix}{_INDEX}/{class_name}/"

    # -- lifecycle ------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Make the client and check the bucket exists and the credentials may use it."""
        options = self._options
        stack = contextlib.AsyncExitStack()
        config = AioConfig(
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            max_pool_connections=int(options.max_concurrency),
            # No retries inside botocore: a conditional PUT repeated after its reply was lost
            # fails its own condition (412). The boundary retries what is safe to repeat.
            retries={"total_max_attempts": 1, "mode": "standard"},
            http_session_cls=_SendOnce,
            s3={"addressing_style": options.addressing_style},
        )
        try:
            client = self._client = await stack.enter_async_context(
                get_session().create_client(
                    "s3",
                    endpoint_url=options.endpoint_url,
                    region_name=options.region,
                    aws_access_key_id=options.access_key,
                    aws_secret_access_key=options.secret_key,
                    config=config,
                )
            )
            self._stack = stack
            await client.head_bucket(Bucket=options.bucket)
        except BaseException as exc:
            connecting(exc)
            await self.disconnect()
            await stack.aclose()
            raise

    def reply_timeout(self) -> float:
        """The URL's ``read_timeout``."""
        return self._options.read_timeout

    async def disconnect(self) -> None:
        """Close the client and its connection pool."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    # -- records --------------------------------------------------------------------------------

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        """Write the records concurrently (at most ``max_concurrency`` at once).

        Records with an expected revision are checked first, all of them, before any write.
        """
        checked = [record for record in records if record.revision is not None]
        heads: dict[RecordKey, Any] = {}
        if checked:
            found = await self._each(
                lambda record: self._head(self.key(record.class_name, record.id)), checked
            )
            for record, head in zip(checked, found, strict=True):
                current = None if head is None else _revision_of(head)
                if (current or 0) != record.revision or (
                    head is not None and self._created(record, head) != record.created_at
                ):
                    raise ConcurrencyError(
                        record.class_name,
                        record.id,
                        expected=record.revision or 0,
                        current=current,
                        ttl=record.ttl,
                    )
                heads[record.key] = head
        if len(records) == 1:
            return [await self._save_one(records[0], heads.get(records[0].key))]
        # Every write runs to its end, so that a failure can say which records were written.
        results = await self._each(
            lambda record: _outcome(self._save_one(record, heads.get(record.key))), records
        )
        failures = [result for result in results if isinstance(result, Exception)]
        if not failures:
            return [result for result in results if isinstance(result, int)]
        conflict = next((f for f in failures if isinstance(f, ConcurrencyError)), None)
        if conflict is not None:
            conflict.written = {
                record.key: result
                for record, result in zip(records, results, strict=True)
                if isinstance(result, int)
            }
            raise conflict
        raise failures[0]

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Read the records concurrently, in the order of ``keys``."""
        return await self._each(lambda key: self._load_one(*key), keys)

    async def delete(self, id: UUID, class_name: str) -> bool:
        """Delete the record and its index entry; return whether it existed."""
        client, bucket = self._connected(), self._options.bucket
        key = self.key(class_name, id)
        head = await self._head(key)
        if head is None:
            return False
        created = self._metadata(key, class_name, id, head["Metadata"])[0]
        # The index entry goes first: an interrupted delete leaves a record that is not
        # listed, never a listed record that is gone.
        await client.delete_object(Bucket=bucket, Key=self.index_key(class_name, created, id))
        await client.delete_object(Bucket=bucket, Key=key)
        return True

    async def delete_checked(
        self, id: UUID, class_name: str, revision: int, *, created_at: datetime | None = None
    ) -> bool:
        """Delete the record if it is at ``revision`` (and ``created_at``): a HEAD, then a
        DELETE with ``If-Match``.

        The DELETE names the ETag the HEAD saw, so a write landing in between makes it fail
        (412) on stores that honour ``If-Match`` on DELETE (AWS S3 does); the index entry,
        deleted first as in :meth:`delete`, is then put back.
        """
        client, bucket = self._connected(), self._options.bucket
        key = self.key(class_name, id)
        head = await self._head(key)
        if head is None:
            return False
        current = _revision_of(head)
        if current != revision:
            raise ConcurrencyError(
                class_name, id, expected=revision, current=current, deleting=True
            )
        created = self._metadata(key, class_name, id, head["Metadata"])[0]
        if created_at is not None and created != created_at:  # deleted and created again
            raise ConcurrencyError(
                class_name, id, expected=revision, current=current, deleting=True
            )
        index = self.index_key(class_name, created, id)
        await client.delete_object(Bucket=bucket, Key=index)
        try:
            await client.delete_object(Bucket=bucket, Key=key, IfMatch=head["ETag"])
        except ClientError as exc:
            if _code(exc) not in (*_PRECONDITION_FAILED, *_MISSING):
                raise
            now = await self._head(key)
            if now is None:
                return False
            await client.put_object(Bucket=bucket, Key=index)
            raise ConcurrencyError(
                class_name, id, expected=revision, current=_revision_of(now), deleting=True
            ) from None
        return True

    async def list_ids(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[UUID]:
        """Ids newest first (creation time, then id), past ``after``: one LIST per 1,000.

        The cursor spells an index key itself, so no lookup of its record is needed (and a
        deleted cursor record does not matter). Pages of records come from the inherited
        :meth:`~pydantic_toast.StorageBackend.list_records`: this LIST, then one GET per
        record (concurrently): S3 has no call that lists objects with their bodies, so a page
        cannot be one round trip here.
        """
        client, bucket = self._connected(), self._options.bucket
        prefix = self._index_prefix(class_name)
        start = prefix if after is None else self.index_key(class_name, *after)
        ids: list[UUID] = []
        where: dict[str, Any] = {"StartAfter": start}
        while len(ids) < limit:
            # The delimiter keeps the entries of class names extending this one with a "/"
            # (an AI conversation "a/b" under "a") out: each comes as one common prefix, which
            # counts towards MaxKeys, so a short page may be followed by more.
            page = await client.list_objects_v2(
                Bucket=bucket,
                Prefix=prefix,
                Delimiter="/",
                MaxKeys=min(limit - len(ids), 1000),
                **where,
            )
            entries = [entry["Key"] for entry in page.get("Contents", [])]
            ids += [_uninverted(entry.rpartition("-")[2]) for entry in entries]
            if not page.get("IsTruncated"):
                break
            where = {"ContinuationToken": page["NextContinuationToken"]}
        return ids[:limit]

    async def list_class_names(self) -> list[str]:
        """The class names that have index entries: the whole index listed (one LIST per
        1,000 records; a class name may hold "/", so no delimiter can list names alone)."""
        pages = self._connected().get_paginator("list_objects_v2")
        start = f"{self._options.prefix}{_INDEX}/"
        names = set()
        async for page in pages.paginate(Bucket=self._options.bucket, Prefix=start):
            for entry in page.get("Contents", []):
                name = entry["Key"][len(start) :].rpartition("/")[0]
                if name:
                    names.add(name)
        return sorted(names)

    async def count(self, class_name: str) -> int:
        """How many records ``class_name`` has (one LIST per 1,000 records)."""
        pages = self._connected().get_paginator("list_objects_v2")
        total = 0
        prefix = f"{self._options.prefix}{class_name}/"
        # The delimiter leaves out the records of class names extending this one with "/";
        # with it SeaweedFS also lists the prefix itself, as a folder, once none is left.
        async for page in pages.paginate(Bucket=self._options.bucket, Prefix=prefix, Delimiter="/"):
            total += sum(entry["Key"] != prefix for entry in page.get("Contents", []))
        return total

    # -- one record -----------------------------------------------------------------------------

    async def _save_one(self, record: StoredRecord, head: Any) -> int:
        """Write one record; ``head`` is its HEAD when the batch checked its revision."""
        key = self.key(record.class_name, record.id)
        expected = record.revision
        if expected is not None and expected > 0:
            assert head is not None  # checked by save_records
            return await self._replace(record, key, head, expected)
        for _ in range(_FORCED_ATTEMPTS):
            if await self._create(record, key):
                return 1
            if expected == 0:
                raise await self._conflict(record, key, expected)
            # Last write wins over an existing record: keep its created_at, count on its
            # revision. The PUT names the ETag seen, so a write landing in between is never
            # given the same revision (a checked writer would take it for its own): try again.
            head = await self._head(key)
            if head is None:  # deleted meanwhile: create it anew
                continue
            revision = _revision_of(head) + 1
            try:
                await self._put(record, key, revision, head, IfMatch=head["ETag"])
            except ClientError as exc:
                if _code(exc) not in (*_PRECONDITION_FAILED, *_MISSING):
                    raise
                continue
            return revision
        raise StorageOperationError(
            f"a forced save of the {shorten(record.class_name)} record {record.id} found another "
            f"write landing between reading its revision and writing, {_FORCED_ATTEMPTS} times in "
            "a row: the record is being written continuously; retry later"
        )

    async def _create(self, record: StoredRecord, key: str) -> bool:
        """Create the record (revision 1) and index it; ``False`` when it exists already."""
        try:
            await self._put(record, key, 1, None, IfNoneMatch="*")
        except ClientError as exc:
            if _code(exc) not in _PRECONDITION_FAILED:
                raise
            return False
        except Exception:
            # The reply was lost (a connection reset): a create that landed still needs its
            # index entry, or the record would load but never be listed.
            if not await self._landed(record, key):
                raise
        await self._index(record)
        return True

    async def _landed(self, record: StoredRecord, key: str) -> bool:
        """Whether the object at ``key`` is ``record`` as its create wrote it (revision 1)."""
        try:
            head = await self._head(key)
        except Exception:  # the caller re-raises what the create failed with
            return False
        return (
            head is not None
            and _revision_of(head) == 1
            and head["Metadata"].get(_UPDATED) == record.updated_at.isoformat()
        )

    async def _replace(self, record: StoredRecord, key: str, head: Any, expected: int) -> int:
        """Write revision ``expected + 1`` over the object whose HEAD is ``head``."""
        try:
            await self._put(record, key, expected + 1, head, IfMatch=head["ETag"])
        except ClientError as exc:
            if _code(exc) not in (*_PRECONDITION_FAILED, *_MISSING):
                raise
            raise await self._conflict(record, key, expected) from None
        return expected + 1

    async def _conflict(self, record: StoredRecord, key: str, expected: int) -> ConcurrencyError:
        head = await self._head(key)
        return ConcurrencyError(
            record.class_name,
            record.id,
            expected=expected,
            current=None if head is None else _revision_of(head),
            ttl=record.ttl,
        )

    async def _put(
        self, record: StoredRecord, key: str, revision: int, head: Any, **conditions: str
    ) -> None:
        """PUT the record's body at ``revision``, keeping the created_at of ``head``."""
        created = record.created_at.isoformat()
        if head is not None:
            created = head["Metadata"].get(_CREATED, created)
        await self._connected().put_object(
            Bucket=self._options.bucket,
            Key=key,
            Body=record.data + _revision_suffix(revision, created),
            ContentType="application/json",
            Metadata={
                _CREATED: created,
                _UPDATED: record.updated_at.isoformat(),
                _VERSION: str(record.schema_version),
                _REVISION: str(revision),
            },
            **conditions,  # type: ignore[arg-type]
        )

    async def _index(self, record: StoredRecord) -> None:
        await self._connected().put_object(
            Bucket=self._options.bucket,
            Key=self.index_key(record.class_name, record.created_at, record.id),
        )

    def _created(self, record: StoredRecord, head: Any) -> datetime:
        """The stored ``created_at`` of ``record``'s object, whose HEAD is ``head``."""
        key = self.key(record.class_name, record.id)
        return self._metadata(key, record.class_name, record.id, head["Metadata"])[0]

    async def _load_one(self, class_name: str, id: UUID) -> StoredRecord | None:
        client, key = self._connected(), self.key(class_name, id)
        try:
            response = await client.get_object(Bucket=self._options.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        async with response["Body"] as body:
            data = await body.read()
        created, updated, version = self._metadata(key, class_name, id, response["Metadata"])
        return StoredRecord(
            class_name=class_name,
            id=id,
            data=data.rstrip(_WHITESPACE),
            schema_version=version,
            created_at=created,
            updated_at=updated,
            revision=_revision_of(response),
        )

    async def _head(self, key: str) -> Any:
        try:
            return await self._connected().head_object(Bucket=self._options.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise

    def _metadata(
        self, key: str, class_name: str, id: UUID, metadata: dict[str, str]
    ) -> tuple[datetime, datetime, int]:
        try:
            created = datetime.fromisoformat(metadata[_CREATED])
            updated = datetime.fromisoformat(metadata[_UPDATED])
            version = int(metadata[_VERSION])
        except (KeyError, ValueError):
            readable = False
        else:
            readable = True
        if not readable:
            raise StoredDataError(
                f"the S3 object {key} in bucket {self._options.bucket} is not a pydantic-toast "
                f"record (it lacks readable x-amz-meta-{_CREATED}, -{_UPDATED} and "
                f"-{_VERSION} metadata): it was written by something else; it is left untouched",
                class_name=class_name,
                id=id,
            )
        return created, updated, version

    async def _each(self, call: Callable[[Any], Awaitable[_T]], items: Sequence[Any]) -> list[_T]:
        if len(items) == 1:
            return [await call(items[0])]

        async def gated(item: Any) -> _T:
            async with self._gate:
                return await call(item)

        return list(await asyncio.gather(*(gated(item) for item in items)))

    def _connected(self) -> S3Client:
        if self._client is None:
            raise StorageUsageError(f"{self!r} is not connected: call connect() first")
        return self._client


class _Options:
    """What an ``s3://`` URL says, checked."""

    def __init__(self, url: StorageURL) -> None:
        unknown = sorted(set(url.query) - _OPTIONS)
        if unknown:
            raise StorageConfigurationError(
                f"{url.masked}: unknown option(s) {', '.join(unknown)}; s3:// URLs take "
                f"{', '.join(sorted(_OPTIONS))}"
            )
        if not url.host:
            raise StorageConfigurationError(
                f"{url.masked}: name the bucket, as in s3://bucket/prefix"
            )
        if url.port is not None:
            raise StorageConfigurationError(
                f"{url.masked}: an s3:// URL names a bucket, not a host and port: give the "
                "store's address as ?endpoint_url=http://host:port"
            )
        self.bucket = url.host
        prefix = url.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        if (url.username is None) != (url.password is None):
            raise StorageConfigurationError(
                f"{url.masked}: give both the access key and the secret key "
                "(s3://key:secret@bucket/prefix), or neither to use the AWS credential chain"
            )
        self.access_key, self.secret_key = url.username, url.password
        self.endpoint_url = url.query.get("endpoint_url") or None
        self.region = url.query.get("region") or None
        style = url.query.get("addressing_style") or ("path" if self.endpoint_url else "auto")
        if style not in ("path", "virtual", "auto"):
            raise StorageConfigurationError(
                f"{url.masked}: addressing_style must be path, virtual or auto"
            )
        self.addressing_style = style
        numbers: dict[str, float] = {}
        for name, default in _NUMBERS.items():
            raw = url.query.get(name)
            try:
                value = float(raw) if raw is not None else default
            except ValueError:
                raise StorageConfigurationError(
                    f"{url.masked}: {name} must be a number, got {raw!r}"
                ) from None
            if not value > 0:  # (NaN too)
                raise StorageConfigurationError(f"{url.masked}: {name} must be positive")
            numbers[name] = value
        self.max_concurrency = numbers["max_concurrency"]
        self.connect_timeout = numbers["connect_timeout"]
        self.read_timeout = numbers["read_timeout"]

    @classmethod
    def of(cls, url: StorageURL) -> _Options:
        return cls(url)


async def _outcome(call: Awaitable[int]) -> int | Exception:
    """The revision ``call`` wrote, or the exception it raised (cancellation propagates)."""
    try:
        return await call
    except Exception as exc:
        return exc


def _revision_of(response: Any) -> int:
    """The revision in an object's metadata (1 for objects written before revisions)."""
    text = response["Metadata"].get(_REVISION, "1")
    return int(text) if text.isdigit() and int(text) > 0 else 1


def _revision_suffix(revision: int, created: str) -> bytes:
    """``revision`` and ``created`` (the ``created_at`` metadata) in base 4, spelt in JSON
    whitespace: every write's body (and ETag) is new, also that of a record deleted and created
    again at a revision its earlier incarnation had (an ``If-Match`` naming that one fails)."""
    try:
        micros = (datetime.fromisoformat(created) - _EPOCH) // timedelta(microseconds=1)
    except (TypeError, ValueError):  # not written by pydantic-toast: the revision alone
        micros = 0
    number = micros << 40 | revision if micros > 0 else revision
    digits = bytearray()
    while number:
        number, digit = divmod(number, 4)
        digits.append(_WHITESPACE[digit])
    return bytes(digits)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _inverted(id: UUID) -> str:
    return id.hex.translate(_INVERT)


def _uninverted(text: str) -> UUID:
    return UUID(hex=text.translate(_INVERT))
