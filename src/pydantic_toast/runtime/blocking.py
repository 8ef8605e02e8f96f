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
    stacklevel, filename, lineno = _caller()
    with _seen_lock:
        if (filename, lineno) in _seen:
            return
        _seen.add((filename, lineno))
    message = (
        f"{call} blocked the running event loop for its storage round trips "
        f"({filename}:{lineno}): in async code use {instead}. Set {ENV_VAR}=log (or off) to "
        "log this instead of warning"
    )
    if mode == "log" or mode not in _MODES:
        _logger.warning(message)
        return
    warnings.warn(message, BlockingStorageCallWarning, stacklevel=stacklevel)


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


def forget_call_sites() -> None:
    """Warn again at call sites already reported (for tests)."""
    with _seen_lock:
        _seen.clear()
