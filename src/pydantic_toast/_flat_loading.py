"""The batch load's fast path: a list of references to one model class without nested ones.

``avalidate(list[Order], references)`` is how a batch is loaded. When ``Order``'s fields
hold no external model, its records reference nothing: no cycle, no child, no second round
trip. Validating the list through Pydantic would then only call the reference hook once per
item, which finds the record in a :class:`~pydantic_toast._loading.LoadSession` and builds it.
This module does the same work without the per-item hook and session bookkeeping (each costs
more than the record's own validation): the references are parsed, their records read in
one ``load_records`` call (chunked by the backend), decoded when encoded, and validated in
one loop that looks up the class's validator once.

The result is the one Pydantic's validation gives: the same instances (one per record, shared
by repeated references), the same errors raised first in list order (a missing record, a
record that does not validate). Anything else — an item that is not a reference of the class
(full data, another class, a malformed reference), an untrusted boundary, a class whose own
validators wrap the reference hook — takes the general path, before any I/O.
"""

from __future__ import annotations

import typing
from itertools import repeat
from operator import attrgetter, is_
from typing import Any
from uuid import UUID

from pydantic_toast._boundary import current_boundary
from pydantic_toast._collector import paused_for
from pydantic_toast._data_schema import data_schema
from pydantic_toast._exceptions import ExternalStorageError
from pydantic_toast._loading import decoded
from pydantic_toast._records import ClassKeys, StoredRecord
from pydantic_toast._reference import (
    ExternalReference,
    parse_reference,
    uuid_from_text,
    uuids_from_canonical,
)
from pydantic_toast.runtime.storage import Storage

__all__ = ["FlatBatch", "flat_model_of"]

_INT_OF = attrgetter("int")
_MADE_TEXT = attrgetter("_toast_made_text")
_MADE_ID = attrgetter("_toast_made_id")
_EXTERNAL_ONLY = frozenset((ExternalReference,))
_REFERENCE_TYPES = frozenset((dict, ExternalReference))
_STR_ONLY = frozenset((str,))
_TWO = frozenset((2,))


def flat_model_of(type_: Any) -> Any:
    """The model class when ``type_`` is ``list[Model]`` of a flat external model, else ``None``.

    Flat: concrete, and no external model inside its fields. (:meth:`FlatBatch.parse` checks
    the rest on each call: the reference hook must be outermost, with no model validator of a
    subclass wrapping it, which Pydantic would run on each item.)
    """
    if typing.get_origin(type_) is not list:
        return None
    (model,) = typing.get_args(type_) or (None,)
    if getattr(model, "__toast_settings__", None) is None or model._toast_has_nested():
        return None
    return model


class FlatBatch:
    """The references of one list, parsed, waiting for their records.

    Made by :meth:`parse`; :meth:`fetch` reads the records, :meth:`build` validates them.

    Args:
        model: The flat model class (see :func:`flat_model_of`).
        ids: Each item's record id, in list order.
        unique: The distinct ids, in order of first appearance.
        slots: For each item, the index of its id in ``unique`` (empty when ``unique`` is
            ``ids``: no id repeats).
        texts: Each id in ``unique`` as its reference wrote it, when every one was a str.
        canonical: Whether ``texts`` are known to be ``str(id)`` each.
    """

    __slots__ = ("canonical", "ids", "model", "records", "slots", "texts", "unique")

    def __init__(
        self,
        model: Any,
        ids: list[UUID],
        unique: list[UUID],
        slots: list[int],
        texts: list[str] | None,
        *,
        canonical: bool = False,
    ) -> None:
        self.model = model
        self.ids = ids
        self.unique = unique
        self.slots = slots
        self.texts = texts
        self.canonical = canonical
        self.records: list[StoredRecord | None] = []

    @classmethod
    def parse(cls, model: Any, data: object) -> FlatBatch | None:
        """The batch of ``data``, or ``None`` when it must take the general path.

        ``data`` qualifies when it is a list whose items are all well-formed references to
        ``model``'s stored class name, validated as trusted code (no FastAPI boundary).
        """
        if type(data) is not list or not data or current_boundary() is not None:
            return None
        schema = data_schema(model)  # (checked per call: a model_rebuild() may change it)
        if schema is None or not schema.hook_at_root:
            return None
        name = model._toast_settings().external_name
        with paused_for(len(data)):  # (see build)
            canonical = _canonical(data, name)
            if canonical is not None:
                ids, texts = canonical
                if len(set(texts)) == len(ids):  # canonical texts: one text per id
                    return cls(model, ids, ids, [], texts, canonical=True)
            parsed = _one_by_one(data, name) if canonical is None else canonical
        if parsed is None:
            return None
        ids, texts = parsed
        if len(set(map(_INT_OF, ids))) == len(ids):
            return cls(model, ids, ids, [], texts)
        # Equal ids may be spelled differently (case, braces): one record, one instance.
        positions: dict[int, int] = {}
        slots = [positions.setdefault(id.int, len(positions)) for id in ids]
        unique = list({id.int: id for id in ids}.values())
        return cls(model, ids, unique, slots, None)

    async def fetch(self, storage: Storage) -> None:
        """Read the records (one ``load_records`` call) and decode the encoded ones."""
        settings = self.model._toast_settings()
        name = settings.external_name
        backend = await storage.connected(settings.url())
        records = await backend.load_records(
            ClassKeys(name, self.unique, self.texts, canonical=self.canonical)
        )
        codec = settings.codec
        self.records = await decoded(storage, records, lambda _: codec)

    def build(self) -> list[Any]:
        """The instances, in list order: one per record, shared by repeated references.

        A batch of :data:`~._collector.PAUSE_FROM` records or more is built with the garbage
        collector paused (see :mod:`._collector`).

        Raises:
            RecordNotFoundError: The first item, in list order, whose record does not exist.
            StoredDataError: The first record, in list order, that does not validate.
        """
        records = self.records
        with paused_for(len(records)):
            instances = self.model._toast_from_records(records, self.unique)
        if self.unique is self.ids:
            return instances  # type: ignore[no-any-return]
        return [instances[slot] for slot in self.slots]


def _canonical(data: list[Any], name: str) -> tuple[list[UUID], list[str]] | None:
    """The usual batch, ``adump``'s own references: each item a two-key plain or
    :class:`ExternalReference` dict of ``name`` whose id is ``str(UUID)``'s text. Checked a
    whole list at a time, each check a builtin mapped over it (no Python frame per item: the
    item-by-item loop of :func:`_one_by_one` cost 9,000 instructions a record). ``None`` when
    any item is otherwise: :func:`_one_by_one` reads them all then."""
    if not (_REFERENCE_TYPES.issuperset(map(type, data)) and _TWO.issuperset(map(len, data))):
        return None
    names = list(map(dict.get, data, repeat("class_name")))
    texts: list[Any] = list(map(dict.get, data, repeat("id")))
    if not (_STR_ONLY.issuperset(map(type, names)) and _STR_ONLY.issuperset(map(type, texts))):
        return None
    if names.count(name) != len(names):
        return None
    ids = _made_ids(data, texts) or uuids_from_canonical(texts)
    return None if ids is None else (ids, texts)


def _made_ids(data: list[Any], texts: list[str]) -> list[UUID] | None:
    """The ids the references were made with, when every item is an :class:`ExternalReference`
    whose ``"id"`` is still the very text it was made with (``str(id)``: see
    :func:`~._reference.made_with`), else ``None``.

    References collected from ``asave()`` (``adump`` of a list returns plain dicts): their
    ``UUID`` objects are reused, where parsing the texts built one per record (the batch's
    parse: 6,800 instructions a record, 3,000 so).
    """
    if not _EXTERNAL_ONLY.issuperset(map(type, data)):
        return None
    try:
        made = list(map(_MADE_TEXT, data))
    except AttributeError:  # one made without __init__ (copy.copy of one made so)
        return None
    if not all(map(is_, made, texts)):
        return None
    return list(map(_MADE_ID, data))


def _one_by_one(data: list[Any], name: str) -> tuple[list[UUID], list[str]] | None:
    """Each item's id, and its text (``""`` when not a str); ``None`` when an item is not a
    well-formed reference to ``name`` (validation reports where). Any list, item by item."""
    ids: list[UUID] = []
    texts: list[str] = []  # each item's id as written ("" when not a str)
    add, add_text = ids.append, texts.append
    for value in data:
        # The usual item, a plain or ExternalReference dict of this class with a str id,
        # checked inline; anything else as parse_reference() checks it.
        kind = type(value)
        if (kind is ExternalReference or kind is dict) and len(value) == 2:
            text, class_name = value.get("id"), value.get("class_name")
            if type(text) is str and type(class_name) is str and class_name == name:
                try:
                    add(uuid_from_text(text))
                except ValueError:  # malformed: validation reports where
                    return None
                add_text(text)
                continue
        try:
            reference = parse_reference(value)
        except ExternalStorageError:  # malformed: validation reports where
            return None
        if reference is None or reference[0] != name:
            return None
        add(reference[1])
        add_text("")
    return ids, texts
