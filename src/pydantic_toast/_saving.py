"""Saving: turning a tree of external models into records and writing them in one batch.

A dump walks the tree through Pydantic's own serializer. Each external model met on the way
is replaced by its reference and queued in the active :class:`SaveBatch`; the batch then
serializes the queued models one at a time, each becoming a :class:`StoredRecord`. So a dump
never nests one model's serialization inside another's: a 10,000-deep chain takes no deeper
stack than one model, and an instance met twice (a shared child, or a cycle such as
``a.next = b; b.next = a``) is stored once. The outermost dump then writes the batch, one
``save_records`` call per store, and returns only once that write has finished.

Each instance remembers, on its :class:`Identity`, the revision and the JSON it last read or
wrote. A model whose JSON has not changed since is not written (change tracking: no I/O), and a
write expects the remembered revision to still be the stored one (optimistic concurrency),
unless the model is last-write-wins or the dump is forced (:func:`last_write_wins`). Once its
JSON was written or found unchanged, a model whose fields are still the very same objects
(:mod:`._fingerprint`) is not even serialized again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import weakref
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from uuid import UUID

import pydantic_core
from pydantic import BaseModel, TypeAdapter, ValidationError

from pydantic_toast import _fidelity, _number_plan
from pydantic_toast._codecs import ENVELOPE_KEY, ENVELOPE_MARK, encode_record
from pydantic_toast._collector import PAUSE_FROM, collector_paused
from pydantic_toast._data_schema import (
    data_schema,
    data_schema_of,
    load_validator,
    note_pending,
    noted,
)
from pydantic_toast._exceptions import (
    ConcurrencyError,
    ExternalStorageError,
    StorageValidationError,
    StoredDataError,
)
from pydantic_toast._fingerprint import Fingerprint, fingerprint, unchanged
from pydantic_toast._ids import new_id
from pydantic_toast._key_order import KEY_ORDER_KEPT
from pydantic_toast._loading import SessionKey
from pydantic_toast._loading import fill as _fill
from pydantic_toast._offload import Offloads
from pydantic_toast._ownership import (
    Claim,
    check_claims,
    delete_owned,
    owner_of,
    owner_reference,
    owns_children,
    replaced_children,
    set_owner_reference,
    still_held,
)
from pydantic_toast._records import StoredRecord, new_record
from pydantic_toast._reference import (
    CANONICAL_ID,
    ExternalReference,
    made_with,
    trusted_reference,
)
from pydantic_toast._schema_walk import external_models
from pydantic_toast._url import StorageURL
from pydantic_toast.runtime.loops import run_sync
from pydantic_toast.runtime.rollbacks import Saves
from pydantic_toast.runtime.storage import Storage, current_storage
from pydantic_toast.runtime.transaction import current_transaction, joined_save, written_again

if TYPE_CHECKING:
    from pydantic_toast._config import ModelSettings
    from pydantic_toast._model import ExternalBaseModel
    from pydantic_toast._placement import Place

__all__ = [
    "Identity",
    "SaveBatch",
    "collecting",
    "collecting_model",
    "dump_value",
    "identity_of",
    "is_serializing",
    "keep_id_text",
    "last_write_wins",
    "store",
    "unchanged_reference",
]

T = TypeVar("T")

logger = logging.getLogger("pydantic_toast")

_active_batch: ContextVar[SaveBatch | None] = ContextVar("pydantic_toast_batch", default=None)
# The instance whose own fields are being serialized right now: its serializer must hand back
# the full data instead of storing it again (compared by identity, so nested external models
# are still stored on their own).
_serializing: ContextVar[object] = ContextVar("pydantic_toast_serializing", default=None)


_forced: ContextVar[bool] = ContextVar("pydantic_toast_forced", default=False)


@contextmanager
def last_write_wins() -> Iterator[None]:
    """Write every dump inside the block regardless of revisions and of change tracking.

    The escape hatch from optimistic concurrency for one piece of code: each model dumped in
    the block is written (even unchanged), over whatever is stored (even a newer revision),
    and a deleted record is written back. ``asave(force=True)`` and ``dump(..., force=True)``
    do the same for one call::

        with pydantic_toast.last_write_wins():
            order.model_dump()
    """
    token = _forced.set(True)
    try:
        yield
    finally:
        _forced.reset(token)


class Identity:
    """The record an instance is stored as, and what the instance last read or wrote there.

    Never changed once made (a new one replaces it), but for ``text``, filled in when first
    needed, and ``created_at``, stamped when a dump first meets the instance. A plain class,
    not a frozen dataclass: two are made per save, and a frozen dataclass costs four times as
    much to build.

    Attributes:
        id: The record id.
        created_at: When the record was created (``None`` until a dump meets the instance: one
            clock read stamps its creation and its first write).
        revision: The stored revision last read or written (``0``: never stored; ``None``: the
            backend keeps no revisions).
        data: The JSON last read or written, ``None`` when unknown (then a dump writes).
        exact: Whether ``data`` is byte for byte what Pydantic writes (a store may hand back
            equivalent JSON spelled differently, as PostgreSQL's ``jsonb`` does).
        fingerprint: The field values ``data`` was serialized from, when identity can vouch
            for them (see :mod:`._fingerprint`): fields still the same objects are unchanged.
        text: ``str(id)``, kept for the references returned (``None``: not computed yet).
    """

    __slots__ = ("created_at", "data", "exact", "fingerprint", "id", "revision", "text")

    def __init__(
        self,
        id: UUID,
        created_at: datetime | None,
        revision: int | None = 0,
        data: bytes | None = None,
        exact: bool = True,
        fingerprint: Fingerprint | None = None,
        text: str | None = None,
    ) -> None:
        self.id = id
        self.created_at = created_at
        self.revision = revision
        self.data = data
        self.exact = exact
        self.fingerprint = fingerprint
        self.text = text

    def __repr__(self) -> str:
        return f"Identity(id={self.id!r}, revision={self.revision!r})"

    def __getstate__(self) -> list[object]:
        # The state a frozen dataclass pickled (older pickles load); the fingerprint's objects
        # are this process's, so an unpickled instance compares its JSON instead.
        return [self.id, self.created_at, self.revision, self.data, self.exact]

    def __setstate__(self, state: list[Any]) -> None:
        self.id, self.created_at, self.revision, self.data, self.exact = state[:5]
        self.fingerprint = self.text = None

    def unchanged(self, data: bytes, settings: ModelSettings) -> bool:
        """Whether ``data`` is what was last read or written (the same JSON value) for a
        record of the class of ``settings``; the key order counts for a class holding an
        ``OrderedDict`` (whose records every store hands back as written, see ``_key_order``).
        """
        if self.data is None:
            return False
        if data == self.data:
            return True
        return (
            not self.exact
            and settings.external_name not in KEY_ORDER_KEPT
            and _canonical(data) == _canonical(self.data)
        )


class UnvalidatedIdentity(Identity):
    """The identity of an instance made by ``model_construct()`` (or ``model_copy(update=...)``),
    whose values were never validated: made with the instance, so its id is not reported
    (``external_id`` is ``None``) until a write replaces it with a plain :class:`Identity`."""

    __slots__ = ()


def forget_fingerprint(model: ExternalBaseModel) -> None:
    """Stop vouching for ``model``'s fields by their identity: its next dump serializes them
    and compares the JSON (see :class:`Identity`).

    For a field deleted from the instance: set again, it comes last in ``__dict__``, where a
    fingerprint, which compares the fields by position, would see the values of two fields
    swapped between them as unchanged.
    """
    identity = identity_of(model)
    if identity is not None and identity.fingerprint is not None:
        replaced = type(identity)(
            identity.id,
            identity.created_at,
            identity.revision,
            identity.data,
            identity.exact,
            None,
            identity.text,
        )
        object.__setattr__(model, "_toast_identity", replaced)


def mark_unvalidated(model: ExternalBaseModel) -> None:
    """Note that ``model``'s values were not validated (see :class:`UnvalidatedIdentity`)."""
    _new_identity(model, UnvalidatedIdentity)


def _holds_envelope_key(data: bytes) -> bool:
    """Whether JSON ``data`` is an object with the key ``"$toast"`` at its top."""
    if b'"$toast"' not in data:
        return False
    try:
        decoded = json.loads(data)
    except ValueError:
        return False
    return isinstance(decoded, dict) and ENVELOPE_KEY in decoded


def _reserved_key_refusal(model: ExternalBaseModel) -> StorageValidationError:
    """The refusal for a model whose data holds the key ``"$toast"`` (an extra field), which
    marks the library's own envelopes (compressed, encrypted or offloaded data): stored, it
    would be read back as one where it comes first (a store such as PostgreSQL's jsonb may
    reorder keys), its value taken for the record's data."""
    settings = type(model)._toast_settings()
    return StorageValidationError(
        f"{type(model).__qualname__} cannot be stored: its data holds the key '$toast', "
        "which pydantic-toast reserves for its own envelopes (compressed, encrypted or "
        "offloaded data), so it would not be read back as it is; nothing was written. Rename "
        "that key (an extra field, which extra='allow' lets in)",
        class_name=settings.external_name,
        field="$toast",
    )


_DECLARED: weakref.WeakKeyDictionary[type, tuple[type, ...]] = weakref.WeakKeyDictionary()


def _declared_models(cls: type) -> tuple[type, ...]:
    """The external model classes, abstract ones too, that ``cls``'s schema declares."""
    declared = _DECLARED.get(cls)
    if declared is None:
        schema = cls.__pydantic_core_schema__  # type: ignore[attr-defined]
        declared = _DECLARED[cls] = tuple(external_models(schema))
    return declared


def _canonical(data: bytes) -> str:
    """One spelling of a JSON value: sorted keys; ints, floats and bools stay distinct."""
    return json.dumps(pydantic_core.from_json(data, allow_inf_nan=True), sort_keys=True)


def identity_of(model: ExternalBaseModel) -> Identity | None:
    """The instance's stored identity, or ``None`` before its first dump."""
    try:
        return _read_identity(model)
    except AttributeError:  # never dumped nor loaded: the slot is empty
        return None


def keep_id_text(model: ExternalBaseModel, asked: object) -> None:
    """Let a just-loaded ``model`` keep the id text it was loaded by, when that is ``str(id)``.

    Its next unchanged dump returns a reference holding that text: taken from what the caller
    passed, it spares that dump a ``str(uuid)`` (a quarter of an unchanged re-dump on
    memory://). ``asked`` is what ``aload()`` was given (a reference or an id), already parsed
    into the id the record was read by. Only the canonical spelling is kept (36 characters,
    hyphens at 8, 13, 18 and 23, lower case), which is ``str(id)`` of any text that parsed
    into that id; any other spelling (upper case, braces, no hyphens) leaves the dump to make
    the text.
    """
    if type(asked) is ExternalReference:
        text = asked.get("id")
        if made_with(asked, text) is not None:  # the text it was made with: str(id)
            identity = identity_of(model)
            if identity is not None and identity.text is None:
                identity.text = text
            return
        asked = text
    elif isinstance(asked, dict):  # a reference (not any Mapping: that check costs 0.3 µs)
        asked = asked.get("id")
    if type(asked) is str and _CANONICAL_ID.fullmatch(asked) is not None:
        identity = identity_of(model)
        if identity is not None and identity.text is None:
            identity.text = asked


_CANONICAL_ID = re.compile(CANONICAL_ID)


def _no_slot_yet(model: object) -> Identity:
    identity: Identity = getattr(model, "_toast_identity")  # noqa: B009
    return identity


# ``ExternalBaseModel``'s ``_toast_identity`` slot, read directly (see use_identity_slot): an
# empty slot read through ``getattr`` goes through Pydantic's ``__getattr__``, which costs
# more than a whole unchanged dump.
_read_identity: Callable[[object], Identity] = _no_slot_yet


def _set_identity_attribute(model: object, identity: Identity) -> None:
    object.__setattr__(model, "_toast_identity", identity)


# The slot's own setter (see use_identity_slot): what object.__setattr__ ends up calling,
# without the name lookup (about 700 instructions less, twice per first save).
_write_identity: Callable[[object, Identity], None] = _set_identity_attribute


def use_identity_slot(slot: Any) -> None:
    """Read and write identities through ``slot``, ``ExternalBaseModel``'s member descriptor."""
    global _read_identity, _write_identity
    _read_identity = slot.__get__
    _write_identity = slot.__set__


def collecting_now() -> bool:
    """Whether a dump is collecting models now (a nested model's reference goes in its data)."""
    return _active_batch.get() is not None


def is_serializing(model: ExternalBaseModel) -> bool:
    """Whether ``model``'s own fields are being serialized (for its stored data)."""
    return _serializing.get() is model


class SaveBatch:
    """The records collected during one dump, grouped by storage URL.

    Args:
        storage: The storage to write through (the current one by default).
        force: Write every model met, changed or not, whatever revision is stored.
    """

    __slots__ = (
        "claims",
        "encoding",
        "force",
        "fresh",
        "models",
        "owners",
        "pending",
        "records",
        "refusal",
        "replaced",
        "storage",
        "suspects",
    )

    def __init__(self, storage: Storage | None = None, *, force: bool = False) -> None:
        # Each store's records by class name and id.int (a UUID hashes in Python, its int in C).
        self.records: dict[StorageURL, dict[tuple[str, int], _Entry]] = {}
        self.force = force or _forced.get()
        # Every instance met, by id() (kept alive here, so no id() is reused meanwhile), and
        # those not serialized yet.
        self.models: dict[int, ExternalBaseModel] = {}
        self.pending: list[ExternalBaseModel] = []
        self.storage = storage if storage is not None else current_storage()
        # Records that may not read back (see _fidelity), checked before anything is written.
        self.suspects: list[tuple[type[ExternalBaseModel], StoredRecord]] = []
        # A refusal raised inside a nested serializer, where Pydantic would hide it.
        self.refusal: StorageValidationError | None = None
        # Whether a model met has a codec: records are encoded just before they are written.
        self.encoding = False
        # Owned children that the written records no longer reference: deleted after the write.
        self.replaced: dict[SessionKey, Any] = {}
        # The written models that own children (made when the first is met), then, once
        # checked, the children their owned fields hold.
        self.owners: list[ExternalBaseModel] | None = None
        self.claims: Sequence[Claim] = ()
        # The identities this batch stamped with their created_at (see collect()): a dict's
        # keys, not a set, which holds up to four times as many slots (0.2x the JSON of a
        # batch of 10-field records).
        self.fresh: dict[Identity, None] = {}

    def collect(self, model: ExternalBaseModel) -> ExternalReference:
        """Queue ``model`` for this batch (once per instance) and return its reference.

        Its fields are serialized later, by :meth:`drain`, so that nested models never nest
        serializer calls.
        """
        settings = model.__toast_settings__  # through the instance: no type() call
        if settings is None:
            settings = type(model)._toast_settings()  # raises: abstract, or refused (it says)
        holder: Any = _serializing.get()  # the model whose fields hold this one, if any
        if holder is not None and settings.external_name not in holder._toast_routes():
            self._check_declared(holder, model, settings.external_name)
        try:
            identity = _read_identity(model)
        except AttributeError:  # never dumped nor loaded
            identity = _new_identity(model)
        if identity.created_at is None:
            # Stamped here, as it is met: a parent is created before its children, in the
            # order the dump meets them; its first write is at that time too (see _serialize).
            identity.created_at = datetime.now(UTC)
            self.fresh[identity] = None
        if id(model) not in self.models:
            self.models[id(model)] = model
            self.pending.append(model)
        return trusted_reference(
            settings.external_name, identity.text or str(identity.id), identity.id
        )

    def _check_declared(self, holder: Any, model: ExternalBaseModel, name: str) -> None:
        """Refuse ``model`` in a field of ``holder`` declared as one of its base classes.

        Its record is stored under its own class's name, which a field of the base class does
        not load (a reference must name the field's class): stored, ``holder`` could never be
        loaded again. Only reached when ``holder``'s fields declare no class stored as ``name``.
        """
        bases = [base for base in _declared_models(type(holder)) if isinstance(model, base)]
        if not bases:
            return
        # Some field declares a base class of it: find out whether ``model`` sits there, or
        # elsewhere (an Any field, refused for that after ``holder`` is serialized).
        from pydantic_toast._placement import declared_classes, places_of

        found = False
        for place in places_of(holder, model):
            found = True
            there = [base for base in declared_classes(place.declared) if base in bases]
            if there:
                self._refuse_declared(holder, model, name, place, there[0])
        if not found:  # not in its fields (a serializer of the application's made it)
            self._refuse_declared(holder, model, name, None, bases[0])

    def _refuse_declared(
        self, holder: Any, model: ExternalBaseModel, name: str, place: Place | None, base: type
    ) -> None:
        from pydantic_toast._placement import shown_type

        child, base_name = type(model).__qualname__, base.__qualname__
        if place is None:
            where, field = f"a field declared as {base_name}, a base class of it", None
        else:
            where = f"field {place.field!r} (declared as {shown_type(place.field_type)})"
            if place.path != place.field:
                where += f" at {place.path}"
            where += f", where {base_name} is declared, a base class of it"
            field = place.path
        refusal = StorageValidationError(
            f"{type(holder).__qualname__} holds a {child} in {where}: stored under its own name "
            f"({name!r}), it could not be loaded back through that field; nothing was written. "
            f"Declare the field as {child}, or as a union such as {base_name} | {child}",
            class_name=name,
            field=field,
        )
        self.refusal = self.refusal or refusal
        raise refusal

    def drain(self) -> None:
        """Serialize every queued model, and the models they queue in turn, into records.

        Once :data:`~._collector.PAUSE_FROM` models have been met (a list of them, or one
        holding that many), the rest are serialized with the garbage collector paused.
        """
        pending = self.pending
        while pending:
            if len(self.models) >= PAUSE_FROM:
                with collector_paused:
                    while pending:
                        self._serialize(pending.pop())
                return
            self._serialize(pending.pop())

    def _serialize(self, model: ExternalBaseModel) -> None:
        cls = type(model)
        # Through the instance: a class attribute read through the class costs twice as much.
        settings = model.__toast_settings__ or cls._toast_settings()
        identity: Identity = model._toast_identity  # type: ignore[attr-defined]  # (collect())
        known = identity.fingerprint
        if known is not None and not self.force and unchanged(model, known):
            return
        fast = data_schema_of(model)
        serializer = cls.__pydantic_serializer__ if fast is None else fast.serializer
        # Before serializing: the objects the JSON is made from, and whether they are of their
        # fields' types with short integers (then Pydantic's type check and the scan for long
        # integers are not needed).
        print_, trusted = fingerprint(model, None if fast is None else fast.tracking)
        serialized = model  # or its twin, below
        try:
            data = _to_json(model, serializer, trusted)
        except pydantic_core.PydanticSerializationError as exc:
            if "Circular reference" not in str(exc):
                failure: pydantic_core.PydanticSerializationError | None = exc
            else:  # the model holds itself (a.next = a): serialize a stand-in instead
                try:
                    serialized = _stand_in(model)
                    data, failure = _to_json(serialized, serializer), None
                except pydantic_core.PydanticSerializationError as again:
                    failure = again
            if failure is not None:
                token = _serializing.set(model)  # its probes serialize the model's own fields
                try:
                    refusal = self.refusal or _fidelity.serialization_refusal(model, failure)
                finally:
                    _serializing.reset(token)
                self.refusal = refusal
                raise refusal from None
        # Read back as an envelope: a record whose data starts with the key, or holds it at
        # the top wherever (PostgreSQL's jsonb puts shorter keys first: then it starts with
        # it). Under the class's own schema the top keys are field names and extra fields; a
        # serializer of the class's own (no fast schema) may write any: then the bytes tell.
        extra = model.__pydantic_extra__
        if (
            data.startswith(ENVELOPE_MARK)
            or (extra and ENVELOPE_KEY in extra)
            or (fast is None and _holds_envelope_key(data))
        ):
            self.refusal = self.refusal or _reserved_key_refusal(model)
            raise self.refusal
        # A dict key with a lone surrogate, written changed (see _fidelity.LOSSY_KEY): a
        # partition (a memchr; find parses its arguments, 1,100 instructions) where it can be.
        if (fast is None or fast.keyed) and data.partition(_fidelity.LOSSY_BYTE)[1]:
            token = _serializing.set(serialized)  # the check serializes its own fields
            try:
                lossy = _fidelity.surrogate_key_refusal(serialized, data)
            finally:
                _serializing.reset(token)
            if lossy is not None:
                self.refusal = self.refusal or lossy
                raise self.refusal
        # An offset with seconds written rounded, an Any value changed:
        if note_pending() is not None and noted() is not None:
            token = _serializing.set(serialized)  # the check serializes its own fields
            try:
                changed = _fidelity.noted_refusal(serialized)
            finally:
                _serializing.reset(token)
            if changed is not None:
                self.refusal = self.refusal or changed
                raise self.refusal
        if identity.data is not None and not self.force and identity.unchanged(data, settings):
            if not identity.exact or print_ is not None:  # compare bytes, or objects, next time
                text = identity.text or str(identity.id)
                kept = _kept_json(data, print_, model)
                identity = Identity(
                    identity.id, identity.created_at, identity.revision, kept, True, print_, text
                )
                _write_identity(model, identity)
            return
        # A large record of a class whose schema rules out long integers (see _number_plan)
        # needs no scan when its values are of their fields' types (and its integers short).
        plan = _plan_of(type(model)) if len(data) > _fidelity.SHALLOW_UP_TO else None
        suspect = False
        if trusted:  # the values were checked: no long integer
            without_floats = plan is not None and not plan.floats
        elif (
            plan is not None
            and len(data) > plan.worth_above
            and serialized is model
            and plan.holds(model.__dict__)
        ):
            without_floats = not plan.floats  # (and its fields nest two levels at most)
        else:
            without_floats = False
            # A class with a number plan has simple fields, which nest two levels at most.
            suspect = _fidelity.may_be_unreadable(data) or (
                plan is None and _fidelity.may_be_too_deep(data)
            )
        checked = not (self.force or settings.last_write_wins)
        # A record this save creates was stamped by collect(): written at that time too (one
        # clock read per new record, not two).
        created_at = identity.created_at
        assert created_at is not None  # (stamped by collect())
        now = created_at if identity in self.fresh else datetime.now(UTC)
        if not checked and identity.revision:
            # A write regardless may create the record again (deleted meanwhile): it then
            # starts a new incarnation, with a created_at of its own, which an instance of the
            # deleted record cannot match. A record still there keeps its created_at.
            created_at = now
        record = new_record(
            settings.external_name,
            identity.id,
            data,
            settings.schema_version,
            created_at,
            now,
            settings.ttl,
            identity.revision if checked else None,
            without_floats,
        )
        entry = (record, model, print_, identity.text or str(identity.id))
        # One hash of the URL (a Python __hash__): the batch's first record makes the dict.
        records = self.records.setdefault(settings.url(), {})
        key = (settings.external_name, identity.id.int)
        earlier = records.get(key)
        if earlier is not None and earlier[0].data != data:
            self.refusal = self.refusal or _two_versions_refusal(settings.external_name, identity)
            raise self.refusal
        records[key] = entry
        owns = settings.owns_children
        if owns is None:
            owns = settings.owns_children = owns_children(cls)
        if owns:
            if self.owners is None:
                self.owners = []
            self.owners.append(model)
            if identity.data is not None:  # a new record replaces nothing
                self.replaced.update(replaced_children(cls, identity.data, data))
        if settings.codec is not None:
            self.encoding = True
        if suspect:
            self.suspects.append((type(model), record))

    def check_owned(self) -> None:
        """Refuse the batch if an owned child it references is, or will be, deleted by another
        parent instance of this process (before any write; see :func:`check_claims`)."""
        self.claims = check_claims(self.owners or (), self.models, self._writes, self._new)

    def _new(self, model: ExternalBaseModel) -> bool:
        """Whether ``model`` was never loaded nor written (this batch stamped its creation)."""
        return _read_identity(model) in self.fresh

    def _writes(self, model: ExternalBaseModel) -> bool:
        """Whether this batch writes ``model``'s own record."""
        settings = type(model)._toast_settings()
        identity = _read_identity(model)
        return (settings.external_name, identity.id.int) in self.records.get(settings.url(), {})

    def verify(self) -> None:
        """Refuse the batch if a record in it could not be read back (before any write).

        Only records :func:`_fidelity.may_be_unreadable` flagged are validated, the way a load
        would, with the batch's own records standing in for the store. The last serialized go
        first: a model is serialized before the models it holds, so these are checked on their
        own before a parent's check loads them as its fields.
        """
        if not self.suspects:
            return
        checking = _fidelity.CHECKING.set(True)
        try:
            for cls, record in reversed(self.suspects):
                self._check(cls, record)
        finally:
            _fidelity.CHECKING.reset(checking)

    def _check(self, cls: type[ExternalBaseModel], record: StoredRecord) -> None:
        from pydantic_toast._loading import LoadSession

        session = LoadSession(cls._toast_routes(), self.storage)
        for url, records in self.records.items():
            for stored, *_ in records.values():
                session.records[(url, stored.class_name, stored.id)] = stored
        fast = data_schema(cls)
        validator: Any = load_validator(cls) if fast is None else fast.loader
        token = session.activate()
        try:
            validator.validate_json(record.data, strict=False, by_alias=False, by_name=True)
        except ValidationError as exc:
            raise _fidelity.unreadable_refusal(cls, record, exc) from None
        except StoredDataError as exc:  # a record of this batch held here (shared, cycle)
            raise _fidelity.unreadable_nested_refusal(cls, exc) from None
        finally:
            session.deactivate(token)

    def write(self) -> Coroutine[Any, Any, None]:
        """Write every collected record: one ``save_records`` call per store, concurrently.

        Each store's batch is all or nothing: a :class:`~pydantic_toast.ConcurrencyError`
        there writes none of its records. Written models remember their new revision and JSON.

        Returns:
            The coroutine that writes (one store, nothing replaced: the store's own write,
            without a coroutine around it, as a single save's).
        """
        if len(self.records) == 1 and not (self.replaced or self.owners or self.force):
            ((url, records),) = self.records.items()
            entries = list(records.values())
            # Nothing after the write reads the collection's indexes: freed before it, they
            # leave the write's peak (0.6x the JSON of a batch of 10-field records).
            self.records, self.models = {}, {}
            return self._write(url, entries)
        return self._write_all()

    async def _write_all(self) -> None:
        if not self.records:
            return
        if len(self.records) == 1:
            ((url, records),) = self.records.items()
            await self._write(url, list(records.values()))
        else:
            # Every store's refusals (NaN or NUL on PostgreSQL) before any store is written:
            # one store's batch written next to another's refusal left a record referencing
            # children that were never stored.
            for url, records in self.records.items():
                backend = self.storage.ready(url) or await self.storage.connected(url)
                backend.check_records(
                    [
                        record
                        for record, model, *_ in records.values()
                        if type(model)._toast_settings().codec is None  # encoded: checked as sent
                    ]
                )
            await asyncio.gather(
                *(self._write(url, list(records.values())) for url, records in self.records.items())
            )
        if self.owners or self.force:
            self._mark_owners()
        if self.replaced:
            await self._delete_replaced()

    def _mark_owners(self) -> None:
        """After the write: each child held in an owned field now belongs to its parent, and a
        child written by a forced dump after its owner dropped it (and deleted it) to none."""
        saves: dict[StorageURL, Saves | None] = {}
        parent: ExternalBaseModel | None = None
        reference: weakref.ref[ExternalBaseModel] | None = None
        joined: Saves | None = None
        for child, holder, _, before in self.claims:  # (each parent's children in a row)
            if holder is not parent:
                parent, reference = holder, weakref.ref(holder)  # (one per parent: no callback)
                joined = self._joined(holder, saves)
            if before is not reference:
                if joined is not None:
                    joined.remember(child, before, "_toast_owner")
                set_owner_reference(child, reference)
        if self.force:
            parsed: dict[int, Any] = {}
            for records in self.records.values():
                for _, model, *_ in records.values():
                    owner = owner_of(model)
                    if owner is not None and not still_held(owner, model, parsed):
                        self._set_owner(model, None, model, saves)

    def _joined(
        self, written: ExternalBaseModel, saves: dict[StorageURL, Saves | None]
    ) -> Saves | None:
        """The transaction ``written``'s store joined, if any (``saves``: looked up so far)."""
        url = written.__toast_settings__.url()  # type: ignore[union-attr]  # (a stored model)
        if url not in saves:
            backend = self.storage.ready(url)
            saves[url] = None if backend is None else joined_save(backend.backend)
        return saves[url]

    def _set_owner(
        self,
        child: ExternalBaseModel,
        reference: weakref.ref[ExternalBaseModel] | None,
        written: ExternalBaseModel,
        saves: dict[StorageURL, Saves | None],
    ) -> None:
        """Set ``child``'s owner (weakly); a rollback of ``written``'s transaction undoes it."""
        joined = self._joined(written, saves)
        if joined is not None:
            joined.remember(child, owner_reference(child), "_toast_owner")
        set_owner_reference(child, reference)

    async def _delete_replaced(self) -> None:
        """Delete the owned children the written parents dropped (after the write committed).

        A child still held by a model of this dump (moved to another field or parent) stays.
        A failure is logged, not raised: the write itself succeeded; what was left is an
        orphan that ``pydantic-toast orphans`` finds.
        """
        kept = set()
        parsed: dict[int, Any] = {}
        saves: dict[StorageURL, Saves | None] = {}
        for model in self.models.values():
            identity = identity_of(model)
            if identity is not None:
                settings = type(model)._toast_settings()
                key = (settings.url(), settings.external_name, identity.id)
                kept.add(key)
                owner = owner_of(model) if key in self.replaced else None
                if owner is not None and not still_held(owner, model, parsed):
                    self._set_owner(model, None, owner, saves)  # dropped, kept: no parent
        doomed = {key: model for key, model in self.replaced.items() if key not in kept}
        try:
            await delete_owned(self.storage, doomed)
        except ExternalStorageError as exc:
            notes = " ".join(getattr(exc, "__notes__", []))
            logger.warning("deleting replaced owned records failed: %s %s", exc, notes)

    async def _write(self, url: StorageURL, entries: list[_Entry]) -> None:
        backend = self.storage.ready(url) or await self.storage.connected(url)
        stored = [entries[0][0]] if len(entries) == 1 else [entry[0] for entry in entries]
        try:
            if not self.encoding:
                revisions = await backend.save_records(stored, trusted=True)
            else:  # the batch keeps plain JSON: change tracking compares it
                codecs = [type(entry[1])._toast_settings().codec for entry in entries]
                for index, codec in enumerate(codecs):
                    if codec is not None:
                        stored[index] = encode_record(stored[index], codec)
                offloads = Offloads(self.storage)
                try:
                    await offloads.prepare(backend, stored, codecs)
                    revisions = await backend.save_records(stored, trusted=True)
                except BaseException as exc:
                    await offloads.failed(getattr(exc, "written", {}))
                    raise
                await offloads.written()
        except ConcurrencyError as exc:
            if exc.written:  # a chunked batch wrote its first chunks: remember them
                saves = joined_save(backend.backend)
                for record, model, print_, text in entries:
                    if record.key in exc.written:
                        if saves is not None:
                            saves.remember(model, _read_identity(model))
                        revision = exc.written[record.key]
                        identity = Identity(
                            record.id,
                            _created_at(record, revision, model),
                            revision,
                            _kept_json(record.data, print_, model),
                            True,
                            print_,
                            text,
                        )
                        object.__setattr__(model, "_toast_identity", identity)
            raise
        saves = None
        if current_transaction() is not None:
            saves = joined_save(backend.backend)  # rolled back, the models forget this save
            written_again(lambda: [(url, record.class_name, record.id) for record, *_ in entries])
        if len(entries) < PAUSE_FROM:
            self._remember(entries, revisions, saves)
        else:
            with collector_paused:
                self._remember(entries, revisions, saves)

    @staticmethod
    def _remember(
        entries: list[_Entry], revisions: Sequence[int] | None, saves: Saves | None
    ) -> None:
        """Give each written model its new identity (``saves``: of the transaction it joined)."""
        for index, (record, model, print_, text) in enumerate(entries):
            data = record.data
            revision = None if revisions is None else revisions[index]
            created_at = record.created_at
            if record.revision is None:  # written regardless: created again, or kept
                created_at = _created_at(record, revision, model)
            identity = Identity(
                record.id,
                created_at,
                revision,
                data if len(data) <= KEEP_JSON_UP_TO else _kept_json(data, print_, model),
                True,
                print_,
                text,
            )
            if saves is not None:
                saves.remember(model, _read_identity(model))
            _write_identity(model, identity)


def _created_at(record: StoredRecord, revision: int | None, model: ExternalBaseModel) -> datetime:
    """The stored ``created_at`` of ``record`` once written at ``revision``.

    A checked write keeps the one it was checked against (its own). A write regardless
    carries a new one (see :meth:`SaveBatch._serialize`), stored only if it created the record
    (revision 1); over an existing record, that record's is kept: the one the instance held.
    """
    if record.revision is not None or revision == 1:
        return record.created_at
    held = _read_identity(model).created_at
    return record.created_at if held is None else held


def _two_versions_refusal(class_name: str, identity: Identity) -> StorageValidationError:
    """The refusal of a dump holding two instances of one record (loaded twice) that differ.

    Only one version can be written: the other instance's changes would be lost, where saving
    the two one after the other raises :class:`~pydantic_toast.ConcurrencyError` for the second.
    """
    return StorageValidationError(
        f"the dump holds two instances of the {class_name} record {identity.id} (loaded twice) "
        "with different data, and only one version can be stored; nothing was written: make the "
        "changes on one instance and dump that one",
        class_name=class_name,
        id=identity.id,
    )


_Entry = tuple[StoredRecord, "ExternalBaseModel", Fingerprint | None, str | None]
"""A record of the batch, the instance it was made from, its fingerprint and id text."""

KEEP_JSON_UP_TO = 1 << 20
"""Above this many bytes, a written record's JSON is not kept when a fingerprint vouches for it.

The fingerprint already answers an unchanged re-dump; the JSON would only decide, after a
field was assigned, whether the new JSON is still the same. Keeping it doubles what a large
model holds and adds its size to the next save's peak (a 100 MB record: 100 MB more); without
it, that dump writes. A digest instead would cost more than it saves: SHA-256 (SHA-NI) takes
about 0.55 ms per MB, 14% of a 100 KB save on memory:// and a third of a 100 MB one, on every
save. Models owning children keep it (:func:`replaced_children` reads the old references).
"""


def _kept_json(data: bytes, print_: Fingerprint | None, model: ExternalBaseModel) -> bytes | None:
    """The JSON a written model's identity keeps: ``None`` (unknown, next dump writes) when large.

    See :data:`KEEP_JSON_UP_TO`.
    """
    if len(data) <= KEEP_JSON_UP_TO or print_ is None or owns_children(type(model)):
        return data
    return None


def _to_json(
    model: ExternalBaseModel, serializer: pydantic_core.SchemaSerializer, trusted: bool = False
) -> bytes:
    """``model``'s fields as stored: JSON under field names, nested models as references.

    Pydantic is asked to fail on a value that is not of its field's type (it would otherwise
    write it as it finds it, with a warning, for every load to refuse or read back changed):
    model_construct(), model_copy(update=...), an assignment without validate_assignment, an
    append to a list or a ``__dict__`` write can all put one there, validated instance or not.
    ``warnings="error"`` costs about 9,400 instructions per call (+6% of a save at 10 fields),
    whatever the model: ``trusted`` values, already found of their fields' types (see
    :func:`._fingerprint.fingerprint`), skip it. ``serializer``: the class's
    :func:`._data_schema.storage_serializer`.
    """
    if trusted:
        # Atoms, and lists and dicts of them: no external model inside, whose serializer or
        # collect() would read _serializing (and the class's own serializer, which reads it
        # too, is left out of ``serializer``); not setting it spares 1,600 instructions.
        return serializer.to_json(model, by_alias=False, round_trip=True)
    token = _serializing.set(model)
    try:
        return serializer.to_json(model, by_alias=False, round_trip=True, warnings="error")
    finally:
        _serializing.reset(token)


def _plan_of(cls: type[ExternalBaseModel]) -> _number_plan.NumberPlan | None:
    schema = data_schema(cls)
    return None if schema is None or schema.numbers.scan else schema.numbers


def _stand_in(model: ExternalBaseModel) -> ExternalBaseModel:
    """A shallow twin of ``model`` (same fields and identity, another object).

    Pydantic refuses to serialize an object inside itself; serializing the twin meets the
    original only as a field, which then becomes a reference.
    """
    twin = type(model).__new__(type(model))
    _fill(twin, model)
    return twin


def collecting(dump: Callable[[], T], *, force: bool = False) -> tuple[T, SaveBatch]:
    """Run ``dump()`` with a fresh batch active; external models met are collected, not written.

    Raises:
        StorageValidationError: A record could not be written or read back faithfully.
    """
    return _collected(dump, None, force)


def collecting_model(
    model: ExternalBaseModel, *, force: bool = False
) -> tuple[ExternalReference, SaveBatch]:
    """``collecting(lambda: store(model))`` without the two calls between (about 2,000
    instructions of a single save): inside :func:`collecting`, :func:`store` only hands the
    model to the fresh batch."""
    return _collected(None, model, force)


def _collected(dump: Callable[[], T] | None, model: Any, force: bool) -> tuple[Any, SaveBatch]:
    """What :func:`collecting` returns, of ``dump()`` or, without ``dump``, of ``model``."""
    batch = SaveBatch(force=force)
    token = _active_batch.set(batch)
    try:
        result = dump() if dump is not None else batch.collect(model)
        batch.drain()
    except pydantic_core.PydanticSerializationError:
        if batch.refusal is None:
            raise
        raise batch.refusal from None  # raised in a nested model, wrapped by Pydantic
    finally:
        _active_batch.reset(token)
    if batch.owners:
        batch.check_owned()
    if batch.suspects:  # (verify() checks only those)
        batch.verify()
    # Read no more: dropped, it frees each identity the write replaces as it is replaced.
    batch.fresh = {}
    return result, batch


def store(model: ExternalBaseModel) -> ExternalReference:
    """Store ``model`` and the external models inside it; the sync path behind ``model_dump``.

    Inside a dump that is already collecting, the model only joins that dump's batch.
    """
    batch = _active_batch.get()
    if batch is not None:
        return batch.collect(model)
    known = unchanged_reference(model)
    if known is not None:
        return known
    reference, batch = collecting_model(model)
    if batch.records:  # unchanged: no I/O, not even a hop to the library's loop
        run_sync(
            batch.write,
            call=f"{type(model).__qualname__}.model_dump()",
            instead="await model.asave() (or await pydantic_toast.adump(...))",
        )
    return reference


def unchanged_reference(model: ExternalBaseModel) -> ExternalReference | None:
    """``model``'s reference when a dump of it would do nothing; ``None``: dump it.

    The fast path of change tracking: fields still the objects of the last write (see
    :mod:`._fingerprint`), no forced write, and no dump in progress. Such a model holds no
    external model (a fingerprint never vouches for one), so the whole tree is unchanged.
    """
    try:
        identity = _read_identity(model)
    except AttributeError:  # never dumped: give it its identity now, the dump reads it next
        if model.__toast_settings__ is not None:  # (abstract: the dump explains)
            _new_identity(model)
        return None
    known = identity.fingerprint
    if known is None or _forced.get() or _active_batch.get() is not None:
        return None
    if not unchanged(model, known):
        return None
    settings = model.__toast_settings__  # through the instance: no type() call
    assert settings is not None  # an abstract class's instance never gets an identity
    text = identity.text
    if text is None:  # a loaded instance's: made once here, not by every load
        text = identity.text = str(identity.id)
    return trusted_reference(settings.external_name, text, identity.id)


def _new_identity(model: ExternalBaseModel, kind: type[Identity] = Identity) -> Identity:
    id, text = new_id()
    identity = kind(id, None, 0, None, True, None, text)
    _write_identity(model, identity)
    return identity


def dump_value(value: Any, mode: Literal["python", "json"]) -> Any:
    """``value`` serialized by Pydantic, external models inside it becoming references."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode=mode)
    return _ANY.dump_python(value, mode=mode)


_ANY: TypeAdapter[Any] = TypeAdapter(Any)
