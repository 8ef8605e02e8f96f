"""The pool gauge reads the real pools: connections checked out of them are counted exactly."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import uuid4

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.base import StorageBackend

POOLED = pytest.mark.parametrize(
    "storage_url",
    [
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
    indirect=True,
)


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """Telemetry on, its metrics read in memory, for this test only."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pydantic_toast.enable_telemetry(meter_provider=provider)
    try:
        yield reader
    finally:
        pydantic_toast.disable_telemetry()
        provider.shutdown()


def connections(reader: InMemoryMetricReader, backend: str) -> dict[str, int]:
    """``db.client.connection.count`` of one backend kind, by state."""
    found: dict[str, int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "db.client.connection.count":
                    continue
                for point in metric.data.data_points:
                    if point.attributes["pydantic_toast.backend"] == backend:
                        state = str(point.attributes["db.client.connection.state"])
                        found[state] = found.get(state, 0) + int(point.value)
    return found


@contextlib.asynccontextmanager
async def checked_out(backend: StorageBackend, count: int) -> AsyncIterator[None]:
    """Hold ``count`` connections of the backend's own pool."""
    engine = getattr(backend, "_engine", None)
    held: list[Any] = []
    if engine is not None:
        for _ in range(count):
            held.append(await engine.connect())
        try:
            yield
        finally:
            for connection in held:
                await connection.close()
        return
    pool = backend._client.connection_pool  # type: ignore[attr-defined]
    for _ in range(count):
        held.append(await pool.get_connection())
    try:
        yield
    finally:
        for connection in held:
            await pool.release(connection)


@POOLED
async def test_connections_in_use_are_counted_exactly(
    storage_url: str, reader: InMemoryMetricReader
) -> None:
    """Two connections held: used is 2; released: used is 0 and they are idle."""
    note = type(
        "Note",
        (ExternalBaseModel,),
        {
            "__annotations__": {"text": str},
            "model_config": ExternalConfigDict(
                storage=storage_url, external_name=f"Note{uuid4().hex}"
            ),
        },
    )
    await note(text="connect").asave()
    connected = await pydantic_toast.current_storage().connected(StorageURL.parse(storage_url))
    kind = type(connected.backend).__name__.removesuffix("Backend")
    assert connections(reader, kind).get("used") == 0
    async with checked_out(connected.backend, 2):
        during = connections(reader, kind)
        assert during["used"] == 2
    after = connections(reader, kind)
    assert after["used"] == 0
    assert after["idle"] >= 2  # the two went back to the pool
    await pydantic_toast.aclose_storage()
    assert connected.backend.pool_connections() is None  # closed: nothing more to report
