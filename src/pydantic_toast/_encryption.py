"""Encryption at rest: AES-GCM under named keys, the key id recorded in every record.

A model opts in with ``encryption=EncryptionKeys({...}, current="...")`` in its
``ExternalConfigDict``. Every record it writes is then stored as a ``$toast`` envelope whose
codec chain ends with ``"aes-gcm"`` (after ``"zstd"`` when the record is compressed) and which
names the key it was encrypted with. Loads pick the key by that id, so keys rotate without a
flag day: new writes use ``current``, records written under older ids keep loading while their
keys stay in the mapping, and :func:`pydantic_toast.reencrypt` rewrites them under the current
key before an old one is dropped.

Turning encryption off runs the same way: ``EncryptionKeys.decrypt_only({...})`` holds keys
that only decrypt, so the model reads the records encrypted under them and writes every record
unencrypted; :func:`pydantic_toast.reencrypt` then rewrites the stored ones unencrypted, after
which ``encryption`` can go.

The stored bytes are a fresh 96-bit nonce followed by the AES-GCM ciphertext and its tag. The
associated data binds the ciphertext to the record's class name and id, so an encrypted payload
copied onto another record fails authentication instead of loading as that record.

AES-GCM comes from the ``cryptography`` package (the ``encryption`` extra).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from pydantic_toast._exceptions import EncryptionKeyError, StorageConfigurationError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["AES_GCM", "EncryptionKeys", "associated_data", "check_encryption"]

AES_GCM: Final = "aes-gcm"
"""The codec name recorded in an envelope's ``codecs``."""
_NONCE: Final = 12
_KEY_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_SIZES: Final = (16, 24, 32)


class EncryptionKeys:
    """AES-GCM keys by id: new records are encrypted with ``current``, loads use any of them.

    :meth:`decrypt_only` makes keys that only decrypt: records encrypted under them keep
    loading and every write stores its record unencrypted (the way to turn encryption off, see
    :func:`pydantic_toast.reencrypt`).

    Args:
        keys: Key id to key: 32 random bytes for AES-256 (16 or 24 for AES-128 or AES-192),
            for example ``os.urandom(32)`` kept in a secret store. Ids are 1 to 64 letters,
            digits, ``.``, ``_`` or ``-`` and are stored in every record, so never reuse an
            id for another key.
        current: The id of the key new writes use (``current`` is ``None`` on keys made by
            :meth:`decrypt_only`).

    Raises:
        StorageConfigurationError: An id or key is malformed, ``current`` is not one of the
            ids, or the ``cryptography`` package is missing. Messages never show a key.

    Examples:
        ``EncryptionKeys({"2026-06": old_key, "2026-12": new_key}, current="2026-12")``
        (a rotation), ``EncryptionKeys.decrypt_only({"2026-12": key})`` (turning it off).
    """

    __slots__ = ("_ciphers", "current")

    def __init__(self, keys: Mapping[str, bytes], *, current: str) -> None:
        ciphers = _ciphers(keys)
        if not isinstance(current, str) or current not in ciphers:
            # None too: an unset environment variable must not turn encryption off.
            raise StorageConfigurationError(
                f"EncryptionKeys: current={_shown(current)} is not one of the key ids "
                f"({', '.join(map(_shown, sorted(ciphers)))}): name one of them; for keys that "
                "only decrypt (records then written unencrypted), use "
                "EncryptionKeys.decrypt_only({...})"
            )
        self._ciphers = ciphers
        self.current: str | None = current

    @classmethod
    def decrypt_only(cls, keys: Mapping[str, bytes]) -> EncryptionKeys:
        """Keys that only decrypt: records encrypted under them keep loading, and every write
        stores its record unencrypted (the way to turn encryption off, see
        :func:`pydantic_toast.reencrypt`).

        Raises:
            StorageConfigurationError: As the constructor, for the keys.
        """
        made = cls.__new__(cls)
        made._ciphers = _ciphers(keys)
        made.current = None
        return made

    @property
    def ids(self) -> tuple[str, ...]:
        """The key ids this holds, sorted."""
        return tuple(sorted(self._ciphers))

    def __repr__(self) -> str:
        if self.current is None:
            return f"EncryptionKeys.decrypt_only(ids={list(self.ids)!r})"
        return f"EncryptionKeys(ids={list(self.ids)!r}, current={self.current!r})"

    def encrypt(self, data: bytes, associated: bytes) -> tuple[str, bytes]:
        """``data`` encrypted with the current key: ``(key id, nonce + ciphertext + tag)``.

        Raises:
            StorageConfigurationError: These keys only decrypt (made by ``decrypt_only``).
        """
        current = self.current
        if current is None:
            raise StorageConfigurationError(
                f"{self!r} only decrypts (EncryptionKeys.decrypt_only): name a current key "
                "to encrypt with"
            )
        nonce = os.urandom(_NONCE)
        return current, nonce + self._ciphers[current].encrypt(nonce, data, associated)

    def decrypt(
        self, key_id: str, payload: bytes, associated: bytes, *, class_name: str, id: UUID
    ) -> bytes:
        """``payload`` decrypted with the key ``key_id``.

        Raises:
            EncryptionKeyError: No key has that id, or it fails authentication with it.
        """
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise EncryptionKeyError(
                f"the stored {class_name} record {id} is encrypted with key id {key_id!r:.70}, "
                f"which its model's EncryptionKeys do not hold (it holds "
                f"{', '.join(self.ids)}): add that key under that id (keep old keys until "
                "pydantic_toast.reencrypt has rewritten every record); it is left untouched",
                class_name=class_name,
                id=id,
                key_id=key_id,
            )
        data: bytes | None
        try:
            data = cipher.decrypt(payload[:_NONCE], payload[_NONCE:], associated)
        except _aesgcm_invalid_tag():
            data = None
        if data is None:  # raised outside the except: nothing of the payload rides on a chain
            raise EncryptionKeyError(
                f"the stored {class_name} record {id} fails AES-GCM authentication with key "
                f"id {key_id!r:.70}: the key under that id is not the one the record was "
                "written with, or the record was moved from another id; it is left untouched "
                "(restore the right key under that id)",
                class_name=class_name,
                id=id,
                key_id=key_id,
            )
        return data


def _ciphers(keys: Mapping[str, bytes]) -> dict[str, Any]:
    """An AES-GCM cipher per key id of ``keys``, checked (messages never show a key)."""
    aesgcm = _aesgcm()
    if not isinstance(keys, Mapping) or not keys:
        raise StorageConfigurationError(
            "EncryptionKeys needs a non-empty mapping of key id to key bytes"
        )
    ciphers = {}
    for key_id, key in keys.items():
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise StorageConfigurationError(
                f"EncryptionKeys: key id {_shown(key_id)} must be 1 to 64 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit (the mapping is key id to "
                "key bytes)"
            )
        if not isinstance(key, bytes) or len(key) not in _KEY_SIZES:
            size = f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__
            raise StorageConfigurationError(
                f"EncryptionKeys: the key under id {_shown(key_id)} must be 32 bytes (AES-256; "
                f"16 or 24 for AES-128 or AES-192), got {size}: use os.urandom(32), or decode a "
                "key kept as text (base64.b64decode)"
            )
        ciphers[key_id] = aesgcm.AESGCM(key)
    return ciphers


def _shown(value: object) -> str:
    """``value`` given where a key id goes, for a message: a short text as itself, anything
    else by its kind only (bytes, or a long text such as hex or base64, may be a key)."""
    if value is None or (isinstance(value, str) and len(value) <= _SHOWN_ID):
        return repr(value)
    if isinstance(value, str):
        return f"<a text of {len(value)} characters, not shown: it may be a key>"
    return f"<{type(value).__name__}, not shown>"


_SHOWN_ID = 20
"""The longest key id a message shows (a 16-byte key is 24 characters of base64)."""


def associated_data(class_name: str, id: UUID) -> bytes:
    """What an encrypted record is bound to: its class name and id."""
    return f"pydantic-toast:{class_name}:{id}".encode()


def check_encryption(owner: str, value: object) -> EncryptionKeys | None:
    """The ``encryption`` setting of a model, checked."""
    if value is None or isinstance(value, EncryptionKeys):
        return value
    raise StorageConfigurationError(
        f"{owner}: encryption must be an EncryptionKeys({{key id: key bytes}}, current=...) "
        f"or None, got a {type(value).__name__}"
    )


_modules: tuple[ModuleType, type[Exception]] | None = None


def _load() -> tuple[ModuleType, type[Exception]]:
    global _modules
    if _modules is None:
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers import aead
        except ImportError:
            raise StorageConfigurationError(
                "encryption needs the cryptography package: pip install "
                "'pydantic-toast[encryption]'"
            ) from None
        _modules = (aead, InvalidTag)
    return _modules


def _aesgcm() -> ModuleType:
    return _load()[0]


def _aesgcm_invalid_tag() -> type[Exception]:
    return _load()[1]
