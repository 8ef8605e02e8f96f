"""Telemetry at the boundary: an OpenTelemetry span and metrics for every call into a backend.

Off by default, and then free: the boundary reads :data:`on` and does nothing else here, and
OpenTelemetry is not even imported. :func:`enable_telemetry` switches it on (it needs the
``opentelemetry-api`` package: ``pip install 'pydantic-toast[otel]'``); spans and metrics then go
to the global tracer and meter providers, or to the ones given.

What is recorded, per backend call (``save``, ``load``, ``delete``, ``list``, ``count``,
``connect``, ``disconnect``):

* a span ``pydantic_toast.<operation>`` (kind CLIENT) with ``pydantic_toast.operation``,
  ``pydantic_toast.backend`` (``PostgreSQL``, ``Redis``, ``SQLite``, ``Memory`` or a custom
  backend's class name), ``db.system.name``, ``server.address``/``server.port``,
  ``pydantic_toast.class_name``, ``pydantic_toast.record_count``, ``pydantic_toast.bytes``
  (the JSON bytes written or read, for saves and loads), ``pydantic_toast.retried`` when the
  boundary retried once, and on failure ``error.type`` (the library error's class) with an
  ERROR status;
* ``pydantic_toast.operation.duration`` (histogram, seconds) and
  ``pydantic_toast.operation.errors`` (counter), by operation, backend, class name and
  ``error.type``; ``pydantic_toast.operation.active`` (up-down counter): backend calls in
  flight, each holding at most one pooled connection;
* ``db.client.connection.count`` (up-down counter, OpenTelemetry's database semantic
  conventions): the connections of the backends' pools by ``db.client.connection.state``
  (``used`` or ``idle``), read from the pools themselves when metrics are collected
  (PostgreSQL and SQLite: SQLAlchemy's pool; Redis: redis-py's), with
  ``db.client.connection.pool.name`` (backend and server address), ``pydantic_toast.backend``
  and ``db.system.name``. A backend reports its pool through
  :meth:`~pydantic_toast.backends.base.StorageBackend.pool_connections`.

Never recorded: field values, record ids, URLs, user names or passwords.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from pydantic_toast._exceptions import StorageConfigurationError
from pydantic_toast.backends.registry import POSTGRESQL_SCHEMES

if TYPE_CHECKING:
    from pydantic_toast._url import StorageURL
    from pydantic_toast.backends.base import StorageBackend

__all__ = ["Span", "disable_telemetry", "enable_telemetry", "on", "start", "watch_pool"]

on: bool = False
"""Whether the boundary records telemetry (set by :func:`enable_telemetry`)."""

_SYSTEMS = {
    **dict.fromkeys(POSTGRESQL_SCHEMES, "postgresql"),
    "redis": "redis",
    "rediss": "redis",
    "sqlite": "sqlite",
    "sqlite+aiosqlite": "sqlite",
}


class Span(Protocol):
    """One backend call being measured."""

    def retried(self) -> None:
        """Note that the boundary repeated the call once after a lost connection."""

    def finish(self, error: BaseException | None, size: int | None = None) -> None:
        """End the measurement, with the library error the call raised, if any.

        Args:
            error: The library error raised to the caller, or ``None`` on success.
            size: The bytes written or read, when known.
        """


class _Instruments:
    """The tracer and meters, made once per :func:`enable_telemetry`."""

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import metrics, trace
        from opentelemetry.metrics import Observation
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from pydantic_toast import __version__

        self.kind_client = SpanKind.CLIENT
        self.error_status = Status(StatusCode.ERROR)
        self.status_type = Status
        self.status_error = StatusCode.ERROR
        self.tracer = trace.get_tracer(
            "pydantic_toast", __version__, tracer_provider=tracer_provider
        )
        meter = metrics.get_meter("pydantic_toast", __version__, meter_provider=meter_provider)
        self.duration = meter.create_histogram(
            "pydantic_toast.operation.duration",
            unit="s",
            description="Duration of calls into a storage backend, retries included.",
        )
        self.errors = meter.create_counter(
            "pydantic_toast.operation.errors",
            unit="{error}",
            description="Backend calls that failed, by the library error raised.",
        )
        # Counted in a plain dict, read at collection time: two SDK measurements per call
        # would cost more than the rest of the telemetry together.
        self.in_flight: dict[tuple[str, str], int] = {}
        meter.create_observable_up_down_counter(
            "pydantic_toast.operation.active",
            callbacks=[self._observe_in_flight],
            unit="{operation}",
            description="Backend calls in flight (each holds at most one pooled connection).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._observe_pools],
            unit="{connection}",
            description="Connections of the storage backends' pools, used or idle.",
        )
        self.observation = Observation

    def _observe_pools(self, options: Any) -> list[Any]:
        totals: dict[tuple[tuple[str, Any], ...], int] = {}
        for backend, labels in list(_pools.items()):
            counts = backend.pool_connections()
            if counts is None:
                continue
            for state, count in zip(("used", "idle"), counts, strict=True):
                key = (*labels, ("db.client.connection.state", state))
                totals[key] = totals.get(key, 0) + count
        return [self.observation(count, dict(key)) for key, count in totals.items()]

    def _observe_in_flight(self, options: Any) -> list[Any]:
        return [
            self.observation(
                count, {"pydantic_toast.operation": operation, "pydantic_toast.backend": backend}
            )
            for (operation, backend), count in list(self.in_flight.items())
        ]


_instruments: _Instruments | None = None
# The connected backends whose pools the connection gauge reads, with their labels (weakly:
# a closed and dropped backend leaves by itself).
_pools: weakref.WeakKeyDictionary[StorageBackend, tuple[tuple[str, Any], ...]] = (
    weakref.WeakKeyDictionary()
)


def watch_pool(backend: StorageBackend, kind: str, url: StorageURL) -> None:
    """Let the connection gauge read ``backend``'s pool (called once per connected backend)."""
    host = (url.host or "")[:255]
    address = f"{host}:{url.port}" if host and url.port else host
    labels: list[tuple[str, Any]] = [
        ("db.client.connection.pool.name", f"{kind} {address}" if address else kind),
        ("pydantic_toast.backend", kind),
    ]
    system = _SYSTEMS.get(url.scheme)
    if system is not None:
        labels.append(("db.system.name", system))
    _pools[backend] = tuple(labels)


def enable_telemetry(*, tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Record OpenTelemetry spans and metrics for every call into a storage backend.

    Telemetry is off until this is called; when off it costs one attribute check per call.

    Args:
        tracer_provider: Where spans go (default: OpenTelemetry's global tracer provider).
        meter_provider: Where metrics go (default: OpenTelemetry's global meter provider).

    Raises:
        StorageConfigurationError: ``opentelemetry-api`` is not installed.
    """
    global on, _instruments
    try:
        instruments = _Instruments(tracer_provider, meter_provider)
    except ImportError:
        raise StorageConfigurationError(
            "telemetry needs opentelemetry-api, which is not installed: run "
            "pip install 'pydantic-toast[otel]'"
        ) from None
    _instruments = instruments
    on = True


def disable_telemetry() -> None:
    """Stop recording telemetry (calls already in flight still finish their spans)."""
    global on
    on = False


class _Call:
    __slots__ = ("attributes", "instruments", "key", "span", "started")

    def __init__(
        self,
        instruments: _Instruments,
        attributes: dict[str, Any],
        name: str,
        key: tuple[str, str],
    ) -> None:
        self.instruments = instruments
        self.attributes = attributes
        self.key = key
        self.span = instruments.tracer.start_span(
            name, kind=instruments.kind_client, attributes=attributes
        )
        in_flight = instruments.in_flight
        in_flight[key] = in_flight.get(key, 0) + 1
        self.started = time.perf_counter()

    def retried(self) -> None:
        self.span.set_attribute("pydantic_toast.retried", True)

    def finish(self, error: BaseException | None, size: int | None = None) -> None:
        elapsed = time.perf_counter() - self.started
        instruments = self.instruments
        labels = _metric_attributes(self.attributes)
        instruments.in_flight[self.key] -= 1
        if size is not None:
            self.span.set_attribute("pydantic_toast.bytes", size)
        if error is not None:
            error_type = f"{type(error).__module__}.{type(error).__qualname__}"
            error_type = error_type.replace("pydantic_toast._exceptions.", "pydantic_toast.")
            labels["error.type"] = error_type
            self.span.set_attribute("error.type", error_type)
            self.span.set_status(
                instruments.status_type(instruments.status_error, type(error).__name__)
            )
            instruments.errors.add(1, labels)
        instruments.duration.record(elapsed, labels)
        self.span.end()


def _metric_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in attributes.items()
        if key
        in (
            "pydantic_toast.operation",
            "pydantic_toast.backend",
            "pydantic_toast.class_name",
            "db.system.name",
        )
    }


def start(
    operation: str, backend: str, class_name: str | None, count: int, url: StorageURL
) -> Span:
    """Start measuring one backend call (only called when :data:`on`)."""
    instruments = _instruments
    assert instruments is not None  # on is set only after the instruments exist
    attributes: dict[str, Any] = {
        "pydantic_toast.operation": operation,
        "pydantic_toast.backend": backend,
        "pydantic_toast.record_count": count,
    }
    system = _SYSTEMS.get(url.scheme)
    if system is not None:
        attributes["db.system.name"] = system
    if url.host:
        attributes["server.address"] = url.host[:255]
        if url.port:
            attributes["server.port"] = url.port
    if class_name is not None:
        attributes["pydantic_toast.class_name"] = class_name[:255]
    return _Call(instruments, attributes, f"pydantic_toast.{operation}", (operation, backend))
