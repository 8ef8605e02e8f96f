"""Closing storage connections: explicitly, when a loop ends, and at interpreter exit."""

from __future__ import annotations

from pydantic_toast.runtime.storage import current_storage

__all__ = ["aclose_storage", "close_storage"]


async def aclose_storage() -> None:
    """Close the connections that the async API opened on the running event loop.

    They are also closed when the loop ends (``asyncio.run``, ``asyncio.Runner``, uvicorn), so
    call this to release them earlier, for example in a FastAPI lifespan. Operations other
    tasks have under way end first (up to 5 s); the next operation reconnects. Acts on the
    current :class:`~pydantic_toast.Storage`.
    """
    await current_storage().aclose()


def close_storage() -> None:
    """Close the connections that the sync API (``model_dump``, ``model_validate``) opened.

    They are also closed at interpreter exit. Operations other threads have under way end
    first (up to 5 s); the next operation reconnects. Acts on the current
    :class:`~pydantic_toast.Storage`.
    """
    current_storage().close()
