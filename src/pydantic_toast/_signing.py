"""Signed references: hand a reference across a trust boundary and check it before any read.

A reference is a capability (whoever holds one can read the record). To give one to a browser,
a queue or another service and take it back later, sign it: :func:`sign_reference` adds an
HMAC-SHA256 ``signature`` (and optionally an ``expires_at``) bound to the class name and the id,
and :func:`verify_reference` checks it, in constant time, without touching storage.
:class:`SigningKeys` holds the keys: the first signs, every one verifies, so keys rotate without
a flag day.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any
from uuid import UUID

from pydantic_toast._exceptions import InvalidReferenceError, StorageConfigurationError
from pydantic_toast._reference import (
    ExternalReference,
    ParsedReference,
    RoutedAsSent,
    parse_reference,
    unexpected_keys,
)

__all__ = [
    "MIN_KEY_BYTES",
    "SignedReference",
    "SigningKeys",
    "parse_signed",
    "response_keys",
    "sign_reference",
    "signed_json_schema",
    "signing_responses",
    "signing_schemas",
    "verify_parsed",
    "verify_reference",
]

MIN_KEY_BYTES = 32
"""The shortest key accepted, in bytes: ``secrets.token_bytes(32)`` gives a good one."""

_VERSION = "pydantic-toast reference signature v1"
_SIGNATURE_CHARS = 43  # 32 bytes of HMAC-SHA256, base64url without padding
_SIGNATURE = re.compile(f"[A-Za-z0-9_-]{{{_SIGNATURE_CHARS}}}")
_SIGNED_KEYS = frozenset(("class_name", "id", "signature"))
_EXPIRING_KEYS = _SIGNED_KEYS | {"expires_at"}
_SIGNED_NAMES = frozenset(map(repr, ("signature", "expires_at")))  # as unexpected_keys() names them


def _key_bytes(position: int, key: object) -> bytes:
    """``key`` as bytes; a ``str`` refused, naming the fix (its value never shown)."""
    if isinstance(key, str):
        raise StorageConfigurationError(
            f"signing key #{position + 1} is a str: pass bytes, secrets.token_bytes(32) for a "
            "new key or bytes.fromhex(...) of one kept as hex (key.encode() instead keeps "
            "verifying what this str key signed)"
        )
    if not isinstance(key, bytes | bytearray | memoryview):
        raise StorageConfigurationError(
            f"signing key #{position + 1} is of type {type(key).__name__}, not bytes: pass "
            "secrets.token_bytes(32)"
        )
    return bytes(key)


class SigningKeys:
    """The secret keys that sign and verify references.

    Args:
        *keys: One or more secret keys, ``bytes`` of at least :data:`MIN_KEY_BYTES` random
            bytes (``secrets.token_bytes(32)``; ``bytes.fromhex(...)`` of a key kept as hex),
            newest first: the first signs, all of them verify. To rotate, put the new key first and
            drop the old one once what it signed has expired or been replaced.
        expires_in: How long a reference signed with these keys stays valid (``None``: until
            its key is dropped). :func:`sign_reference` can override it per call.

    The keys never appear in a ``repr``, a message or a log line.

    Raises:
        StorageConfigurationError: No key, a ``str`` key (a password or a hex string is not
            random bytes), or a key shorter than :data:`MIN_KEY_BYTES`.
    """

    __slots__ = ("_keys", "expires_in")

    def __init__(self, *keys: bytes, expires_in: timedelta | None = None) -> None:
        encoded = [_key_bytes(position, key) for position, key in enumerate(keys)]
        if not encoded:
            raise StorageConfigurationError(
                "SigningKeys needs at least one key: pass secrets.token_bytes(32) "
                "(kept secret, the same on every process that verifies)"
            )
        for position, key in enumerate(encoded):
            if len(key) < MIN_KEY_BYTES:
                raise StorageConfigurationError(
                    f"signing key #{position + 1} has {len(key)} bytes, fewer than "
                    f"{MIN_KEY_BYTES}: use secrets.token_bytes({MIN_KEY_BYTES})"
                )
        if expires_in is not None and expires_in <= timedelta(0):
            raise StorageConfigurationError(
                "SigningKeys(expires_in=...) must be a positive timedelta, or None"
            )
        self._keys = tuple(encoded)
        self.expires_in = expires_in

    def __repr__(self) -> str:
        return f"SigningKeys(<{len(self._keys)} key(s) hidden>, expires_in={self.expires_in!r})"

    def __reduce__(self) -> Any:
        raise TypeError("SigningKeys cannot be pickled: pass the keys to each process instead")

    def _mac(self, key: bytes, class_name: str, id: UUID, expires_at: int | None) -> str:
        message = json.dumps([_VERSION, class_name, str(id), expires_at], separators=(",", ":"))
        digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _signature(self, class_name: str, id: UUID, expires_at: int | None) -> str:
        return self._mac(self._keys[0], class_name, id, expires_at)

    def _matches(self, class_name: str, id: UUID, expires_at: int | None, given: str) -> bool:
        # Every key is tried (no early exit), each with a constant-time comparison.
        matched = False
        for key in self._keys:
            expected = self._mac(key, class_name, id, expires_at)
            matched |= hmac.compare_digest(expected.encode(), given.encode())
        return matched


class SignedReference(dict[str, Any]):
    """A reference with its signature: ``{"class_name", "id", "signature"[, "expires_at"]}``.

    A ``dict`` (JSON-ready, Pydantic serializes it as one); ``expires_at`` is a Unix time in
    whole seconds, present only when the reference expires. :attr:`reference` is the plain
    reference, to load with ``await Model.aload(...)`` *after* :func:`verify_reference`.
    """

    __slots__ = ()

    @property
    def reference(self) -> ExternalReference:
        """The plain ``{"class_name", "id"}`` reference (not verified by this property)."""
        return ExternalReference(self["class_name"], self["id"])

    def __repr__(self) -> str:
        return f"SignedReference({dict.__repr__(self)})"


def sign_reference(
    reference: Mapping[str, Any], keys: SigningKeys, *, expires_in: timedelta | None = None
) -> SignedReference:
    """Sign ``reference`` (what ``asave()``/``model_dump()`` returned) with the newest key.

    Args:
        reference: A ``{"class_name", "id"}`` reference.
        keys: The keys; the first one signs.
        expires_in: How long the signed reference is valid; ``keys.expires_in`` by default.

    Raises:
        InvalidReferenceError: ``reference`` is not a well-formed reference.
    """
    parsed = parse_reference(reference)
    if parsed is None:
        raise InvalidReferenceError(
            "sign_reference() takes a reference {'class_name': ..., 'id': ...} (what asave() "
            "returns), not a model's data"
        )
    class_name, id = parsed
    lifetime = expires_in if expires_in is not None else keys.expires_in
    expires_at = None if lifetime is None else math.ceil(time.time() + lifetime.total_seconds())
    signed = SignedReference(class_name=class_name, id=str(id))
    signed["signature"] = keys._signature(class_name, id, expires_at)
    if expires_at is not None:
        signed["expires_at"] = expires_at
    return signed


def parse_signed(value: object) -> tuple[ParsedReference, str, int | None] | None:
    """``((class_name, id), signature, expires_at)`` when ``value`` has a signed reference's shape.

    ``None`` for anything else (a plain reference, data). Malformed parts raise.

    Raises:
        InvalidReferenceError: The shape of a signed reference with a malformed part.
    """
    if not isinstance(value, Mapping) or not value.keys() >= _SIGNED_KEYS:
        return None
    if not value.keys() <= _EXPIRING_KEYS:
        # Routed by a discriminated union (its tag added): read as it was sent.
        return parse_signed(value.sent) if type(value) is RoutedAsSent else None
    parsed = parse_reference({"class_name": value["class_name"], "id": value["id"]})
    assert parsed is not None  # the two keys are there
    signature: Any = value["signature"]
    expires_at: Any = value.get("expires_at")
    # Only base64url: a lone surrogate (a "\\ud800" escape in JSON) failed to encode inside
    # the check, an error other than InvalidReferenceError (a 500 in FastAPI).
    if not isinstance(signature, str) or _SIGNATURE.fullmatch(signature) is None:
        raise InvalidReferenceError(
            f"the {parsed[0]} reference's signature is malformed: pass it exactly as received",
            class_name=parsed[0],
        )
    if expires_at is not None and (type(expires_at) is not int or expires_at < 0):
        raise InvalidReferenceError(
            f"the {parsed[0]} reference's expires_at is not a Unix time in seconds",
            class_name=parsed[0],
        )
    return parsed, signature, expires_at


def verify_parsed(
    parsed: ParsedReference, signature: str, expires_at: int | None, keys: SigningKeys
) -> str | None:
    """Why the signed reference is refused (for the server log), ``None`` when it verifies."""
    class_name, id = parsed
    if not keys._matches(class_name, id, expires_at, signature):
        return (
            f"the {class_name} reference's signature does not verify: it was altered, or signed "
            "with a key that is no longer among the SigningKeys"
        )
    if expires_at is not None and expires_at < time.time():
        return f"the signed {class_name} reference expired (expires_at={expires_at})"
    return None


def verify_reference(value: object, keys: SigningKeys) -> ExternalReference:
    """The plain reference inside a signed one, once its signature and expiry check out.

    Nothing is read from storage: a forged, altered or expired reference is refused before
    anything could learn whether its record exists. Load the result with ``aload``.

    Raises:
        InvalidReferenceError: ``value`` is not a signed reference, its signature does not
            verify with any of ``keys``, or it expired.
    """
    signed = parse_signed(value)
    extra = unexpected_keys(value) if signed is None else None
    if extra is not None and not _SIGNED_NAMES.issuperset(extra):
        raise InvalidReferenceError(
            "verify_reference() takes a signed reference exactly as sign_reference() made it "
            f"{{'class_name', 'id', 'signature'[, 'expires_at']}}: this one has the unexpected "
            f"keys {', '.join([key for key in extra if key not in _SIGNED_NAMES][:5])}"
        )
    if signed is None:
        raise InvalidReferenceError(
            "verify_reference() takes a signed reference {'class_name', 'id', 'signature'"
            "[, 'expires_at']}: an unsigned reference is refused"
        )
    parsed, signature, expires_at = signed
    problem = verify_parsed(parsed, signature, expires_at, keys)
    if problem is not None:
        raise InvalidReferenceError(problem, class_name=parsed[0])
    return ExternalReference(*parsed)


# -- where an integration turns signing on -----------------------------------------------------

_responses: ContextVar[SigningKeys | None] = ContextVar("pydantic_toast_signing", default=None)
_schemas: ContextVar[bool] = ContextVar("pydantic_toast_signed_schemas", default=False)


@contextmanager
def signing_responses(keys: SigningKeys | None) -> Iterator[None]:
    """External models serialized inside the block (outside a dump) give signed references.

    For an integration's response serialization only: stored data always holds plain
    references (a nested model is collected into its parent's dump, never signed).
    """
    token = _responses.set(keys)
    try:
        yield
    finally:
        _responses.reset(token)


def response_keys() -> SigningKeys | None:
    """The keys that sign serialized references now, ``None`` when nothing is signed."""
    return _responses.get()


@contextmanager
def signing_schemas() -> Iterator[None]:
    """JSON schemas generated inside the block describe references as signed ones."""
    token = _schemas.set(True)
    try:
        yield
    finally:
        _schemas.reset(token)


def signed_json_schema(reference: dict[str, Any]) -> dict[str, Any]:
    """``reference`` (a reference's JSON schema) as a signed reference's, when schemas are."""
    if not _schemas.get():
        return reference
    properties = dict(reference["properties"])
    properties["signature"] = {
        "type": "string",
        "pattern": f"^[A-Za-z0-9_-]{{{_SIGNATURE_CHARS}}}$",
        "description": "HMAC-SHA256 of the class name, id and expiry (base64url)",
    }
    properties["expires_at"] = {
        "type": "integer",
        "minimum": 0,
        "description": "Unix time (seconds) after which the reference is refused",
    }
    return {
        **reference,
        "title": reference["title"].replace(" reference", " signed reference"),
        "properties": properties,
        "required": [*reference["required"], "signature"],
    }
