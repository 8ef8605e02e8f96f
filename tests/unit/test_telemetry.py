"""Telemetry at the boundary: OpenTelemetry spans and metrics, checked with the SDK in memory."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID, uuid4

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageOperationError,
    StoredRecord,
)
from pydantic_toast.backends.memory import MemoryBackend
from pydantic_toast.runtime import telemetry

SENTINEL = "S3ntinel-Value-42"


class Telemetry:
    """The spans and metrics recorded while telemetry is on."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        pydantic_toast.enable_telemetry(
            tracer_provider=tracer_provider, meter_provider=self.meter_provider
        )

    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += list(metric.data.data_points)
        return found


@pytest.fixture
def recorded() -> Iterator[Telemetry]:
    """Telemetry on, into in-memory exporters, for this test only."""
    state = Telemetry()
    try:
        yield state
    finally:
        pydantic_toast.disable_telemetry()
        state.meter_provider.shutdown()


def model_on(url: str) -> type[ExternalBaseModel]:
    return type(
        "Invoice",
        (ExternalBaseModel,),
        {
            "__annotations__": {"note": str},
            "model_config": ExternalConfigDict(storage=url, external_name="Invoice"),
        },
    )


class BrokenSave(MemoryBackend):
    """A backend whose save fails with a KeyError that names a field value."""

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        raise KeyError(records[0].data.decode())


class FlakyLoad(MemoryBackend):
    """A backend whose first load loses its connection (the boundary retries loads once)."""

    failures = 0

    async def load_records(self, keys: Sequence[tuple[str, UUID]]) -> list[StoredRecord | None]:
        if type(self).failures == 0:
            type(self).failures += 1
            raise ConnectionResetError(104, "Connection reset by peer")
        return await super().load_records(keys)


def test_import_does_not_import_opentelemetry() -> None:
    """`import pydantic_toast` loads no opentelemetry module, and telemetry starts off."""
    code = (
        "import sys, pydantic_toast\n"
        "from pydantic_toast.runtime import telemetry\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
        "assert telemetry.on is False\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_off_records_nothing(memory_url: str) -> None:
    """With telemetry off (the default), the boundary creates no span."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert telemetry.on is False
    invoice = model_on(memory_url)
    invoice.model_validate(invoice(note="x").model_dump())
    assert exporter.get_finished_spans() == ()


def test_save_and_load_spans_carry_operation_backend_class_count_bytes(
    recorded: Telemetry, memory_url: str
) -> None:
    """A save and a load give CLIENT spans with operation, backend, class, count and bytes."""
    invoice = model_on(memory_url)
    reference = pydantic_toast.dump([invoice(note=SENTINEL), invoice(note="b")])
    pydantic_toast.validate(list[invoice], reference)  # type: ignore[valid-type]
    spans = {span.name: span for span in recorded.spans()}
    save, load = spans["pydantic_toast.save"], spans["pydantic_toast.load"]
    for span in (save, load):
        assert span.kind is SpanKind.CLIENT
        assert span.attributes["pydantic_toast.backend"] == "Memory"
        assert span.attributes["pydantic_toast.class_name"] == "Invoice"
        assert span.attributes["pydantic_toast.record_count"] == 2
        assert span.attributes["pydantic_toast.bytes"] > len(SENTINEL)
        assert span.status.status_code is StatusCode.UNSET
        assert SENTINEL not in repr(dict(span.attributes))
    assert save.attributes["pydantic_toast.operation"] == "save"
    assert load.attributes["pydantic_toast.operation"] == "load"


def test_postgres_like_url_gives_system_and_server_but_no_password() -> None:
    """db.system.name and server.address/port come from the URL; user and password never."""
    from pydantic_toast._url import StorageURL

    state = Telemetry()
    try:
        span = telemetry.start(
            "save", "PostgreSQL", "Invoice", 1, StorageURL.parse("postgresql://u:Pw9x@db:6432/s")
        )
        span.finish(None, 10)
    finally:
        pydantic_toast.disable_telemetry()
        state.meter_provider.shutdown()
    (recorded_span,) = state.spans()
    attributes = dict(recorded_span.attributes)
    assert attributes["db.system.name"] == "postgresql"
    assert attributes["server.address"] == "db"
    assert attributes["server.port"] == 6432
    assert "Pw9x" not in repr(attributes)
    assert "u" not in attributes.values()


def test_error_span_and_error_counter_name_the_library_error(
    recorded: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing save: ERROR status, error.type = the library class, one error counted, a
    WARNING log with the cause, and no field value anywhere."""
    pydantic_toast.register_backend("brokensave", BrokenSave)
    try:
        invoice = model_on(f"brokensave://{uuid4().hex}")
        with pytest.raises(StorageOperationError):
            invoice(note=SENTINEL).model_dump()
    finally:
        pydantic_toast.unregister_backend("brokensave")
    (span,) = [s for s in recorded.spans() if s.name == "pydantic_toast.save"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "pydantic_toast.StorageOperationError"
    assert span.status.description == "StorageOperationError"
    (errors,) = recorded.points("pydantic_toast.operation.errors")
    assert errors.value == 1
    assert errors.attributes["error.type"] == "pydantic_toast.StorageOperationError"
    assert errors.attributes["pydantic_toast.operation"] == "save"
    warnings = [r for r in caplog.records if r.name == "pydantic_toast"]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert "KeyError" in warnings[0].getMessage()
    everything = repr(dict(span.attributes)) + repr(span.events) + caplog.text
    assert SENTINEL not in everything


def test_duration_histogram_and_active_counter(recorded: Telemetry, memory_url: str) -> None:
    """Every call is timed in the duration histogram; the in-flight counter returns to 0."""
    invoice = model_on(memory_url)
    for _ in range(3):
        invoice.model_validate(invoice(note="x").model_dump())
    durations = {
        p.attributes["pydantic_toast.operation"]: p
        for p in recorded.points("pydantic_toast.operation.duration")
    }
    assert durations["save"].count == 3
    assert durations["load"].count == 3
    assert 0 < durations["save"].sum < 3
    assert all(p.value == 0 for p in recorded.points("pydantic_toast.operation.active"))


def test_retry_is_one_span_marked_retried(recorded: Telemetry) -> None:
    """A load retried once after a lost connection is one span with pydantic_toast.retried."""
    pydantic_toast.register_backend("flakyload", FlakyLoad)
    try:
        invoice = model_on(f"flakyload://{uuid4().hex}")
        reference = invoice(note="x").model_dump()
        FlakyLoad.failures = 0
        assert invoice.model_validate(reference).note == "x"  # type: ignore[attr-defined]
    finally:
        pydantic_toast.unregister_backend("flakyload")
    loads = [s for s in recorded.spans() if s.name == "pydantic_toast.load"]
    assert len(loads) == 1
    assert loads[0].attributes["pydantic_toast.retried"] is True
    assert loads[0].status.status_code is StatusCode.UNSET


def test_cancelled_call_ends_its_span(recorded: Telemetry) -> None:
    """A cancelled backend call still ends its span and leaves nothing in flight."""

    class Slow(MemoryBackend):
        async def save_records(self, records: Sequence[StoredRecord]) -> None:
            await asyncio.sleep(10)

    pydantic_toast.register_backend("slowsave", Slow)
    try:
        invoice = model_on(f"slowsave://{uuid4().hex}")

        async def cancel() -> None:
            task = asyncio.ensure_future(pydantic_toast.adump(invoice(note="x")))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancel())
    finally:
        pydantic_toast.unregister_backend("slowsave")
    (span,) = [s for s in recorded.spans() if s.name == "pydantic_toast.save"]
    assert span.attributes["error.type"] == "asyncio.exceptions.CancelledError"
    assert all(p.value == 0 for p in recorded.points("pydantic_toast.operation.active"))


def test_pool_gauge_reports_what_the_backend_counts(recorded: Telemetry) -> None:
    """db.client.connection.count: used and idle as the backend reports; none for memory://."""

    class Pooled(MemoryBackend):
        def pool_connections(self) -> tuple[int, int] | None:
            return 2, 3

    pydantic_toast.register_backend("pooled", Pooled)
    name = uuid4().hex
    try:
        model_on(f"pooled://{name}")(note="x").model_dump()
        model_on(f"memory://{uuid4().hex}")(note="x").model_dump()
        points = recorded.points("db.client.connection.count")
    finally:
        pydantic_toast.unregister_backend("pooled")
        pydantic_toast.close_storage()
    by_state = {
        p.attributes["db.client.connection.state"]: p
        for p in points
        if p.attributes["pydantic_toast.backend"] == "Pooled"
    }
    assert {state: p.value for state, p in by_state.items()} == {"used": 2, "idle": 3}
    assert by_state["used"].attributes["db.client.connection.pool.name"] == f"Pooled {name}"
    assert not [p for p in points if p.attributes["pydantic_toast.backend"] == "Memory"]


def test_enable_without_opentelemetry_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry-api, enable_telemetry() names the extra to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(pydantic_toast.StorageConfigurationError, match=r"pydantic-toast\[otel\]"):
        pydantic_toast.enable_telemetry()
    assert telemetry.on is False
