"""Storage backends: the interface, the scheme registry and the built-in stores."""

from pydantic_toast.backends.base import Capability, RecordBackend, StorageBackend
from pydantic_toast.backends.registry import BackendRegistry

__all__ = ["BackendRegistry", "Capability", "RecordBackend", "StorageBackend"]
