"""The :class:`Storage` object: everything pydantic-toast holds at run time, in one place.

A default instance serves the zero-setup path (``model_config = ExternalConfigDict(storage=...)``
just works). An application or a test can create its own and make it current with ``with`` (or
``async with``): models then resolve their backends, ``memory://`` stores and stored names
through it, and leaving the block closes what it opened::

    with Storage() as storage:           # a fresh, isolated storage
        Order(product="tea", quantity=1).model_dump()
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Hashable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic_toast._exceptions import (
    ExternalStorageError,
    StorageConfigurationError,
    StorageUsageError,
)
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.registry import BackendRegistry
from pydantic_toast.runtime import loops, stranded
from pydantic_toast.runtime.boundary import Connected, open_backend, store_identity
from pydantic_toast.runtime.catalog import NameCatalog
from pydantic_toast.runtime.errors import summary

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from pydantic_toast.backends.base import StorageBackend
    from pydantic_toast.backends.memory import MemoryStore

__all__ = [
    "Storage",
    "current_storage",
    "default_storage",
    "register_backend",
    "unregister_backend",
    "use_engine",
]


class Storage:
    """Backend classes by scheme, stored names, connected backends and ``memory://`` stores.

    Connected backends are kept per storage URL and event loop (a pool belongs to the loop that
    opened it) and closed when their loop shuts down, when :meth:`aclose`/:meth:`close` is
    called, or at interpreter exit. Those of a loop closed without shutting down, or left
    open and stopped by a thread that ended (Pydantic AI's ``run_sync``), are released when
    another loop connects.

    Args:
        registry: The backend classes to start from; by default the built-ins plus what is
            registered on the default storage at this moment.

    Attributes:
        registry: The URL-scheme registry of this storage.
        catalog: Which model class is stored under which name, per store.
    """

    def __init__(self, *, registry: BackendRegistry | None = None) -> None:
        if registry is None:
            registry = _default.registry.copy() if _default is not None else BackendRegistry()
        self.registry: BackendRegistry = registry
        self.catalog = NameCatalog()
        self._memory: dict[str, MemoryStore] = {}
        self._engines: dict[StorageURL, AsyncEngine] = {}
        self._loops: dict[asyncio.AbstractEventLoop, _LoopBackends] = {}
        self._lock = threading.Lock()
        self._tokens: list[Token[Storage | None]] = []
        _live.add(self)

    def __repr__(self) -> str:
        loops_open = len(self._loops)
        default = " default" if self is _default else ""
        # No scheme count: listing the schemes reads every installed package's entry points.
        return f"<Storage{default} loops={loops_open}>"

    # -- registration ------------------------------------------------------------------------

    def register_backend(self, scheme: str, backend_class: type[StorageBackend]) -> None:
        """Make ``scheme://`` URLs use ``backend_class`` (see :func:`register_backend`)."""
        self.registry.register(scheme, backend_class)

    def unregister_backend(self, scheme: str) -> None:
        """Forget the backend of ``scheme``: models defined afterwards are refused, a model
        already defined raises :class:`UnknownSchemeError` when it next connects, and the
        connections already open keep serving until they are closed."""
        self.registry.unregister(scheme)

    def store_identity(self, url: StorageURL) -> Hashable:
        """What identifies the store behind ``url`` (same identity, same records)."""
        backend_class = self.registry.class_for(url.scheme)
        return (backend_class, store_identity(backend_class, url))

    def memory_store(self, name: str = "") -> MemoryStore:
        """The ``memory://NAME`` store of this storage (created empty on first use)."""
        from pydantic_toast.backends.memory import MemoryStore

        with self._lock:
            store = self._memory.get(name)
            if store is None:
                store = self._memory[name] = MemoryStore()
            return store

    def use_engine(self, url: str, engine: AsyncEngine) -> None:
        """Serve the models stored at ``url`` with the application's own SQLAlchemy ``engine``.

        See :func:`use_engine`.
        """
        from pydantic_toast.backends.sql import SQLAlchemyBackend

        parsed = StorageURL.parse(url)
        backend_class = self.registry.class_for(parsed.scheme)
        if not issubclass(backend_class, SQLAlchemyBackend):
            raise StorageUsageError(
                f"{parsed.masked}: use_engine() takes SQL storage URLs (postgresql://, "
                f"sqlite://); {backend_class.__name__} has no SQLAlchemy engine"
            )
        if any(
            parsed.raw in entry.ready or parsed in entry.opening for entry in self._loops.values()
        ):
            raise StorageUsageError(
                f"{parsed.masked} is already connected: call use_engine() before the first "
                "operation on it: at import time (create_async_engine() needs no event loop), "
                "or in a lifespan that enters pydantic_toast.fastapi.storage_lifespan() after "
                "it (storage_lifespan() connects its models' storage before it runs the "
                "lifespan given to it)"
            )
        self._engines[parsed] = engine

    # -- connections ---------------------------------------------------------------------------

    async def connected(self, url: StorageURL) -> Connected:
        """The connected backend for ``url`` on the running loop, connecting on first use."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise _not_on_asyncio() from None
        entry = self._loops.get(loop)
        if entry is not None:
            connected = entry.ready.get(url.raw)
            if connected is not None:
                return connected
        return await self._open(loop, url)

    def ready(self, url: StorageURL) -> Connected | None:
        """:meth:`connected` when ``url`` is connected on the running loop already, else ``None``.

        No coroutine: a single load asks ``storage.ready(url) or await storage.connected(url)``.
        """
        try:
            entry = self._loops.get(asyncio.get_running_loop())
        except RuntimeError:
            raise _not_on_asyncio() from None
        return None if entry is None else entry.ready.get(url.raw)

    async def aclose(self) -> None:
        """Close the connections this storage opened on the running event loop.

        Those it opened on loops closed without shutting down, or left open by threads that
        ended (see :meth:`_release_stale`), are released too.

        They are also closed when the loop ends (``asyncio.run``, ``asyncio.Runner``, uvicorn);
        call this to release them earlier. The next operation reconnects. Work still waiting
        for a transaction's commit (deleting what it let go of) gets up to 30 s to end first.
        """
        from pydantic_toast.runtime.transaction import finish_after_commit

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise _not_on_asyncio() from None
        await finish_after_commit(_AFTER_COMMIT_WAIT)
        entry = self._loops.pop(loop, None)
        if entry is not None:
            # Closing the generator runs its cleanup now: left to the collector, it would
            # leave a task behind on the loop.
            await entry.closer.aclose()
        await self._release_stale()

    def close(self) -> None:
        """Close the connections this storage opened for the blocking API (the library's loops).

        The next operation reconnects. Those opened on loops closed without shutting down, or
        left open by threads that ended, are released too.
        """
        loops.close_library_loops(self.aclose)
        if any(entry.stale(loop) for loop, entry in list(self._loops.items())):
            loops.run_on_loop_thread(self._release_stale)

    def __enter__(self) -> Storage:
        self._tokens.append(_active.set(self))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _active.reset(self._tokens.pop())
        self.close()

    async def __aenter__(self) -> Storage:
        self._tokens.append(_active.set(self))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _active.reset(self._tokens.pop())
        await self.aclose()
        await asyncio.to_thread(self.close)

    async def _open(self, loop: asyncio.AbstractEventLoop, url: StorageURL) -> Connected:
        entry = self._loops.get(loop)
        if entry is None:
            entry = await self._register_loop(loop)
            # Another task of this loop may have connected while stale entries were released.
            connected = entry.ready.get(url.raw)
            if connected is not None:
                return connected
        task = entry.opening.get(url)
        if task is None:
            task = entry.opening[url] = loop.create_task(self._connect(url))
        try:
            connected = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # A close cancelled a connect that took too long, not this operation: it
                # connects anew (the close took the entry away).
                return await self._open(loop, url)
            raise
        finally:
            if task.done():
                entry.opening.pop(url, None)
        entry.ready[url.raw] = connected
        return connected

    async def _connect(self, url: StorageURL) -> Connected:
        backend_class = self.registry.class_for(url.scheme)
        from pydantic_toast.backends.memory import MemoryBackend

        try:
            if issubclass(backend_class, MemoryBackend):
                store = self.memory_store(url.host or "")
                backend: StorageBackend = backend_class(url.raw, store=store)
            elif url in self._engines:
                from pydantic_toast.backends.sql import SQLAlchemyBackend

                assert issubclass(backend_class, SQLAlchemyBackend)  # checked by use_engine()
                backend = backend_class(url.raw, engine=self._engines[url])
            else:
                backend = backend_class(url.raw)
        except ExternalStorageError:
            raise
        except Exception as exc:
            # A backend's own constructor, outside the boundary: its message may hold the URL
            # (a password), and a ValueError would leave model_validate as a Pydantic 422.
            failed = exc
        else:
            return await open_backend(backend, url)
        raise StorageConfigurationError(
            f"{backend_class.__name__}({url.masked}) raised {type(failed).__name__}: a "
            "backend's constructor takes the storage URL alone and opens nothing, and a URL it "
            "cannot use is refused in its check_url classmethod (when the model class is "
            "defined); see the chained DriverError's traceback for where"
        ) from summary(failed)

    async def _register_loop(self, loop: asyncio.AbstractEventLoop) -> _LoopBackends:
        # Stored before anything is awaited: another task of this loop that connects
        # meanwhile finds this entry instead of making a second one.
        entry = self._loops[loop] = _LoopBackends(self)
        # Starting the generator on this loop registers it for shutdown_asyncgens().
        await entry.closer.asend(None)
        await self._release_stale()
        return entry

    async def _release_stale(self) -> None:
        """Release the entries of loops closed without shutdown, and of stranded loops.

        A stranded loop is open but stopped, and the thread that registered it has ended
        (Pydantic AI's ``run_sync`` sets a loop per thread and never closes it). Only the
        library's own sockets on it are closed; the loop is left as it is.
        """
        # A copy, and popped once: loops of other threads register meanwhile.
        for known, entry in list(self._loops.items()):
            if not entry.stale(known):
                continue
            if self._loops.get(known) is not entry or self._loops.pop(known, None) is None:
                continue  # released by another thread's registration
            if known.is_closed():
                # Closed without finalizing async generators: the pools' loop is gone.
                await entry.abandon(known)
            else:
                await entry.release_stranded(known, self)

    def _forget_after_fork(self) -> None:
        _inherited.append(dict(self._loops))
        self._loops.clear()


class _LoopBackends:
    """The backends one storage has open on one event loop."""

    def __init__(self, storage: Storage) -> None:
        # By the URL's text, which StorageURL compares by: a str hashes in C, a StorageURL in
        # Python (about 900 instructions, once per single save or load).
        self.ready: dict[str, Connected] = {}
        self.opening: dict[StorageURL, asyncio.Task[Connected]] = {}
        self.pid = os.getpid()
        self.thread = threading.current_thread()  # the thread that ran the loop first
        self.abandoned = False
        self.closer = self._close_at_loop_shutdown(weakref.ref(storage))

    def stale(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether ``loop`` (this entry's) was closed, or stranded with no connection opening."""
        return loop.is_closed() or (not self.opening and stranded.is_stranded(loop, self.thread))

    async def abandon(self, closed: asyncio.AbstractEventLoop) -> None:
        """Release what this entry holds once its loop was closed without shutting down.

        The closer generator is finished here (left to the garbage collector, it would ask
        the closed loop to run its finalizer: "Event loop is closed"), then the backends are
        closed from the running loop: what can be closed without their own loop is (files,
        threads, sockets), and nothing is kept alive, so loops closed this way cost nothing.
        """
        self.abandoned = True
        with contextlib.suppress(StopIteration):
            self.closer.aclose().send(None)
        self.opening.clear()  # tasks of the closed loop: they can never run again
        connected, self.ready = list(self.ready.values()), {}
        # A socket transport cannot close through a closed loop (close() schedules its last
        # step there): take that step here, or the garbage collector warns of it.
        for transport in list(getattr(closed, "_transports", {}).values()):
            if getattr(transport, "_sock", None) is not None:
                with contextlib.suppress(Exception):  # the socket is closed in a finally
                    transport._call_connection_lost(None)
        # Then the backends: their sockets are closed, so they release the rest (files,
        # threads, pools) without touching the closed loop.
        for backend in connected:
            with contextlib.suppress(Exception):  # sockets closed above; files, threads
                await asyncio.wait_for(backend.disconnect(), 1)

    async def release_stranded(self, loop: asyncio.AbstractEventLoop, storage: Storage) -> None:
        """Release what this entry holds on ``loop``, open but stranded by its thread.

        The library's sockets on it are closed at once (see :mod:`.stranded`), then the
        backends release the rest from the running loop. Backends on an engine the
        application gave (``use_engine``) keep their connections: they are its owner's.
        """
        self.abandoned = True
        with contextlib.suppress(StopIteration):
            self.closer.aclose().send(None)
        connected, self.ready = list(self.ready.values()), {}
        given = storage._engines
        own = [each.backend for each in connected if each.url not in given]
        beyond = [storage, *given.values()]
        stranded.close_transports(stranded.held_transports(own, loop, beyond=beyond))
        for backend in own:
            with contextlib.suppress(Exception):  # sockets closed above; files, threads
                await asyncio.wait_for(backend.disconnect(), 1)

    async def close(self) -> None:
        connected, self.ready = list(self.ready.values()), {}
        opening, self.opening = list(self.opening.values()), {}
        if opening:
            # Operations wait for these connections: they get a moment to open (cancelled at
            # once, the operations raised CancelledError), then are cancelled (a connect that
            # never answers must not hold the close, or the process's exit).
            done, pending = await asyncio.wait(opening, timeout=_OPENING_WAIT)
            for task in pending:
                task.cancel()
            opened = [t.result() for t in done if not t.cancelled() and t.exception() is None]
            connected += [each for each in opened if each not in connected]
        # Operations under way end first (they hold their backend already), all within one
        # wait; new ones reconnect, as the entry no longer holds any. The backends are closed
        # once all are idle at once: an operation spanning two stores (an upload to the
        # offload store, then the save) moves to the second while the first is drained.
        clock = asyncio.get_running_loop().time
        deadline = clock() + _DRAIN_WAIT
        while (busy := [each for each in connected if each.running]) and clock() < deadline:
            await busy[0].drained(deadline - clock())
        for backend in connected:
            await backend.disconnect()

    async def _close_at_loop_shutdown(self, storage: weakref.ref[Storage]) -> AsyncGenerator[None]:
        try:
            yield
        finally:
            if self.pid == os.getpid() and not self.abandoned:
                owner = storage()
                if owner is not None:
                    for loop, known in list(owner._loops.items()):
                        if known is self:
                            del owner._loops[loop]
                await self.close()


_active: ContextVar[Storage | None] = ContextVar("pydantic_toast_storage", default=None)
_default: Storage | None = None
_default_lock = threading.Lock()
_live: weakref.WeakSet[Storage] = weakref.WeakSet()
# Inherited across fork: kept alive, never closed (their sockets are the parent's). One entry
# per storage and fork, so bounded by the depth of forks; loops closed without shutdown are
# released instead (_LoopBackends.abandon).
_inherited: list[Any] = []


def current_storage() -> Storage:
    """The storage in use here: the innermost ``with Storage()``, else the default one."""
    storage = _active.get()
    if storage is not None:
        return storage
    return _default if _default is not None else _make_default()


def register_backend(scheme: str, backend_class: type[StorageBackend]) -> None:
    """Make ``scheme://...`` storage URLs use ``backend_class``, in the current storage.

    Register before defining the models that use the scheme: a model's URL is checked when its
    class is defined. Registering a scheme again replaces the previous class, built-ins included.

    Args:
        scheme: The URL scheme, such as ``"file"`` or ``"s3"`` (lowercase).
        backend_class: A complete :class:`StorageBackend` subclass.

    Raises:
        StorageConfigurationError: The scheme is malformed, or the class is not a complete
            backend (the message lists the missing methods).
    """
    current_storage().register_backend(scheme, backend_class)


def unregister_backend(scheme: str) -> None:
    """Forget the backend of ``scheme`` in the current storage (built-in ones too).

    Raises:
        StorageConfigurationError: No backend serves ``scheme``.
    """
    current_storage().unregister_backend(scheme)


def use_engine(url: str, engine: AsyncEngine) -> None:
    """Serve the models stored at ``url`` with the application's own SQLAlchemy ``engine``.

    The engine's pool then holds pydantic-toast's connections too (one pool for the whole
    application), and its owner disposes of it. Call it before the first operation on ``url``,
    in the current storage. The engine belongs to the application's event loop: models on
    ``url`` are then used through the async API (``await obj.asave()``,
    ``await Model.aload(ref)``); the blocking calls raise :class:`StorageUsageError`.

    Args:
        url: The storage URL, exactly as the models' ``storage`` option spells it.
        engine: An ``AsyncEngine`` on the same database (``postgresql+asyncpg://`` or
            ``sqlite+aiosqlite://``).

    Raises:
        StorageUsageError: ``url`` is not a SQL store, or is already connected.
    """
    current_storage().use_engine(url, engine)


def default_storage() -> Storage:
    """The process-wide storage used when no other is current."""
    return _default if _default is not None else _make_default()


def _make_default() -> Storage:
    global _default
    with _default_lock:
        if _default is None:
            _default = Storage(registry=BackendRegistry())
        return _default


def _forget_after_fork() -> None:
    for storage in list(_live):
        storage._forget_after_fork()


_AFTER_COMMIT_WAIT = 30.0
"""Seconds :meth:`Storage.aclose` waits for work waiting for a transaction's commit."""
_DRAIN_WAIT = 5.0
"""Seconds a close waits for the operations under way before closing their connections (less
than the library loops' 10 s for a close, which would cut it and leave them open)."""
_OPENING_WAIT = 1.0
"""Seconds a close waits for a connection being opened, which operations are waiting for."""


@atexit.register
def _close_at_exit() -> None:
    storages = list(_live)

    async def close_all() -> None:
        for storage in storages:
            await storage.aclose()

    loops.shutdown(close_all)


os.register_at_fork(after_in_child=_forget_after_fork)


def _not_on_asyncio() -> StorageUsageError:
    """The error of the async API awaited where no asyncio event loop runs (trio, a bare
    ``coroutine.send``)."""
    return StorageUsageError(
        "pydantic-toast's async API runs on asyncio, and no asyncio event loop is running here "
        "(under trio, say): await it under asyncio (anyio's asyncio backend), or call the sync "
        "API (model_dump(), model_validate()) from a worker thread (trio.to_thread.run_sync)"
    )
