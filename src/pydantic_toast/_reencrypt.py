"""Re-encryption: rewrite a class's stored records under its current key, page by page.

After a key rotation (a new ``current`` in the model's ``EncryptionKeys``), records written
under older key ids keep loading as long as those keys stay in the mapping. :func:`reencrypt`
rewrites them under the current key so that the old keys can then be dropped. It also encrypts
records written before the model encrypted at all. With keys that only decrypt
(``EncryptionKeys.decrypt_only({...})``) it decrypts: every encrypted record is rewritten
unencrypted, after which the model can drop ``encryption`` (a model without ``encryption``
cannot read encrypted records, so it cannot decrypt them). Each record is decoded and encoded
again with the model's current settings (compression included); its fields are not parsed.

Each rewrite keeps the record's ``created_at``, ``updated_at`` and schema version, and checks
its revision where the backend keeps revisions: a record written by someone else meanwhile is
skipped (that writer used the current key already) and counted in ``changed``. The rewrite is a
write: the record's revision goes up (an instance holding the old revision gets a
``ConcurrencyError`` on its next optimistic save, as after any other writer) and its ``ttl``
starts afresh from the model's ``ttl``. Offloaded payloads are uploaded anew and the old ones
deleted after the record is written, as on any save. An offloaded record's pointer names the
key of its payload, so only the payloads to rewrite are downloaded (a pointer written before it
named the key costs a download to learn it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from pydantic_toast._codecs import (
    CodecSettings,
    decode_record,
    encode_record,
    key_of,
    stored_key,
)
from pydantic_toast._exceptions import ConcurrencyError, StorageConfigurationError
from pydantic_toast._model import ExternalBaseModel
from pydantic_toast._offload import Offloads, fetch_offloaded
from pydantic_toast._records import PageCursor, StoredRecord, check_batch_size
from pydantic_toast.backends.base import Capability
from pydantic_toast.runtime.boundary import Connected
from pydantic_toast.runtime.loops import run_sync
from pydantic_toast.runtime.storage import Storage, current_storage

__all__ = ["ReencryptReport", "areencrypt", "reencrypt"]

MAX_BATCH = 1000


@dataclass
class ReencryptReport:
    """What a re-encryption did (so far, when passed to ``progress``).

    Attributes:
        class_name: The stored class name.
        key_id: The key id records are now encrypted with (``None``: stored unencrypted,
            the model's keys having no current one, or no keys).
        checked: Records read.
        rewritten: Records rewritten under ``key_id`` (unencrypted when it is ``None``).
        changed: Records skipped because another writer changed them meanwhile.
        next_after: Pass it as ``after`` to resume after the last page; ``None`` when done.
    """

    class_name: str
    key_id: str | None
    checked: int = 0
    rewritten: int = 0
    changed: int = 0
    next_after: str | None = None


async def areencrypt(
    model: type[ExternalBaseModel],
    *,
    batch_size: int = 500,
    after: str | None = None,
    progress: Callable[[ReencryptReport], None] | None = None,
) -> ReencryptReport:
    """Rewrite the records of ``model`` not encrypted with its current key (see the module).

    To turn encryption off, give the model ``EncryptionKeys.decrypt_only({...})`` holding
    the keys its records were written with, run this until it rewrites 0 records, then drop
    ``encryption``.

    Args:
        model: The class whose records are rewritten; its ``encryption`` must hold every key
            id its records were written with (``None`` for keys made by
            ``EncryptionKeys.decrypt_only``: they are decrypted).
        batch_size: Records per page and per write (1 to 1000).
        after: A ``next_after`` of an earlier report: resume there.
        progress: Called with the report so far after each page.

    Raises:
        StorageConfigurationError: ``batch_size`` or ``after`` is invalid.
        EncryptionKeyError: A record's key id is missing from the model's keys, or the
            model has no ``encryption`` (nothing of that page is written; pages before it are).
    """
    check_batch_size(batch_size, MAX_BATCH)
    cursor = PageCursor.from_token(after) if after is not None else None
    if after is not None and cursor is None:
        raise StorageConfigurationError(f"after={after!r} is not a next_after of a reencrypt")
    settings = model._toast_settings()
    codec = settings.codec or CodecSettings()
    keys = codec.encryption
    report = ReencryptReport(settings.external_name, None if keys is None else keys.current)
    storage = current_storage()
    backend = await storage.connected(settings.url())
    checks = Capability.REVISIONS in backend.capabilities
    while True:
        records = await backend.list_records(settings.external_name, limit=batch_size, after=cursor)
        stale = []
        for record in records:
            known, key = stored_key(record)
            fetched = None if known else await fetch_offloaded(storage, record, codec)
            if fetched is not None:
                key = key_of(fetched.data)
            if key != report.key_id:
                stale.append((record, fetched or await fetch_offloaded(storage, record, codec)))
        rewritten = [
            encode_record(
                replace(
                    decode_record(fetched, codec),
                    ttl=settings.ttl,
                    revision=record.revision if checks else None,
                ),
                codec,
            )
            for record, fetched in stale
        ]
        written = await _write(storage, backend, rewritten, codec)
        report.rewritten += written
        report.changed += len(rewritten) - written
        report.checked += len(records)
        cursor = None if len(records) < batch_size else PageCursor.of(records[-1])
        report.next_after = None if cursor is None else cursor.token()
        if progress is not None:
            progress(report)
        if cursor is None:
            return report


async def _write(
    storage: Storage, backend: Connected, records: list[StoredRecord], codec: CodecSettings
) -> int:
    """Write ``records`` as one batch, or one by one when another writer got in; count them."""
    if not records:
        return 0
    try:
        await _save(storage, backend, records, codec)
    except ConcurrencyError as exc:
        if len(records) == 1:
            return 0
        done = set(exc.written)  # the records a non-atomic batch wrote anyway
    else:
        return len(records)
    # Some record changed meanwhile: the others are tried again one by one.
    written = len(done)
    for record in records:
        if record.key in done:
            continue
        try:
            await _save(storage, backend, [record], codec)
        except ConcurrencyError:
            continue
        written += 1
    return written


async def _save(
    storage: Storage, backend: Connected, records: list[StoredRecord], codec: CodecSettings
) -> None:
    offloads = Offloads(storage)
    try:
        await offloads.prepare(backend, records, [codec] * len(records))
        await backend.save_records(records)
    except BaseException as exc:
        await offloads.failed(getattr(exc, "written", {}))
        raise
    await offloads.written()


def reencrypt(
    model: type[ExternalBaseModel],
    *,
    batch_size: int = 500,
    after: str | None = None,
    progress: Callable[[ReencryptReport], None] | None = None,
) -> ReencryptReport:
    """The blocking form of :func:`areencrypt`."""
    return run_sync(
        lambda: areencrypt(model, batch_size=batch_size, after=after, progress=progress),
        call="pydantic_toast.reencrypt()",
        instead="await pydantic_toast.areencrypt()",
    )
