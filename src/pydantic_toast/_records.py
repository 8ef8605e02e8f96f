"""The stored record: what travels between a model and a storage backend."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import pydantic_core

from pydantic_toast._exceptions import StoredDataError

__all__ = ["RecordKey", "StoredRecord"]

RecordKey = tuple[str, UUID]
"""``(class_name, id)``: what identifies a record within one store."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One model instance as stored.

    Attributes:
        class_name: The model's stored class name.
        id: The record id.
        data: The model's fields as a UTF-8 JSON object, keyed by field name.
        schema_version: The model's schema version when the record was written.
        created_at: When the record was first written (timezone-aware).
        updated_at: When the record was last written (timezone-aware).
        ttl: Seconds until the record expires, for backends that support expiry; ``None``
            keeps it forever.
        revision: Read from a store: the record's stored revision (1 when first written, one
            more on every write), ``None`` from a backend that keeps no revisions. Handed to
            ``save_records``: the revision the writer last saw, which must still be the stored
            one (``0``: no record may exist yet), or ``None`` to write whatever is stored
            (last write wins). See :class:`~pydantic_toast.Capability` ``REVISIONS``.
    """

    class_name: str
    id: UUID
    data: bytes
    schema_version: int
    created_at: datetime
    updated_at: datetime
    ttl: float | None = None
    revision: int | None = None

    @property
    def key(self) -> RecordKey:
        """``(class_name, id)``."""
        return (self.class_name, self.id)

    def to_document(self) -> dict[str, Any]:
        """The record as a JSON-compatible dict, for backends that store documents.

        The shape is ``{"schema_version", "created_at", "updated_at", "data": {fields}}``, with
        ``"revision"`` when the record has one; :meth:`from_document` reads it back.
        """
        document: dict[str, Any] = {
            "schema_version": self.schema_version,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "data": pydantic_core.from_json(self.data, allow_inf_nan=True),
        }
        if self.revision is not None:
            document["revision"] = self.revision
        return document

    @classmethod
    def from_document(cls, class_name: str, id: UUID, document: object) -> StoredRecord:
        """Rebuild a record from :meth:`to_document`'s shape, refusing anything else clearly."""
        if not isinstance(document, dict):
            raise _corrupt(class_name, id, f"expected a JSON object, got {type(document).__name__}")
        try:
            data = document["data"]
            version = document["schema_version"]
            created = datetime.fromisoformat(document["created_at"])
            updated = datetime.fromisoformat(document["updated_at"])
        except (KeyError, TypeError, ValueError) as exc:
            problem: str | None = type(exc).__name__
        else:
            problem = None
        if problem is not None:  # raised outside the except: the driver's text holds the data
            raise _corrupt(
                class_name,
                id,
                f"expected keys schema_version, created_at, updated_at and data ({problem} "
                "reading them)",
            )
        revision = document.get("revision")
        if not isinstance(data, dict) or not isinstance(version, int):
            raise _corrupt(class_name, id, "'data' must be an object and 'schema_version' an int")
        if revision is not None and (type(revision) is not int or revision < 1):
            raise _corrupt(class_name, id, "'revision' must be an int of 1 or more")
        return cls(
            class_name=class_name,
            id=id,
            data=pydantic_core.to_json(data, inf_nan_mode="constants"),
            schema_version=version,
            created_at=created,
            updated_at=updated,
            revision=revision,
        )


def _corrupt(class_name: str, id: UUID, detail: str) -> StoredDataError:
    return StoredDataError(
        f"the stored {class_name} record {id} is not in pydantic-toast's format: {detail}; "
        "it was written by something else or damaged, so it is left untouched",
        class_name=class_name,
        id=id,
    )
