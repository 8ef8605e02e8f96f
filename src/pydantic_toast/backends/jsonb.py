"""What PostgreSQL's ``jsonb`` cannot keep, found by a byte scan of the JSON Pydantic wrote.

``jsonb`` stores numbers as ``numeric``: ``-0.0`` loses its sign and a float in exponent form
comes back expanded (``1e+16`` as the integer ``10000000000000000``), so an ``int | float``,
``Any`` or ``dict[str, Any]`` field would change type. Such records keep their exact JSON text
in ``data_exact`` beside the ``jsonb``. ``jsonb`` refuses NaN, the infinities and ``\\u0000``
outright: those records are refused before they are sent, naming the field. ``jsonb`` also
sorts an object's keys its own way: the records of a class holding an ``OrderedDict``, whose
``==`` compares key order, keep their exact text too (see ``_key_order``).

The scans look for a number right after ``:``, ``,`` or ``[`` (Pydantic's compact JSON has no
spaces), so dates and UUIDs inside strings do not match; a string that happens to contain such
bytes only costs an unneeded ``data_exact`` copy or a closer look.
"""

from __future__ import annotations

import math
import re

from pydantic_toast._exceptions import StorageValidationError
from pydantic_toast._fidelity import (
    DIGITS_AS_ZERO,
    REUSED_UP_TO,
    digits_as_zero,
    locate,
    stored_field_names,
)
from pydantic_toast._key_order import KEY_ORDER_KEPT
from pydantic_toast._records import StoredRecord

__all__ = ["exact_text", "needs_exact_text", "refuse_unstorable"]

_REWRITTEN_NUMBER = re.compile(rb"[:,\[]-?[0-9][0-9.]*[eE]|[:,\[]-0(?:\.0*)?[,\]}]")
_UNSTORABLE = re.compile(rb"\\u0000|[:,\[]-?(?:NaN|Infinity)")
# Records up to this size are scanned whole (their translation is the save's own, reused);
# larger ones in pieces of this size (see _has_exponent).
_SCAN_PIECE = REUSED_UP_TO


def exact_text(record: StoredRecord) -> str | None:
    """The record's JSON as text when ``jsonb`` would rewrite a number in it or lose its key
    order (an ``OrderedDict``'s), else ``None``."""
    return record.data.decode() if needs_exact_text(record) else None


def needs_exact_text(record: StoredRecord) -> bool:
    """Whether ``jsonb`` would rewrite a number in the record's JSON, or lose the key order
    its class keeps (then its text is kept too)."""
    # Substring searches run at C speed; the regex runs only when one of them hits. With
    # digits as 0 and E as e, a digit followed by an exponent marker is one search (the
    # translation the save already made for its own checks; in pieces for a large record).
    # A record whose class writes no float was vouched for by its save (see _number_plan).
    # (bytes.find, not ``in``: ``in`` first tries its operand as an integer and formats the
    # TypeError it then discards, 2k instructions per test, 20k of a 10-field save.)
    # A class holding an OrderedDict keeps its text for its key order (see _key_order). Its
    # records are never vouched free of floats (an OrderedDict is no simple field, see
    # _number_plan): only scanned records are looked up, and none while no such class exists.
    if record.without_floats:
        return False
    data = record.data
    if len(data) <= _SCAN_PIECE:
        if (data.find(b"-") < 0 or data.find(b"-0.0") < 0) and digits_as_zero(data).find(b"0e") < 0:
            return _keeps_key_order(record) if KEY_ORDER_KEPT else False
    elif data.find(b"-0.0") < 0 and not _has_exponent(data):
        return _keeps_key_order(record) if KEY_ORDER_KEPT else False
    return _REWRITTEN_NUMBER.search(data) is not None or _keeps_key_order(record)


def _keeps_key_order(record: StoredRecord) -> bool:
    return record.class_name in KEY_ORDER_KEPT


def _has_exponent(data: bytes) -> bool:
    """Whether a digit is followed by ``e`` or ``E`` in ``data``, scanned in pieces.

    Translating the whole of a large record would copy it; pieces overlapping by one byte
    find the same pairs.
    """
    view = memoryview(data)
    for start in range(0, len(data), _SCAN_PIECE):
        piece = bytes(view[max(start - 1, 0) : start + _SCAN_PIECE])
        if piece.translate(DIGITS_AS_ZERO).find(b"0e") >= 0:
            return True
    return False


def refuse_unstorable(record: StoredRecord) -> None:
    """Raise if ``record`` holds NaN, an infinity or a NUL character, which ``jsonb`` refuses.

    Raises:
        StorageValidationError: Naming the class, the id and the field.
    """
    data = record.data
    # One-byte searches (memchr) first: without an "N", an "I" or a backslash (a NUL is
    # written escaped), the longer search for that token is not needed. (find, not ``in``:
    # see needs_exact_text.)
    find = data.find
    if (
        (find(b"N") < 0 or find(b"NaN") < 0)
        and (find(b"I") < 0 or find(b"Infinity") < 0)
        and (find(b"\\") < 0 or find(b"\\u0000") < 0)
    ):
        return
    if _UNSTORABLE.search(data) is None:
        return
    names = stored_field_names(record.class_name)
    field = locate(record.data, _is_nan_or_infinite, names)
    if field is not None:
        what = "NaN or Infinity"
        fix = "use None instead, or another backend (SQLite, Redis)"
    else:
        field = locate(record.data, _holds_nul, names)
        if field is None:
            return  # the bytes were inside a string: nothing jsonb refuses
        what = "the NUL character (\\u0000)"
        fix = (
            "strip NUL characters from the data; for a bytes field, store it as base64 "
            "(model_config ser_json_bytes='base64' and val_json_bytes='base64'); or use another "
            "backend (SQLite, Redis)"
        )
    raise StorageValidationError(
        f"the {record.class_name} field {field} holds {what}, which PostgreSQL's jsonb cannot "
        f"store: nothing was written; {fix}",
        class_name=record.class_name,
        id=record.id,
        field=field,
    )


def _is_nan_or_infinite(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _holds_nul(value: object) -> bool:
    return isinstance(value, str) and "\x00" in value
