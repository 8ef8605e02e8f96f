"""The byte scan that picks the records whose read-back must be checked before a save."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pydantic_toast import _fidelity
from pydantic_toast._fidelity import may_be_unreadable


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"n":1234567890123456789}', True),
        (b'{"n":-1234567890123456789}', True),
        (b'{"n":123456789012345678}', False),
        (b'{"s":"12345678901234567890"}', True),  # a string: only a needless check
        (b'{"at":"2026-01-02T03:04:05+05:30"}', False),
    ],
)
def test_nineteen_digits_in_a_row_are_flagged(data: bytes, expected: bool) -> None:
    """Nineteen digits in a row (an integer that may be beyond 63 bits) are what is flagged."""
    assert may_be_unreadable(data) is expected


@given(st.binary().map(lambda b: bytes(b'0123456789+-:"eE '[x % 17] for x in b)))
def test_the_scan_agrees_with_a_plain_search(data: bytes) -> None:
    """The translated search finds exactly the runs a regular expression finds."""
    assert may_be_unreadable(data) is (re.search(rb"[0-9]{19}", data) is not None)


def test_a_large_records_json_is_not_kept_after_its_scan() -> None:
    """The translation kept for the jsonb scan holds small records only: a large record's JSON
    (and its translated copy) is not held by the module once its save is done."""
    small = b'{"n":12345}'
    assert _fidelity.digits_as_zero(small) is _fidelity.digits_as_zero(small)  # reused
    large = b'{"text":"' + b"7" * (_fidelity.REUSED_UP_TO + 1) + b'"}'
    assert _fidelity.digits_as_zero(large).count(b"0") == _fidelity.REUSED_UP_TO + 1
    assert large not in _fidelity._last_translation
    assert all(len(kept) <= _fidelity.REUSED_UP_TO for kept in _fidelity._last_translation)
