"""The stored record: what travels between a model and a storage backend."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any, NamedTuple, overload
from uuid import UUID

import pydantic_core

from pydantic_toast._exceptions import (
    StorageConfigurationError,
    StorageValidationError,
    StoredDataError,
)
from pydantic_toast._reference import all_canonical

__all__ = [
    "FIRST_STORABLE",
    "LAST_STORABLE",
    "ClassKeys",
    "PageCursor",
    "RecordKey",
    "StoredRecord",
    "check_batch_size",
    "check_once_each",
    "check_timestamps",
    "new_record",
    "one_path",
    "read_record",
    "written_by",
]

RecordKey = tuple[str, UUID]
"""``(class_name, id)``: what identifies a record within one store."""


@dataclass(frozen=True, slots=True, init=False)
class StoredRecord:
    """One model instance as stored.

    Attributes:
        class_name: The model's stored class name.
        id: The record id.
        data: The model's fields as a UTF-8 JSON object, keyed by field name.
        schema_version: The model's schema version when the record was written.
        created_at: When the record was first written (timezone-aware).
        updated_at: When the record was last written (timezone-aware).
        ttl: Seconds until the record expires, for backends that support expiry; ``None``
            keeps it forever.
        revision: Read from a store: the record's stored revision (1 when first written, one
            more on every write), ``None`` from a backend that keeps no revisions. Handed to
            ``save_records``: the revision the writer last saw, which must still be the stored
            one (``0``: no record may exist yet), or ``None`` to write whatever is stored
            (last write wins). See :class:`~pydantic_toast.Capability` ``REVISIONS``.
        without_floats: ``True`` when the save proved the JSON holds no float (its class's
            fields write none, see ``_number_plan``): PostgreSQL then skips its scan for
            numbers ``jsonb`` would rewrite. ``False`` when not known, and on records read
            from a store.
    """

    class_name: str
    id: UUID
    data: bytes
    schema_version: int
    created_at: datetime
    updated_at: datetime
    ttl: float | None = None
    revision: int | None = None
    without_floats: bool = field(default=False, compare=False)

    def __init__(
        self,
        class_name: str,
        id: UUID,
        data: bytes,
        schema_version: int,
        created_at: datetime,
        updated_at: datetime,
        ttl: float | None = None,
        revision: int | None = None,
        without_floats: bool = False,
    ) -> None:
        # Through the slots' own setters: a frozen dataclass's generated __init__ goes through
        # object.__setattr__ for each field, twice the cost (one record per save and load).
        _class_name(self, class_name)
        _id(self, id)
        _data(self, data)
        _schema_version(self, schema_version)
        _created_at(self, created_at)
        _updated_at(self, updated_at)
        _ttl(self, ttl)
        _revision(self, revision)
        _without_floats(self, without_floats)

    @property
    def key(self) -> RecordKey:
        """``(class_name, id)``."""
        return (self.class_name, self.id)

    def to_document(self) -> dict[str, Any]:
        """The record as a JSON-compatible dict, for backends that store documents.

        The shape is ``{"schema_version", "created_at", "updated_at", "data": {fields}}``, with
        ``"revision"`` when the record has one; :meth:`from_document` reads it back.
        """
        document: dict[str, Any] = {
            "schema_version": self.schema_version,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "data": pydantic_core.from_json(self.data, allow_inf_nan=True),
        }
        if self.revision is not None:
            document["revision"] = self.revision
        return document

    @classmethod
    def from_document(cls, class_name: str, id: UUID, document: object) -> StoredRecord:
        """Rebuild a record from :meth:`to_document`'s shape, refusing anything else clearly."""
        if not isinstance(document, dict):
            raise _corrupt(class_name, id, f"expected a JSON object, got {type(document).__name__}")
        try:
            data = document["data"]
            version = document["schema_version"]
            created = datetime.fromisoformat(document["created_at"])
            updated = datetime.fromisoformat(document["updated_at"])
        except (KeyError, TypeError, ValueError) as exc:
            problem: str | None = type(exc).__name__
        else:
            problem = None
        if problem is not None:  # raised outside the except: the driver's text holds the data
            raise _corrupt(
                class_name,
                id,
                f"expected keys schema_version, created_at, updated_at and data ({problem} "
                "reading them)",
            )
        revision = document.get("revision")
        if not isinstance(data, dict) or not isinstance(version, int):
            raise _corrupt(class_name, id, "'data' must be an object and 'schema_version' an int")
        if revision is not None and (type(revision) is not int or revision < 1):
            raise _corrupt(class_name, id, "'revision' must be an int of 1 or more")
        return cls(
            class_name=class_name,
            id=id,
            data=pydantic_core.to_json(data, inf_nan_mode="constants"),
            schema_version=version,
            created_at=created,
            updated_at=updated,
            revision=revision,
        )


_FIELDS = (
    "class_name",
    "id",
    "data",
    "schema_version",
    "created_at",
    "updated_at",
    "ttl",
    "revision",
    "without_floats",
)
if tuple(field.name for field in fields(StoredRecord)) != _FIELDS:  # pragma: no cover
    raise AssertionError("StoredRecord's fields changed: update its __init__ and its builders")
# The slots' own setters (a frozen dataclass refuses setattr).
(
    _class_name,
    _id,
    _data,
    _schema_version,
    _created_at,
    _updated_at,
    _ttl,
    _revision,
    _without_floats,
) = (StoredRecord.__dict__[name].__set__ for name in _FIELDS)


class _Filling:
    """A record being filled in: :class:`StoredRecord`'s slots, without its frozen setattr.

    Plain attribute stores on it cost a tenth of calls to the slots' setters (method wrappers,
    about 800 instructions each: 8,000 per record of a load); the filled record then takes
    ``StoredRecord`` as its class, which Python allows between classes of the same slots.
    """

    __slots__ = _FIELDS


# Python refuses the class change if the layouts ever part: here, at import, not in a load.
_probe: Any = _Filling()
_probe.__class__ = StoredRecord
del _probe


def read_record(
    class_name: str,
    id: UUID,
    data: bytes,
    schema_version: int,
    created_at: datetime,
    updated_at: datetime,
    revision: int | None,
) -> StoredRecord:
    """``StoredRecord(...)`` of a record read from a store (no ``ttl``), without ``__init__``.

    Filled in as a :class:`_Filling` (a load makes one per record): 3,300 instructions, where
    the slots' setters took 8,000.
    """
    record: Any = _Filling()
    record.class_name = class_name
    record.id = id
    record.data = data
    record.schema_version = schema_version
    record.created_at = created_at
    record.updated_at = updated_at
    record.ttl = None
    record.revision = revision
    record.without_floats = False
    record.__class__ = StoredRecord
    return record  # type: ignore[no-any-return]


def new_record(
    class_name: str,
    id: UUID,
    data: bytes,
    schema_version: int,
    created_at: datetime,
    updated_at: datetime,
    ttl: float | None,
    revision: int | None,
    without_floats: bool,
) -> StoredRecord:
    """``StoredRecord(...)``, all fields positional, without ``__init__`` (a save makes one per
    record, and memory:// a second as it stores it).

    Filled in as a :class:`_Filling`, as :func:`read_record`: 3,600 instructions, where
    ``StoredRecord(...)`` takes 8,300.
    """
    record: Any = _Filling()
    record.class_name = class_name
    record.id = id
    record.data = data
    record.schema_version = schema_version
    record.created_at = created_at
    record.updated_at = updated_at
    record.ttl = ttl
    record.revision = revision
    record.without_floats = without_floats
    record.__class__ = StoredRecord
    return record  # type: ignore[no-any-return]


class ClassKeys(Sequence[RecordKey]):
    """The keys of records of one class: ``[(class_name, id) for id in ids]``, made on demand.

    A batch load passes its keys so: a backend that reads one class at a time (PostgreSQL,
    Redis) takes ``class_name`` and ``ids`` as they are; any other reads the tuples, each
    made when asked for and dropped at once (a list of them is one object per record more
    for the garbage collector to track and scan while the batch is loaded).

    Args:
        class_name: The records' stored class name.
        ids: Their ids.
        texts: Each id as the caller was given it, when it has them (a batch's references
            hold the ids as text): see :meth:`as_str`.
        canonical: Whether the caller has checked that ``texts`` are ``str(id)`` each.
    """

    __slots__ = ("canonical", "class_name", "ids", "texts")

    def __init__(
        self,
        class_name: str,
        ids: list[UUID],
        texts: list[str] | None = None,
        *,
        canonical: bool = False,
    ) -> None:
        self.class_name = class_name
        self.ids = ids
        self.texts = texts
        self.canonical = canonical and texts is not None

    def as_str(self) -> list[str] | None:
        """``[str(id) for id in ids]`` when ``texts`` are exactly that, else ``None``.

        One check of all the texts at once (unless the caller made it) costs a fraction of
        what ``str(id)`` costs per id.
        """
        texts = self.texts
        if texts is None or not (self.canonical or all_canonical(texts)):
            return None
        return texts

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> RecordKey: ...

    @overload
    def __getitem__(self, index: slice) -> ClassKeys: ...

    def __getitem__(self, index: int | slice) -> RecordKey | ClassKeys:
        if isinstance(index, slice):
            texts = None if self.texts is None else self.texts[index]
            return ClassKeys(self.class_name, self.ids[index], texts, canonical=self.canonical)
        return (self.class_name, self.ids[index])

    def __iter__(self) -> Iterator[RecordKey]:
        return zip(repeat(self.class_name), self.ids)

    def __repr__(self) -> str:
        return f"ClassKeys({self.class_name!r}, <{len(self.ids)} ids>)"


class PageCursor(NamedTuple):
    """Where a page of a class's records ends: the sort key of its last record.

    Listings are newest first by ``(created_at, id)``, and a page ``after`` a cursor holds the
    records whose key is strictly smaller. The cursor carries the key itself, not a reference
    to a record, so it stays valid when that record is deleted. Tuples compare like the
    listing orders: ``(record.created_at, record.id) < cursor`` means "comes after the cursor".

    Attributes:
        created_at: The last record's ``created_at`` (timezone-aware).
        id: The last record's id (breaks ties between equal ``created_at``).
    """

    created_at: datetime
    id: UUID

    @classmethod
    def of(cls, record: StoredRecord) -> PageCursor:
        """The cursor just past ``record``."""
        return cls(record.created_at, record.id)

    def token(self) -> str:
        """The cursor as an opaque, URL-safe string (see :meth:`from_token`).

        34 characters: a format byte, ``created_at`` in microseconds since the epoch and the
        id, base64url-encoded without padding.
        """
        micros = (self.created_at - _EPOCH) // _MICROSECOND
        raw = _TOKEN_FORMAT + micros.to_bytes(8, "big", signed=True) + self.id.bytes
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def from_token(cls, token: str) -> PageCursor | None:
        """The cursor a :meth:`token` string spells, or ``None`` when ``token`` is not one."""
        if len(token) != _TOKEN_LENGTH:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "==")
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 25 or raw[:1] != _TOKEN_FORMAT:
            return None
        micros = int.from_bytes(raw[1:9], "big", signed=True)
        try:
            created_at = _EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            return None
        return cls(created_at, UUID(bytes=raw[9:]))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TOKEN_FORMAT = b"\x01"
_TOKEN_LENGTH = 34  # 25 bytes in base64 without padding: never a UUID's 32 or 36 characters


def one_path(name: str) -> bool:
    """Whether ``name`` reads as one path only in object keys: no backslash, and no empty,
    ``.`` or ``..`` part between slashes.

    Some S3 stores (SeaweedFS) read object keys as paths, dropping or resolving those
    parts and turning a backslash into a slash: ``Box/`` then names the keys of ``Box``.
    """
    return "\\" not in name and _PATH_PARTS.isdisjoint(name.split("/"))


# Parts between slashes that object stores reading keys as paths drop or resolve.
_PATH_PARTS = frozenset({"", ".", ".."})


def check_batch_size(batch_size: object, most: int) -> None:
    """Refuse a ``batch_size`` (records per page or statement) that is not an int in 1..most."""
    if type(batch_size) is not int or not 1 <= batch_size <= most:
        raise StorageConfigurationError(
            f"batch_size must be an int from 1 to {most}, got {batch_size!r}"
        )


FIRST_STORABLE = datetime.min.replace(tzinfo=UTC) + timedelta(microseconds=1)
LAST_STORABLE = datetime.max.replace(tzinfo=UTC) - timedelta(microseconds=1)
"""The first and last moments every store keeps exactly. PostgreSQL's driver (asyncpg) writes
the first and last microsecond a ``datetime`` holds (in UTC) as ``-infinity`` and
``infinity``, which no ``datetime`` can read back, and a time whose UTC form falls outside
years 1-9999 cannot be converted to UTC at all (SQLite, PostgreSQL)."""
_NEAR_END = LAST_STORABLE - timedelta(days=365_250)  # a 1,000-year ttl always fits before it
_LONGEST_TTL = 1000 * 365 * 86400  # the config's longest ttl (_config imports this module)


def check_timestamps(records: Sequence[StoredRecord]) -> None:
    """Refuse, before anything is written, a record whose ``created_at`` or ``updated_at`` is
    naive or outside :data:`FIRST_STORABLE` to :data:`LAST_STORABLE`, or whose expiry
    (``updated_at`` plus ``ttl``) falls past the last.

    Every store then gives back what it was given: memory:// and Redis would keep such a
    time, PostgreSQL stored an infinity its loads refuse, SQLite failed with a bare
    ``OverflowError``. A model's own saves skip it (their times come from this machine's
    clock or from the store); records built by hand or by the AI stores (a conversation's
    ``after``) are checked.

    Raises:
        StorageValidationError: A timestamp no store can keep exactly; nothing was written.
    """
    for record in records:
        try:
            if (
                FIRST_STORABLE <= record.created_at <= LAST_STORABLE
                and FIRST_STORABLE <= record.updated_at <= LAST_STORABLE
                and (
                    record.ttl is None
                    or (0 < record.ttl <= _LONGEST_TTL and record.updated_at < _NEAR_END)
                    or (record.ttl > 0 and _expires_in_range(record))
                )
            ):
                continue
        except TypeError:  # a naive datetime (it does not compare with an aware one), or none
            pass
        raise _timestamp_error(record)


def check_once_each(records: Sequence[StoredRecord]) -> None:
    """Refuse, before anything is written, a batch that holds one record (class name and id)
    twice.

    Which of the two writes wins, and which revision each gets, differed by store and by
    whether a chunk boundary fell between them (PostgreSQL refused them within a statement and
    wrote both, as revisions 1 and 2, across two; Redis wrote one half of a refused batch).

    Raises:
        StorageValidationError: A record is in the batch twice; nothing was written.
    """
    if len(records) < 2 or len({record.id.int for record in records}) == len(records):
        return  # (ints hash in C, UUIDs in Python)
    seen: dict[RecordKey, int] = {}
    for position, record in enumerate(records):
        first = seen.setdefault(record.key, position)
        if first != position:
            raise StorageValidationError(
                f"the batch holds the {record.class_name} record {record.id} twice (at "
                f"positions {first} and {position}), so which write wins and the revision of "
                "each would be ambiguous; nothing was written: pass each record once per "
                "batch (its last version)",
                class_name=record.class_name,
                id=record.id,
            )


def _expires_in_range(record: StoredRecord) -> bool:
    assert record.ttl is not None
    try:
        return record.updated_at + timedelta(seconds=record.ttl) <= LAST_STORABLE
    except (OverflowError, ValueError):  # past year 9999, or a ttl of NaN
        return False


def _timestamp_error(record: StoredRecord) -> StorageValidationError:
    problem = (
        f"its expiry (updated_at plus a ttl of {record.ttl!r} seconds) falls past the end of "
        f"{_RANGE}: set a shorter ttl, or none"
        if record.ttl is None or record.ttl > 0
        else f"its ttl of {record.ttl!r} seconds is not above 0 (a record would expire as it "
        "is written, or, on Redis, never): give a ttl above 0, or none"
    )
    for label, moment in (("created_at", record.created_at), ("updated_at", record.updated_at)):
        if not isinstance(moment, datetime) or moment.utcoffset() is None:
            problem = (
                f"its {label} is not a timezone-aware datetime: give one with its offset "
                "(datetime.now(UTC), or .replace(tzinfo=UTC) for a time known to be UTC)"
            )
            break
        if not FIRST_STORABLE <= moment <= LAST_STORABLE:
            problem = f"its {label} falls outside {_RANGE}: give a time inside it"
            break
    return StorageValidationError(
        f"the {record.class_name} record {record.id} cannot be stored exactly, so nothing was "
        f"written: {problem}",
        class_name=record.class_name,
        id=record.id,
    )


_RANGE = (
    "0001-01-01 00:00:00.000001 to 9999-12-31 23:59:59.999998 UTC, the times every store "
    "keeps exactly (PostgreSQL stores the first and last microsecond of a datetime as "
    "-infinity and infinity, which no datetime reads back)"
)


def _corrupt(class_name: str, id: UUID, detail: str) -> StoredDataError:
    return StoredDataError(
        f"the stored {class_name} record {id} is not in pydantic-toast's format: {detail}; "
        "it was written by something else or damaged, so it is left untouched",
        class_name=class_name,
        id=id,
    )


def written_by(record: StoredRecord, found: StoredRecord | None) -> bool:
    """Whether ``found`` (read back) is what the save of ``record`` wrote: the same data,
    schema version and ``updated_at``, at the revision it expected plus one."""
    if found is None:
        return False
    if record.revision is not None and found.revision not in (None, record.revision + 1):
        return False
    return (
        found.updated_at == record.updated_at
        and found.schema_version == record.schema_version
        and _same_data(record.data, found.data)
    )


def _same_data(written: bytes, found: bytes) -> bool:
    """The same bytes, or the same JSON (a store such as PostgreSQL's jsonb reformats it)."""
    if written == found:
        return True
    try:
        return bool(json.loads(written) == json.loads(found))
    except ValueError:
        return False
