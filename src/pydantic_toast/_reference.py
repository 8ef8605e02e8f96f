"""The reference a stored model dumps to: ``{"class_name": ..., "id": ...}``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from pydantic_toast._exceptions import StorageValidationError

__all__ = ["ExternalReference", "as_reference"]

_REFERENCE_KEYS = frozenset(("class_name", "id"))


@dataclass(frozen=True, slots=True)
class ExternalReference:
    """Where a stored model lives: its stored class name and its id.

    ``Model.model_validate(reference)`` and ``await Model.aload(reference)`` accept it as well as
    the plain dict form that ``model_dump()`` returns.
    """

    class_name: str
    id: UUID

    def as_dict(self) -> dict[str, str]:
        """The JSON-ready form ``{"class_name": ..., "id": "<uuid>"}``."""
        return {"class_name": self.class_name, "id": str(self.id)}


def as_reference(value: object) -> ExternalReference | None:
    """Return the reference ``value`` holds, or ``None`` when it is data, not a reference.

    A reference is an :class:`ExternalReference` or a mapping with exactly the keys
    ``class_name`` and ``id``.

    Raises:
        StorageValidationError: It has the shape of a reference but a malformed value.
    """
    if isinstance(value, ExternalReference):
        return value
    if not isinstance(value, Mapping) or len(value) != 2 or value.keys() != _REFERENCE_KEYS:
        return None
    class_name: Any = value["class_name"]
    raw_id: Any = value["id"]
    if not isinstance(class_name, str) or not class_name:
        raise StorageValidationError(
            "a reference's 'class_name' must be a non-empty string, "
            f"got {type(class_name).__name__}"
        )
    if isinstance(raw_id, UUID):
        return ExternalReference(class_name, raw_id)
    if isinstance(raw_id, str):
        try:
            return ExternalReference(class_name, UUID(raw_id))
        except ValueError:
            pass
    raise StorageValidationError(
        f"the {class_name} reference's 'id' is not a UUID (got a {type(raw_id).__name__} that "
        "does not parse as one): pass the id exactly as model_dump() returned it",
        class_name=class_name,
        id=raw_id if isinstance(raw_id, str) else None,
    )
