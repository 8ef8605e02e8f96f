"""Storage backends: the interface, the scheme registry and the built-in stores."""

from pydantic_toast.backends.base import StorageBackend
from pydantic_toast.backends.registry import register_backend

__all__ = ["StorageBackend", "register_backend"]
