"""Closing storage connections: explicitly, when a loop ends, and at interpreter exit."""

from __future__ import annotations

import atexit

from pydantic_toast.runtime import loops
from pydantic_toast.runtime.connections import close_running_loop

__all__ = ["aclose_storage", "close_storage"]


async def aclose_storage() -> None:
    """Close the connections that the async API opened on the running event loop.

    They are also closed when the loop ends (``asyncio.run``, ``asyncio.Runner``, uvicorn), so
    call this to release them earlier, for example in a FastAPI lifespan. The next operation
    reconnects.
    """
    await close_running_loop()


def close_storage() -> None:
    """Close the connections that the sync API (``model_dump``, ``model_validate``) opened.

    They are also closed at interpreter exit. The next operation reconnects.
    """
    loops.close_library_loops(close_running_loop)


@atexit.register
def _close_at_exit() -> None:
    loops.shutdown(close_running_loop)
