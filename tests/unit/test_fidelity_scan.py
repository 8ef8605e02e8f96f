"""The byte scan that picks the records whose read-back must be checked before a save."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pydantic_toast import _fidelity
from pydantic_toast._fidelity import DIGITS_AS_ZERO, suspicions


def _reference(data: bytes) -> tuple[bool, bool]:
    digits = data.translate(DIGITS_AS_ZERO)
    return b"0" * 19 in digits, b'+00:00"' in digits or b'-00:00"' in digits


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"at":"2026-01-02T03:04:05+05:30"}', (False, True)),
        (b'{"at":"2026-01-02T03:04:05-00:00"}', (False, True)),
        (b'{"at":"2026-01-02T03:04:05Z"}', (False, False)),
        (b'{"t":"12:00:00","n":"+1"}', (False, False)),  # a time ends like an offset, unsigned
        (b'{"t":"12:00:00","at":"2026-01-02T03:04:05+01:00"}', (False, True)),
        (b'+00:00"', (False, True)),
        (b'00:00"', (False, False)),
        (b'{"n":1234567890123456789}', (True, False)),
        (b'{"n":123456789012345678}', (False, False)),
    ],
)
def test_suspicions(data: bytes, expected: tuple[bool, bool]) -> None:
    """Nineteen digits in a row, and a signed offset closing a string, are what is flagged."""
    assert suspicions(data) == expected


@given(st.binary().map(lambda b: bytes(b'0123456789+-:"TZ. '[x % 18] for x in b)))
def test_one_search_finds_what_two_found(data: bytes) -> None:
    """The offset is found by one search and a look at the sign (was: one search per sign)."""
    assert suspicions(data) == _reference(data)


def test_a_large_records_json_is_not_kept_after_its_scan() -> None:
    """The translation kept for the jsonb scan holds small records only: a large record's JSON
    (and its translated copy) is not held by the module once its save is done."""
    small = b'{"n":12345}'
    assert _fidelity.digits_as_zero(small) is _fidelity.digits_as_zero(small)  # reused
    large = b'{"text":"' + b"7" * (_fidelity.REUSED_UP_TO + 1) + b'"}'
    assert _fidelity.digits_as_zero(large).count(b"0") == _fidelity.REUSED_UP_TO + 1
    assert large not in _fidelity._last_translation
    assert all(len(kept) <= _fidelity.REUSED_UP_TO for kept in _fidelity._last_translation)
