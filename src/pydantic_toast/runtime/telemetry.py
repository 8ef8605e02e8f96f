"""Telemetry at the boundary: a span and metrics for every call into a backend.

Off by default, and then free: the boundary checks :data:`on` before doing anything here.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Span", "on", "start"]

on: bool = False
"""Whether the boundary records telemetry."""


class Span(Protocol):
    """One backend call being measured."""

    def finish(self, error: BaseException | None) -> None:
        """End the measurement, with the library error the call raised, if any."""


class _Timing:
    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def finish(self, error: BaseException | None) -> None:
        return


def start(operation: str, backend: str, class_name: str | None, count: int) -> Span:
    """Start measuring one backend call."""
    return _Timing()
