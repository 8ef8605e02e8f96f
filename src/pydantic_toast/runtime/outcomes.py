"""A write whose reply was lost (or did not come within the timeout): what the store did, found
out by reading back, told truthfully.

A write lost after its request was sent may or may not have been applied, and repeating it
blindly would lie: the repeat of a revision-checked save that had landed finds the save's own
revision and reports a conflict ("nothing was written") although the data is stored; the
repeat of a delete that had landed reports the record missing. So a write is never repeated
after it was sent. A save is settled by reading its records back (a read is safe to repeat):

* every record holds what this save wrote (the same data, schema version and ``updated_at``,
  at the revision it expected plus one): the save succeeded, and that is what is reported;
* the records not written are untouched (still at the revision the save expected, or absent
  when it expected none) or were saved with last write wins: they are written once more. A
  revision-checked write cannot land twice (the second finds the first's revision), and a
  conflict that second write reports is read back once more, in case it was the first
  attempt landing late;
* anything else (changed by another writer since, deleted, unreadable):
  :class:`~pydantic_toast.OutcomeUnknownError`, naming the record and what reading back found.

Reading back meets the store as the lost reply left it: restarting, failing over, its
connections dropped. While it answers busy (:class:`~pydantic_toast.StorageBusyError`) or
cannot be reached, reading back is tried again after a pause
(:class:`~pydantic_toast.runtime.backoff.Backoff`), for as long as the backend waits for one
reply (its :meth:`~pydantic_toast.StorageBackend.reply_timeout`; 10 s when it sets none);
still failing then, the save's outcome is unknown.

A delete or a purge lost after it was sent raises :class:`~pydantic_toast.OutcomeUnknownError`
(:func:`unknown`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic_toast._exceptions import (
    ConcurrencyError,
    ExternalStorageError,
    OutcomeUnknownError,
    shorten,
)
from pydantic_toast._records import RecordKey, StoredRecord, written_by
from pydantic_toast.runtime.backoff import Backoff

if TYPE_CHECKING:
    from pydantic_toast.runtime.boundary import Connected

__all__ = ["settle_save", "unknown"]

_FIX = {
    "save": "load the record, check its revision and data, and save again if the change is "
    "not there",
    "delete": "load the record to see whether it is gone, and delete it again if it is not",
    "purge": "run the purge again: it deletes only records that have expired",
}

SETTLE_SECONDS = 10.0
"""How long reading back is tried again for a backend whose ``reply_timeout()`` is ``None``."""


async def settle_save(
    connected: Connected,
    records: Sequence[StoredRecord],
    *,
    again: bool,
    timed_out: bool = False,
) -> list[int] | None:
    """The outcome of a save of ``records`` whose connection was lost after it was sent (or
    whose reply did not come in time: ``timed_out``).

    Returns the new revisions when the store holds what the save wrote (after writing the
    untouched records once more, when ``again``); raises
    :class:`~pydantic_toast.OutcomeUnknownError` when reading back cannot tell, and the
    :class:`~pydantic_toast.ConcurrencyError` of the repeated write when another writer
    changed a record in between.
    """
    backoff = Backoff(_settle_seconds(connected))  # one deadline for every read back of it
    stored = await _read_back(connected, records, timed_out, backoff)
    pending = [i for i, record in enumerate(records) if not written_by(record, stored[i])]
    if not pending:
        return _revisions(stored)
    if not again or not all(_untouched(records[i], stored[i]) for i in pending):
        raise _unknown_save(connected, records, stored, pending, again=again, timed_out=timed_out)
    rest = [records[i] for i in pending]
    try:
        rewritten = await connected.write_records(rest, again=False)
    except ConcurrencyError:
        # The first attempt may have landed after it was read back: read again.
        late = await _read_back(connected, rest, timed_out, backoff)
        if not all(written_by(record, found) for record, found in zip(rest, late, strict=True)):
            raise
        rewritten = _revisions(late)
    if rewritten is None:
        return None
    merged = [None if found is None else found.revision for found in stored]
    for position, revision in zip(pending, rewritten, strict=True):
        merged[position] = revision
    return _complete(merged)


def unknown(
    connected: Connected,
    operation: str,
    keys: Sequence[RecordKey],
    why: str = "; it was not repeated.",
    *,
    timed_out: bool = False,
    ended: str | None = None,
    fix: str | None = None,
) -> OutcomeUnknownError:
    """The error for a write (``delete``, ``purge``, a save ``why`` explains) lost after it was
    sent, or whose reply did not come in time (``timed_out``); ``ended``: what is known of a
    timed out write that cannot apply later (see
    :func:`~pydantic_toast.runtime.boundary.ended_unknown`), and ``fix`` what to do then
    (default: the operation's check)."""
    return OutcomeUnknownError(
        f"{_lost_after_sending(connected, operation, timed_out, ended)}{why} "
        f"{_records_named(keys)}{fix or _FIX.get(operation, _FIX['save'])}",
        url=connected.url.masked,
        operation=operation,
        keys=tuple(keys),
    )


async def _read_back(
    connected: Connected, records: Sequence[StoredRecord], timed_out: bool, backoff: Backoff
) -> list[StoredRecord | None]:
    try:
        return await connected.load_records([record.key for record in records], backoff=backoff)
    except ExternalStorageError as exc:
        keys = [record.key for record in records]
        tried = f", tried again for {backoff.seconds:g} s" if backoff.pauses else ""
        why = (
            f", and reading the records back failed too ({type(exc).__name__}: "
            f"{shorten(exc, 400)}){tried}; the save was not repeated."
        )
        raise unknown(connected, "save", keys, why, timed_out=timed_out) from exc


def _settle_seconds(connected: Connected) -> float:
    """How long reading back a save of ``connected`` is tried again: the backend's reply
    timeout, when it is a positive finite number (a backend of the application's own may
    answer anything; NaN would never end the wait), else :data:`SETTLE_SECONDS`."""
    seconds = connected.backend.reply_timeout()
    if isinstance(seconds, int | float) and 0 < seconds < math.inf:
        return float(seconds)
    return SETTLE_SECONDS


def _untouched(record: StoredRecord, found: StoredRecord | None) -> bool:
    """Whether writing ``record`` once more cannot repeat a write that already landed."""
    if record.revision is None:  # last write wins: writing again is what was asked
        return True
    if record.revision == 0:
        return found is None
    return found is not None and found.revision == record.revision


def _revisions(stored: Sequence[StoredRecord | None]) -> list[int] | None:
    return _complete([None if found is None else found.revision for found in stored])


def _complete(revisions: list[int | None]) -> list[int] | None:
    """The revisions, or ``None`` from a backend that keeps none."""
    known = [revision for revision in revisions if revision is not None]
    return known if len(known) == len(revisions) else None


def _unknown_save(
    connected: Connected,
    records: Sequence[StoredRecord],
    stored: Sequence[StoredRecord | None],
    pending: Sequence[int],
    *,
    again: bool,
    timed_out: bool,
) -> OutcomeUnknownError:
    first = pending[0]
    record, found = records[first], stored[first]
    name = f"{shorten(record.class_name)} record {record.id}"
    if found is None:
        state = "is not stored (deleted since?)" if record.revision else "is not stored"
    elif record.revision is not None and found.revision == record.revision:
        state = f"is still at revision {found.revision}"
    else:
        expected = "" if record.revision is None else f", this save expected {record.revision}"
        state = f"holds other data at revision {found.revision}{expected}"
    why = "" if again else " after the save was already sent twice"
    keys = [records[i].key for i in pending]
    return unknown(
        connected,
        "save",
        keys,
        f", and reading back shows that {name} {state}{why}: another writer may have changed "
        "it since, so the save was not repeated.",
        timed_out=timed_out,
    )


def _lost_after_sending(
    connected: Connected, operation: str, timed_out: bool, ended: str | None = None
) -> str:
    if timed_out and ended is not None:  # it cannot apply later: say what is known instead
        return (
            f"the reply of {connected.where} to the {operation} did not come within the "
            f"timeout; {ended}"
        )
    if timed_out:
        return (
            f"the reply of {connected.where} to the {operation} did not come within the "
            "timeout: whether the store applied it (or still will) is unknown"
        )
    return (
        f"the connection to {connected.where} was lost after the {operation} was sent: "
        "whether the store applied it is unknown"
    )


def _records_named(keys: Sequence[RecordKey]) -> str:
    if not keys:
        return "To resolve it: "
    class_name, id = keys[0]
    more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
    return f"Records concerned: {shorten(class_name)} {id}{more}. To resolve it: "
