"""Loops stranded by threads that ended: closing the library's own sockets without the loop.

Pydantic AI's ``agent.run_sync()`` (and code like it) sets a new event loop in each thread it
runs in and never closes it. When such a thread ends, its loop is stopped, and the library's
pools on it would stay open for as long as the library keeps them (their loop can no longer
close them). The loop is not the library's: it is never closed or run here, and of its
transports only the library's own are closed, found through the library's pools. Whoever
still holds the loop may run it again: the library then opens new pools on it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import threading
from asyncio import selector_events
from asyncio.selector_events import _SelectorTransport  # type: ignore[attr-defined]
from collections.abc import Iterable
from typing import Any

__all__ = ["close_transports", "held_transports", "is_stranded"]

# What the search looks into: plain containers, and the objects of the drivers' and the
# library's own modules (pools, connections, their protocols and streams). Anything else (a
# task's context and what the application keeps in it, loggers and their handlers, timer
# handles, functions, classes, loops, the application's own objects) is not followed: the
# application's sockets are reachable from there (through a ContextVar, a logging handler).
_CONTAINERS = (list, tuple, dict, set, frozenset, collections.deque)
_DRIVER_MODULES = frozenset(
    (
        "aiobotocore",
        "aiohttp",
        "aiosqlite",
        "asyncpg",
        "botocore",
        "pydantic_toast",
        "redis",
        "sqlalchemy",
    )
)
_CONTAINERS_AND_STREAMS = (
    *_CONTAINERS,
    asyncio.StreamReader,
    asyncio.StreamWriter,
    asyncio.StreamReaderProtocol,
)
_SEARCH_LIMIT = 200_000
"""Objects looked into at most per search (a PostgreSQL backend with one connection: 1,545)."""


def is_stranded(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> bool:
    """Whether ``loop`` is open, not running, ``thread`` (which ran it) has ended, and no task
    is pending on it.

    Only asyncio's own loops qualify: another implementation's transports (uvloop's) cannot be
    closed without their loop. A loop with a task pending was paused, not left: whoever runs
    it again resumes that task, maybe in the middle of a library call on its connections.
    """
    return (
        isinstance(loop, selector_events.BaseSelectorEventLoop)
        and not loop.is_closed()
        and not loop.is_running()
        and _has_ended(thread)
        and not asyncio.all_tasks(loop)
    )


def _has_ended(thread: threading.Thread) -> bool:
    """Whether ``thread`` has ended; a thread not started by :mod:`threading` counts as running
    until Python can tell (3.13 raises for one that ended)."""
    try:
        return not thread.is_alive()
    except RuntimeError:  # Python 3.13+: "thread is not alive", a foreign thread that ended
        return True
    except AssertionError:  # Python < 3.13, a foreign thread: cannot tell, so not released
        return False


def held_transports(
    roots: Iterable[object], loop: asyncio.AbstractEventLoop, *, beyond: Iterable[object] = ()
) -> list[object]:
    """The transports on ``loop`` reachable from ``roots`` (the library's backends).

    The search follows plain containers and the objects of the drivers' modules (see
    ``_DRIVER_MODULES``), never a task's context, a logger, a timer handle, a function, a
    class, a loop or an object of the application's, nor the objects ``beyond`` (the storage,
    the application's engines), so it finds the sockets of the backends' pools and not the
    application's.
    """
    found: list[object] = []
    seen: set[int] = {id(item) for item in beyond}
    stack = list(roots)
    while stack and len(seen) < _SEARCH_LIMIT:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, asyncio.BaseTransport):
            if getattr(item, "_loop", None) is loop:
                found.append(item)
            continue
        if _followed(item):
            stack.extend(gc.get_referents(item))
    return found


def _followed(item: object) -> bool:
    if isinstance(item, _CONTAINERS_AND_STREAMS):  # subclasses too: defaultdict, OrderedDict
        return True
    return type(item).__module__.partition(".")[0] in _DRIVER_MODULES and not isinstance(
        item, (type, asyncio.Handle)
    )


def close_transports(transports: Iterable[object]) -> int:
    """Close each socket transport at once, without its loop; return how many were closed.

    What ``transport.abort()`` does, with its last step (closing the socket, telling the
    protocol) taken here rather than queued on the stopped loop: nothing of the library's is
    left on the loop to run, should it run again. A TLS transport's socket transport is closed
    beneath it. A transport already closing (its last step queued) is left to its loop.
    """
    closed = 0
    for transport in transports:
        plain: Any = getattr(getattr(transport, "_ssl_protocol", None), "_transport", transport)
        if not isinstance(plain, _SelectorTransport):
            continue
        if plain._sock is None or plain._conn_lost:
            continue
        loop, descriptor = plain._loop, plain._sock_fd
        loop._remove_reader(descriptor)
        loop._remove_writer(descriptor)
        plain._closing = True
        plain._buffer.clear()
        plain._conn_lost += 1
        with contextlib.suppress(Exception):  # a driver's connection_lost; the socket closes
            plain._call_connection_lost(None)
        closed += 1
    return closed
