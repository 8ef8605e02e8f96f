"""Stored-data codecs: compression above a size threshold, encryption, SHA-256, a bomb limit.

A model opts in with ``compression="zstd"`` in its ``ExternalConfigDict``. Its records whose JSON
is at least ``compress_above`` bytes are then stored as an *envelope*, a JSON object with the
single key ``"$toast"`` that every backend stores like any other data::

    {"$toast": {"codecs": ["zstd"], "size": 1048576, "sha256": "<hex>", "payload": "<base64>"}}

``codecs`` lists the codecs applied, in order (a load undoes them in reverse); ``size`` is the
length of the JSON they were applied to; ``sha256`` is the digest of the stored bytes (the
decoded ``payload``), checked before anything is decompressed. Smaller records, and every
record of a model without ``compression`` or ``encryption``, stay plain JSON, and a load tells
the two apart by the envelope's key: field names are Python identifiers, so no model's own data
starts with ``{"$toast"``. Records written before a model turned compression on keep loading,
and so do compressed ones after it is turned off.

A model with ``encryption`` (:mod:`pydantic_toast._encryption`) whose keys have a current one
stores every record as an envelope whose chain ends with ``"aes-gcm"``, compressed first when
large enough, the way Temporal runs its payload codecs (compression, then encryption) and
offloads afterwards; the envelope names the key in ``"key"``::

    {"$toast": {"codecs": ["zstd", "aes-gcm"], "key": "2026-12", "size": ..., "sha256": ...,
                "payload": "<base64 of nonce + ciphertext + tag>"}}

A load refuses to decompress more than ``max_decompressed_size`` bytes (default 64 MiB), so a
record crafted to expand without end (a decompression bomb) costs at most that much memory.

zstd comes from the standard library's ``compression.zstd`` on Python 3.14 and from its
backport, ``backports.zstd`` (the ``zstd`` extra), before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from operator import itemgetter, methodcaller
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

import pydantic_core

from pydantic_toast._encryption import AES_GCM, EncryptionKeys, associated_data, check_encryption
from pydantic_toast._exceptions import (
    EncryptionKeyError,
    StorageConfigurationError,
    StoredDataError,
)
from pydantic_toast._records import StoredRecord
from pydantic_toast._url import StorageURL

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESS_ABOVE",
    "DEFAULT_MAX_DECOMPRESSED_SIZE",
    "ENVELOPE_KEY",
    "ENVELOPE_MARK",
    "CodecSettings",
    "any_encoded",
    "decode_record",
    "encode_record",
    "is_encoded",
]

COMPRESSIONS: Final = ("zstd",)
DEFAULT_COMPRESS_ABOVE: Final = 2048
"""Bytes of JSON below which a record stays plain (PostgreSQL's TOAST threshold is ~2 KB)."""
DEFAULT_MAX_DECOMPRESSED_SIZE: Final = 64 * 1024 * 1024
DEFAULT_OFFLOAD_ABOVE: Final = 256_000

_ENVELOPE_KEY: Final = "$toast"
ENVELOPE_KEY: Final = "$toast"
"""The one key of an envelope, reserved: data holding it is refused before it is written."""
ENVELOPE_MARK: Final = b'{"$toast"'
"""What every envelope starts with (``data.startswith(ENVELOPE_MARK)``: :func:`is_encoded`)."""
_ZSTD_LEVEL: Final = 3  # zstd's own default: ~the speed of a memcpy-bound JSON dump


@dataclass(frozen=True, slots=True)
class CodecSettings:
    """How one model class encodes its stored data.

    Attributes:
        compression: The compression codec (``"zstd"``), or ``None`` to store plain JSON.
        compress_above: Records whose JSON is shorter than this many bytes stay plain.
        max_decompressed_size: A load refuses records that would decompress to more bytes.
        offload: The store that holds the payloads of large records (see :mod:`_offload`).
        offload_above: Records whose stored bytes reach this size go to ``offload``.
        encryption: The keys records are read with and, when they have a current one,
            every record is encrypted with (after compression); ``None``: no keys.
    """

    compression: str | None = None
    compress_above: int = DEFAULT_COMPRESS_ABOVE
    max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE
    offload: StorageURL | None = None
    offload_above: int = DEFAULT_OFFLOAD_ABOVE
    encryption: EncryptionKeys | None = None


def codec_settings(owner: str, config: Any) -> CodecSettings | None:
    """Read and check a model's codec keys; ``None`` when it encodes nothing.

    Raises:
        StorageConfigurationError: A key has a wrong value, or zstd is not installed.
    """
    compression = config.get("compression")
    above = config.get("compress_above", DEFAULT_COMPRESS_ABOVE)
    limit = config.get("max_decompressed_size", DEFAULT_MAX_DECOMPRESSED_SIZE)
    offload_above = config.get("offload_above", DEFAULT_OFFLOAD_ABOVE)
    for name, value in (
        ("compress_above", above),
        ("max_decompressed_size", limit),
        ("offload_above", offload_above),
    ):
        if type(value) is not int or value < 0:
            raise StorageConfigurationError(
                f"{owner}: {name} must be an int of 0 or more (bytes), got {value!r:.40}"
            )
    if compression is not None and compression not in COMPRESSIONS:
        raise StorageConfigurationError(
            f"{owner}: compression must be one of {', '.join(COMPRESSIONS)} or None, got "
            f"{compression!r:.40}"
        )
    if compression is not None:
        _zstd(owner)  # refuse the class now, not at its first save
    offload = _offload_url(owner, config.get("offload"), config.get("ttl") is not None)
    encryption = check_encryption(owner, config.get("encryption"))
    if (
        compression is None
        and limit == DEFAULT_MAX_DECOMPRESSED_SIZE
        and offload is None
        and encryption is None
    ):
        return None  # reads of records written with compression still use the default limit
    return CodecSettings(compression, above, limit, offload, offload_above, encryption)


def _offload_url(owner: str, offload: object, expires: bool) -> StorageURL | None:
    if offload is None:
        return None
    from pydantic_toast.backends.base import Capability
    from pydantic_toast.runtime.boundary import check_url
    from pydantic_toast.runtime.storage import current_storage

    if not isinstance(offload, str):
        raise StorageConfigurationError(f"{owner}: offload must be a storage URL string")
    try:
        url = StorageURL.parse(offload)
        backend_class = current_storage().registry.class_for(url.scheme)
        check_url(backend_class, url)
    except StorageConfigurationError as exc:
        raise StorageConfigurationError(f"{owner}: offload: {exc}") from None
    if Capability.DELETE not in backend_class.capabilities:
        raise StorageConfigurationError(
            f"{owner}: offload: {backend_class.__name__} ({url.masked}) cannot delete, so "
            "replaced payloads would pile up there: offload to a store that deletes (s3://)"
        )
    if expires and Capability.TTL not in backend_class.capabilities:
        raise StorageConfigurationError(
            f"{owner}: ttl is set but the offload store {backend_class.__name__} "
            f"({url.masked}) does not expire records, so offloaded payloads would outlive "
            "their expired records: remove ttl or offload, or offload to a store that expires"
        )
    return url


def pointer_of(record: StoredRecord) -> tuple[str, UUID, int, str] | None:
    """Where an offloaded record's payload is: ``(class_name, id, size, sha256)``, or ``None``."""
    if not record.data.startswith(ENVELOPE_MARK):
        return None
    try:
        envelope = pydantic_core.from_json(record.data)[_ENVELOPE_KEY]
        pointer = envelope.get("offloaded")
        if pointer is None:
            return None
        return (
            str(pointer["class_name"]),
            UUID(pointer["id"]),
            int(envelope["size"]),
            str(envelope["sha256"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        problem = True
    if problem:
        raise _damaged(record.class_name, record.id, "its offload pointer is unreadable")
    return None


def offload_pointer(
    record: StoredRecord, class_name: str, id: UUID, payload: bytes, key: str | None
) -> StoredRecord:
    """``record`` holding a pointer to ``payload``, stored elsewhere as ``(class_name, id)``
    and encrypted with the key ``key`` (``None``: not encrypted), which the pointer records so
    that a re-encryption need not download the payload to learn it."""
    envelope = {
        _ENVELOPE_KEY: {
            "offloaded": {"class_name": class_name, "id": str(id), "key": key},
            "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
    }
    return replace(record, data=pydantic_core.to_json(envelope), without_floats=False)


def check_offloaded(
    record: StoredRecord, payload: bytes | None, size: int, digest: str
) -> StoredRecord:
    """``record`` with the offloaded ``payload`` in place, checked against its pointer."""
    name, id = record.class_name, record.id
    if payload is None:
        raise _damaged(
            name, id, "its offloaded payload is missing from the offload store (deleted by hand?)"
        )
    if len(payload) != size or hashlib.sha256(payload).hexdigest() != digest:
        raise _damaged(
            name,
            id,
            f"its offloaded payload fails the SHA-256 check ({len(payload)} bytes, recorded "
            f"{size}): it was changed or truncated in the offload store",
        )
    return replace(record, data=payload, without_floats=False)


def key_of(data: bytes) -> str | None:
    """The id of the key stored ``data`` is encrypted with; ``None`` when not encrypted.

    An unreadable envelope gives ``"?"``, so that a rewrite decodes it and reports the damage.
    """
    if not data.startswith(ENVELOPE_MARK):
        return None
    try:
        key = pydantic_core.from_json(data)[_ENVELOPE_KEY].get("key")
    except (ValueError, KeyError, TypeError, AttributeError):
        return "?"
    return key if isinstance(key, str) else None


def stored_key(record: StoredRecord) -> tuple[bool, str | None]:
    """Whether ``record`` tells the key id its data is encrypted with, and that id (``None``:
    not encrypted) without fetching an offloaded payload: a pointer written before pointers
    recorded the payload's key does not tell."""
    if pointer_of(record) is None:
        return True, key_of(record.data)
    pointer = pydantic_core.from_json(record.data)[_ENVELOPE_KEY]["offloaded"]
    if "key" not in pointer:
        return False, None
    key = pointer["key"]
    return True, key if isinstance(key, str) or key is None else "?"


def is_encoded(data: bytes) -> bool:
    """Whether stored ``data`` is an envelope rather than a model's plain JSON."""
    return data.startswith(ENVELOPE_MARK)


def any_encoded(datas: Iterable[bytes]) -> bool:
    """Whether any of stored ``datas`` is an envelope (passes in C, no call per item).

    Each data's third byte is read first (a fifth of what ``startswith`` costs per item): an
    envelope's is ``$``, so without one there is none; with one, or a data shorter than three
    bytes, ``startswith`` decides.
    """
    datas = list(datas)
    try:
        if _MARK_THIRD.isdisjoint(map(_THIRD_BYTE, datas)):
            return False
    except IndexError:
        pass
    return any(map(_ENVELOPED, datas))


_ENVELOPED = methodcaller("startswith", ENVELOPE_MARK)
_THIRD_BYTE = itemgetter(2)
_MARK_THIRD = frozenset((ENVELOPE_MARK[2],))


def encode_record(record: StoredRecord, settings: CodecSettings) -> StoredRecord:
    """``record`` as stored under ``settings``: an envelope when it is encoded, else itself.

    The chain runs compression first (records of ``compress_above`` bytes or more), then
    encryption (every record of a model whose keys have a current one).
    """
    data = record.data
    compress = settings.compression is not None and len(data) >= settings.compress_above
    keys = settings.encryption
    if keys is not None and keys.current is None:
        keys = None  # keys that only decrypt: written unencrypted
    if not compress and keys is None:
        return record
    codecs: list[str] = []
    payload = data
    if compress:
        payload = _zstd("pydantic-toast").compress(data, _ZSTD_LEVEL)
        codecs.append("zstd")
    fields: dict[str, Any] = {"codecs": codecs}
    if keys is not None:
        key_id, payload = keys.encrypt(payload, associated_data(record.class_name, record.id))
        codecs.append(AES_GCM)
        fields["key"] = key_id
    fields["size"] = len(data)
    fields["sha256"] = hashlib.sha256(payload).hexdigest()
    fields["payload"] = base64.b64encode(payload).decode("ascii")
    return replace(
        record, data=pydantic_core.to_json({_ENVELOPE_KEY: fields}), without_floats=False
    )


def decode_record(record: StoredRecord, settings: CodecSettings | None) -> StoredRecord:
    """``record`` with its plain JSON: envelopes are checked and decoded, others returned as is.

    Raises:
        StoredDataError: The envelope is malformed, its bytes fail the SHA-256 check, or it
            would decompress beyond the limit. The message names the class and id, never data.
        EncryptionKeyError: It is encrypted with a key id the model does not hold, or fails
            authentication with the key under that id.
    """
    if not record.data.startswith(ENVELOPE_MARK):
        return record
    limit = DEFAULT_MAX_DECOMPRESSED_SIZE if settings is None else settings.max_decompressed_size
    name, id = record.class_name, record.id
    codecs, size, digest, payload, key_id = _read_envelope(record)
    if hashlib.sha256(payload).hexdigest() != digest:
        raise _damaged(
            name,
            id,
            f"its stored bytes fail the SHA-256 check ({len(payload)} bytes, recorded digest "
            f"{digest[:12]}...): they were changed or truncated after pydantic-toast wrote them",
        )
    if size > limit and "zstd" in codecs:
        raise _too_large(name, id, size, limit)
    data = payload
    for codec in reversed(codecs):
        if codec == "zstd":
            data = _decompress(name, id, data, limit)
        elif codec == AES_GCM:
            data = _decrypt(record, data, key_id, settings)
        else:
            raise _damaged(name, id, f"it names an unknown codec {codec!r:.40}")
    if len(data) != size:
        raise _damaged(
            name, id, f"it decodes to {len(data)} bytes where its envelope records {size}"
        )
    return replace(record, data=data, without_floats=False)


def _decrypt(
    record: StoredRecord, data: bytes, key_id: str | None, settings: CodecSettings | None
) -> bytes:
    name, id = record.class_name, record.id
    if key_id is None:
        raise _damaged(name, id, "it is encrypted but its envelope names no key")
    keys = None if settings is None else settings.encryption
    if keys is None:
        raise EncryptionKeyError(
            f"the stored {name} record {id} is encrypted with key id {key_id!r:.70}, but the "
            "model reading it has no encryption keys, so it is left untouched: set "
            "encryption=EncryptionKeys(...) in its ExternalConfigDict with that key; to turn "
            "encryption off, give it that key in EncryptionKeys.decrypt_only({...}) and run "
            "pydantic_toast.reencrypt, which rewrites the records unencrypted",
            class_name=name,
            id=id,
            key_id=key_id,
        )
    return keys.decrypt(key_id, data, associated_data(name, id), class_name=name, id=id)


def _read_envelope(record: StoredRecord) -> tuple[list[str], int, str, bytes, str | None]:
    name, id = record.class_name, record.id
    try:
        envelope = pydantic_core.from_json(record.data)[_ENVELOPE_KEY]
        codecs, size = envelope["codecs"], envelope["size"]
        digest, text = envelope["sha256"], envelope["payload"]
        key_id = envelope.get("key")
    except (ValueError, KeyError, TypeError) as exc:
        problem: str | None = type(exc).__name__
    else:
        problem = None
    if problem is not None:  # raised outside the except: the parser's text may quote data
        raise _damaged(name, id, f"its $toast envelope is unreadable ({problem})")
    if (
        not isinstance(codecs, list)
        or not all(isinstance(codec, str) for codec in codecs)
        or type(size) is not int
        or size < 0
        or not isinstance(digest, str)
        or not isinstance(text, str)
        or not (key_id is None or isinstance(key_id, str))
    ):
        raise _damaged(name, id, "its $toast envelope has fields of the wrong types")
    try:
        payload = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        payload = None
    if payload is None:
        raise _damaged(name, id, "its $toast payload is not valid base64")
    return codecs, size, digest, payload, key_id


def _decompress(name: str, id: UUID, data: bytes, limit: int) -> bytes:
    zstd = _zstd("pydantic-toast")
    decompressor = zstd.ZstdDecompressor()
    try:
        out: bytes = decompressor.decompress(data, max_length=limit + 1)
    except zstd.ZstdError:
        out = b""
        failed = True
    else:
        failed = False
    if failed or (not decompressor.eof and decompressor.needs_input):
        raise _damaged(name, id, "its zstd payload is corrupt or truncated")
    if len(out) > limit:
        raise _too_large(name, id, len(out), limit, at_least=True)
    return out


def _damaged(name: str, id: UUID, detail: str) -> StoredDataError:
    return StoredDataError(
        f"the stored {name} record {id} cannot be decoded: {detail}; it is left untouched "
        "(restore it from a backup or delete it)",
        class_name=name,
        id=id,
    )


def _too_large(
    name: str, id: UUID, size: int, limit: int, *, at_least: bool = False
) -> StoredDataError:
    return StoredDataError(
        f"the stored {name} record {id} would decompress to {'more than ' if at_least else ''}"
        f"{size if not at_least else limit} bytes, over its max_decompressed_size of {limit}: "
        "refused as a possible decompression bomb; if the record is genuine, raise "
        f"max_decompressed_size in {name}'s ExternalConfigDict; it is left untouched",
        class_name=name,
        id=id,
    )


_module: ModuleType | None = None


def _zstd(owner: str) -> ModuleType:
    global _module
    if _module is None:
        try:
            if sys.version_info >= (3, 14):
                from compression import zstd  # type: ignore[import-not-found,unused-ignore]
            else:
                from backports import zstd
        except ImportError:
            raise StorageConfigurationError(
                f"{owner}: compression='zstd' needs the zstd codec: pip install "
                "'pydantic-toast[zstd]' (backports.zstd before Python 3.14)"
            ) from None
        _module = zstd
    return _module
