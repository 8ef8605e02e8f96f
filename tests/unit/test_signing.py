"""Signed references without FastAPI: sign, verify, rotation, expiry, and keys kept secret."""

from __future__ import annotations

import hmac
import pickle
from datetime import timedelta
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import (
    InvalidReferenceError,
    SigningKeys,
    StorageConfigurationError,
    sign_reference,
    verify_reference,
)

KEY = b"k" * 32
OTHER = b"o" * 32


def reference() -> dict[str, str]:
    return {"class_name": "Order", "id": str(uuid4())}


def test_sign_then_verify_returns_the_plain_reference() -> None:
    plain = reference()
    signed = sign_reference(plain, SigningKeys(KEY))
    assert set(signed) == {"class_name", "id", "signature"}
    assert signed.reference == plain
    assert verify_reference(signed, SigningKeys(KEY)) == plain
    assert type(verify_reference(signed, SigningKeys(KEY))) is pydantic_toast.ExternalReference


def test_signature_binds_class_name_id_and_expiry() -> None:
    keys = SigningKeys(KEY, expires_in=timedelta(hours=1))
    signed = sign_reference(reference(), keys)
    assert isinstance(signed["expires_at"], int)
    for altered in (
        {**signed, "class_name": "Customer"},
        {**signed, "id": str(uuid4())},
        {**signed, "expires_at": signed["expires_at"] + 1},
        {k: v for k, v in signed.items() if k != "expires_at"},
    ):
        with pytest.raises(InvalidReferenceError, match="signature does not verify"):
            verify_reference(altered, keys)


def test_rotation_newest_signs_all_verify_with_constant_time_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    old = sign_reference(reference(), SigningKeys(OTHER))
    rotated = SigningKeys(KEY, OTHER)
    assert verify_reference(old, rotated) == old.reference
    assert len(calls) == 2  # every key tried, each with hmac.compare_digest
    new = sign_reference(reference(), rotated)
    assert verify_reference(new, SigningKeys(KEY)) == new.reference
    with pytest.raises(InvalidReferenceError):
        verify_reference(new, SigningKeys(OTHER))


def test_expired_reference_is_refused() -> None:
    keys = SigningKeys(KEY)
    signed = sign_reference(reference(), keys, expires_in=timedelta(seconds=-5))
    with pytest.raises(InvalidReferenceError, match="expired"):
        verify_reference(signed, keys)


def test_unsigned_and_malformed_references_are_refused() -> None:
    """An unsigned reference, and a signature or expiry of the wrong shape (a signature not in
    base64url: lone surrogates failed to encode, a 500 in FastAPI), are InvalidReferenceError."""
    keys = SigningKeys(KEY)
    with pytest.raises(InvalidReferenceError, match="unsigned reference is refused"):
        verify_reference(reference(), keys)
    signed = sign_reference(reference(), keys)
    for broken in (
        {**signed, "signature": "short"},
        {**signed, "signature": "\ud800" * 43},  # a JSON escape can send a lone surrogate
        {**signed, "signature": "\u00e9" * 43},
        {**signed, "expires_at": "soon"},
    ):
        with pytest.raises(InvalidReferenceError, match=r"malformed|Unix time"):
            verify_reference(broken, keys)
    with pytest.raises(InvalidReferenceError, match="not a model's data"):
        sign_reference({"name": "data"}, keys)


def test_keys_never_show() -> None:
    secret = "a-very-secret-signing-key-of-32-bytes!!"
    keys = SigningKeys(secret.encode(), OTHER)
    assert secret not in repr(keys)
    assert "2 key(s) hidden" in repr(keys)
    signed = sign_reference(reference(), keys)
    assert secret not in repr(signed)
    with pytest.raises(InvalidReferenceError) as refused:
        verify_reference({**signed, "id": str(uuid4())}, keys)
    assert secret not in str(refused.value)
    assert secret not in repr(refused.value)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(keys)


def test_weak_keys_are_refused() -> None:
    with pytest.raises(StorageConfigurationError, match="at least one key"):
        SigningKeys()
    with pytest.raises(StorageConfigurationError, match=r"#2 has 5 bytes.*token_bytes\(32\)"):
        SigningKeys(KEY, b"short")
    with pytest.raises(StorageConfigurationError, match="positive"):
        SigningKeys(KEY, expires_in=timedelta(0))


def test_str_keys_are_refused_without_showing_them() -> None:
    """A str (a password, a hex string) is not random bytes: refused, naming bytes to pass."""
    secret = "a" * 40
    with pytest.raises(StorageConfigurationError) as refused:
        SigningKeys(KEY, secret)  # type: ignore[arg-type]
    message = str(refused.value)
    assert message.startswith("signing key #2 is a str: pass bytes")
    assert "secrets.token_bytes(32)" in message
    assert "bytes.fromhex(" in message
    assert secret not in message
    with pytest.raises(StorageConfigurationError, match="#1 is of type int, not bytes"):
        SigningKeys(12345)  # type: ignore[arg-type]
    assert "1 key(s)" in repr(SigningKeys(bytearray(KEY)))
