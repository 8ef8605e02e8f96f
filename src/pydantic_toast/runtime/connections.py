"""Connected backends: one per storage URL and event loop, opened on first use.

A backend's pool belongs to the loop that opened it, so each loop gets its own instance, shared
by every model class on that URL. A loop's backends are closed when the loop shuts down
(``asyncio.run`` and ``asyncio.Runner`` finalize async generators, which runs our closer), when
:func:`aclose_storage` is awaited on it, or at interpreter exit for the library's own loops.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator

from pydantic_toast._exceptions import ExternalStorageError, StorageConnectionError
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.base import StorageBackend
from pydantic_toast.backends.registry import backend_class_for

__all__ = ["backend_for", "close_running_loop"]

logger = logging.getLogger("pydantic_toast")


class _LoopBackends:
    """The backends open on one event loop."""

    def __init__(self) -> None:
        self.ready: dict[str, StorageBackend] = {}
        self.opening: dict[str, asyncio.Task[StorageBackend]] = {}
        self.closer: AsyncGenerator[None] | None = None
        self.pid = os.getpid()

    async def close(self) -> None:
        for task in self.opening.values():
            task.cancel()
        backends, self.ready = list(self.ready.values()), {}
        for backend in backends:
            try:
                await backend.disconnect()
            except Exception as exc:  # closing must go on for the others
                logger.warning("closing %r failed: %s", backend, type(exc).__name__)


_by_loop: dict[asyncio.AbstractEventLoop, _LoopBackends] = {}
# Inherited across fork: kept alive and never closed in the child (the parent owns the sockets).
_inherited: list[object] = []


async def backend_for(url: str) -> StorageBackend:
    """The connected backend for ``url`` on the running loop, connecting it on first use."""
    loop = asyncio.get_running_loop()
    entry = _by_loop.get(loop)
    if entry is not None:
        backend = entry.ready.get(url)
        if backend is not None:
            return backend
    return await _open(loop, url)


async def close_running_loop() -> None:
    """Close every backend opened on the running loop."""
    entry = _by_loop.pop(asyncio.get_running_loop(), None)
    if entry is None:
        return
    closer, entry.closer = entry.closer, None
    if closer is not None:
        await closer.aclose()
    else:
        await entry.close()


async def _open(loop: asyncio.AbstractEventLoop, url: str) -> StorageBackend:
    entry = _by_loop.get(loop)
    if entry is None:
        entry = await _register_loop(loop)
    task = entry.opening.get(url)
    if task is None:
        task = entry.opening[url] = loop.create_task(_connect(url))
    try:
        backend = await asyncio.shield(task)
    finally:
        if task.done():
            entry.opening.pop(url, None)
    entry.ready[url] = backend
    return backend


async def _connect(url: str) -> StorageBackend:
    parsed = StorageURL.parse(url)
    backend = backend_class_for(parsed.scheme)(url)
    try:
        await backend.connect()
    except ExternalStorageError:
        raise
    except OSError as exc:
        raise StorageConnectionError(
            f"could not connect to {parsed.masked} ({type(exc).__name__}: {exc.strerror or exc}): "
            "check that the server runs and the URL is right",
            url=parsed.masked,
        ) from exc
    return backend


async def _register_loop(loop: asyncio.AbstractEventLoop) -> _LoopBackends:
    for stale in [known for known in _by_loop if known.is_closed()]:
        # Closed without finalizing async generators: the pools cannot be closed any more.
        _inherited.append(_by_loop.pop(stale))
    entry = _by_loop[loop] = _LoopBackends()
    entry.closer = _close_at_loop_shutdown(entry)
    # Starting the generator on this loop registers it for shutdown_asyncgens().
    await entry.closer.asend(None)
    return entry


async def _close_at_loop_shutdown(entry: _LoopBackends) -> AsyncGenerator[None]:
    try:
        yield
    finally:
        if entry.pid == os.getpid():
            for loop, known in list(_by_loop.items()):
                if known is entry:
                    del _by_loop[loop]
            await entry.close()


def _forget_after_fork() -> None:
    _inherited.append(dict(_by_loop))
    _by_loop.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
