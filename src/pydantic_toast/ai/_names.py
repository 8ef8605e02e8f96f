"""Checks on the names this package turns into stored class names."""

from __future__ import annotations

import re

from pydantic_toast._exceptions import InvalidReferenceError, StorageConfigurationError
from pydantic_toast._records import one_path

__all__ = [
    "CONVERSATIONS",
    "PAYLOADS",
    "TOOL_OUTPUTS",
    "check_conversation_id",
    "check_namespace",
    "kind_class_name",
]

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_CONVERSATION_ID = 200

# The kinds of records, each also its kind's default namespace: the stored names of the
# default namespaces (``pydantic_toast.ai.conversations`` ...) are the ones always used.
CONVERSATIONS = "conversations"
TOOL_OUTPUTS = "tool_outputs"
PAYLOADS = "payloads"


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is 1-64 letters, digits, ``_``, ``.`` or ``-``."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise StorageConfigurationError(
            f"namespace must be 1 to 64 letters, digits, '_', '.' or '-', got {namespace!r}"
        )
    return namespace


def kind_class_name(kind: str, namespace: str) -> str:
    """The stored class name of ``kind`` records in ``namespace`` (checked).

    ``pydantic_toast.ai.<kind>`` for the kind's default namespace (its own name), else
    ``pydantic_toast.ai.<kind>.<namespace>``. Every name of a kind starts with its own
    ``pydantic_toast.ai.<kind>`` followed by the end, ``.`` or ``/`` (per-conversation names
    append ``/<conversation_id>``; a namespace holds no ``/``), so whatever namespaces are
    given, conversations, tool outputs and payloads never share a class name.
    """
    check_namespace(namespace)
    if namespace == kind:
        return f"pydantic_toast.ai.{kind}"
    return f"pydantic_toast.ai.{kind}.{namespace}"


def check_conversation_id(conversation_id: str) -> str:
    """Return ``conversation_id`` if it is a non-empty printable string of at most 200 chars
    that reads as one path only: no backslash, and no empty, ``.`` or ``..`` part between
    slashes.

    The id becomes part of object keys on S3, and some S3 stores (SeaweedFS) read keys as
    paths: ``victim/`` named the keys of ``victim``, so deleting it deleted another
    conversation, and ``x\\y`` those of ``x/y``.

    Raises:
        InvalidReferenceError: It is not. The id usually comes from a client (a URL path), so
            this is a client error: 422 under ``install_error_handlers``, not a 500.
    """
    if (
        not isinstance(conversation_id, str)
        or not 0 < len(conversation_id) <= MAX_CONVERSATION_ID
        or not conversation_id.isprintable()
        or not one_path(conversation_id)
    ):
        raise InvalidReferenceError(
            "a conversation_id must be a printable string of 1 to "
            f"{MAX_CONVERSATION_ID} characters, without a backslash or an empty, '.' or '..' "
            "part between slashes (a UUID is a good choice)",
            id=conversation_id if isinstance(conversation_id, str) else None,
        )
    return conversation_id
