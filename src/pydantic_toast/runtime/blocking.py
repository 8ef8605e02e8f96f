"""Making blocking calls visible: a sync storage call made on a running event loop.

A sync call (``model_dump()``, ``model_validate(ref)``, ``page()``, ...) from ``async def`` code
works, but blocks that loop for every round trip. :func:`report_blocking_call` tells the
developer once per call site, naming the async method to use instead.

``PYDANTIC_TOAST_BLOCKING_CALLS`` chooses how: ``warn`` (the default: a
:class:`BlockingStorageCallWarning`, pointing at the caller's line), ``log`` (a warning on the
``pydantic_toast`` logger, for production), or ``off``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings

__all__ = ["BlockingStorageCallWarning", "report_blocking_call"]

ENV_VAR = "PYDANTIC_TOAST_BLOCKING_CALLS"
_MODES = ("warn", "log", "off")
# Frames of these packages are the library (and Pydantic calling it), not the caller's line.
_INTERNAL = (
    "pydantic_toast",
    "pydantic",
    "pydantic_core",
    "fastapi",
    "starlette",
    "anyio",
    "asyncio",
    "uvicorn",
)
_logger = logging.getLogger("pydantic_toast")
_seen: set[tuple[str, int]] = set()
_seen_lock = threading.Lock()


class BlockingStorageCallWarning(RuntimeWarning):
    """A sync storage call blocked a running event loop: use the async method it names."""


def report_blocking_call(call: str, instead: str) -> None:
    """Warn (once per call site) that ``call`` is blocking the running loop; name ``instead``."""
    mode = os.environ.get(ENV_VAR, "warn").strip().lower() or "warn"
    if mode == "off":
        return
    route = _fastapi_route()
    stacklevel, filename, lineno = _caller() if route is None else (0, *route[2:])
    with _seen_lock:
        if (filename, lineno) in _seen:
            return
        _seen.add((filename, lineno))
    if route is None:
        message = (
            f"{call} blocked the running event loop for its storage round trips "
            f"({filename}:{lineno}): in async code use {instead}."
        )
    else:
        doing, function = route[:2]
        message = (
            f"{call} blocked the running event loop for its storage round trips while FastAPI "
            f"{doing} {function} ({filename}:{lineno}): call "
            "pydantic_toast.fastapi.install(app) before adding routes (its routes load and save "
            "the request's and the response's models with the async API)"
        )
        if doing.startswith("serialized"):
            message += (
                ", or save the response before returning it (await obj.asave() or await "
                "pydantic_toast.adump(value)): an unchanged model is not written again"
            )
        message += "."
    if mode == "log" or mode not in _MODES:
        _logger.warning(message)
    elif route is None:
        warnings.warn(message, BlockingStorageCallWarning, stacklevel=stacklevel)
    else:
        warnings.warn_explicit(message, BlockingStorageCallWarning, filename, lineno)


def _caller() -> tuple[int, str, int]:
    """The stacklevel of the first frame outside the library, with its file and line."""
    frame = sys._getframe(2)  # report_blocking_call's caller: stacklevel 2 for warn() there
    level = 2
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.split(".", 1)[0] not in _INTERNAL:
            return level, frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return 2, "<unknown>", 0


def _fastapi_route() -> tuple[str, str, str, int] | None:
    """What FastAPI is doing, for which route or dependency (name, file, line), if it is that.

    FastAPI validates a request and serializes an ``async def`` route's response on the event
    loop, from its own frames only: the first frame outside the library would be the server's
    (or a test client's thread), so the route is read from FastAPI's frames instead. ``None``
    when a frame of the caller's own code comes first (a route or dependency calling the
    library itself).
    """
    frame = sys._getframe(2)
    while frame is not None:
        module, name = frame.f_globals.get("__name__", ""), frame.f_code.co_name
        if module.split(".", 1)[0] not in _INTERNAL:  # the caller's own line: point there
            return None
        if module == "fastapi.routing" and name == "serialize_response":
            context = frame.f_locals.get("endpoint_ctx") or {}
            if "file" in context and "line" in context:
                where = context.get("function", "?"), context["file"], context["line"]
                return "serialized the response of the async def route", *where
            return None
        if module == "fastapi.dependencies.utils" and name == "solve_dependencies":
            code = getattr(getattr(frame.f_locals.get("dependant"), "call", None), "__code__", None)
            if code is None:
                return None
            where = code.co_name, code.co_filename, code.co_firstlineno
            return "validated the request for", *where
        frame = frame.f_back  # type: ignore[assignment]
    return None


def forget_call_sites() -> None:
    """Warn again at call sites already reported (for tests)."""
    with _seen_lock:
        _seen.clear()
