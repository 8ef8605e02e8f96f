"""A client for ``tests/loop_lag_app.py`` under uvicorn: 200-request bursts, watched from inside.

Plain asyncio sockets over kept-alive HTTP/1.1 connections: the 200 requests of a burst are
written in one step of the client's loop, and the client costs the server nothing but their
bytes. Used by ``bench/fastapi_loop_server.py`` and ``tests/integration/test_loop_steps.py``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

#: Requests per burst, each on its own connection.
BURST = 200

#: Burst kinds: the integration's routes, their plain-FastAPI twins, the sync API.
KINDS = ["plain", "toast", "plain-get", "response", "sync"]

#: The path prefix of each kind's routes.
PREFIXES = {
    "plain": "/plain/",
    "toast": "/toast/",
    "plain-get": "/plain/",
    "response": "/toast/",
    "sync": "/sync/",
}


class Connection:
    """One kept-alive HTTP/1.1 connection: a request written, its answer read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        """A connection to ``127.0.0.1:port``."""
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, request: bytes) -> None:
        """Write a request (sent now: no await)."""
        self.writer.write(request)

    async def answer(self) -> tuple[int, bytes]:
        """The next answer's status and body."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        )
        return int(lines[0].split()[1]), await self.reader.readexactly(length)

    async def call(self, request: bytes) -> Any:
        """Send a request, and the JSON it answers (a 200 is required)."""
        self.send(request)
        status, body = await self.answer()
        assert status == 200, (status, body[:300])
        return json.loads(body)

    def close(self) -> None:
        """Close the connection."""
        self.writer.close()


def request(method: str, path: str, body: Any = None) -> bytes:
    """An HTTP/1.1 request's bytes, with ``body`` as JSON."""
    if body is None:
        return f"{method} {path} HTTP/1.1\r\nHost: loop\r\n\r\n".encode()
    data = json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: loop\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def burst_requests(kind: str, reference: dict[str, Any]) -> list[bytes]:
    """The requests of one burst of ``kind`` (see :data:`KINDS`)."""
    ref, body = reference["id"], {"item": reference}
    if kind in ("toast", "plain"):
        return [
            call
            for _ in range(BURST // 4)
            for call in (
                request("GET", f"/{kind}/items/{ref}"),
                request("POST", f"/{kind}/gifts", body),
                request("POST", f"/{kind}/items", body),
                request("POST", f"/{kind}/gifts", body),
            )
        ]
    if kind == "response":
        return [request("GET", f"/toast/refs/{ref}")] * BURST
    if kind == "plain-get":
        return [request("GET", f"/plain/items/{ref}")] * BURST
    assert kind == "sync", kind
    return [
        call
        for _ in range(BURST // 2)
        for call in (
            request("GET", f"/sync/items/{ref}"),
            request("POST", "/sync/items", {"name": "x"}),
        )
    ]


class Bursts:
    """Connections to the loop-lag app: a control one and :data:`BURST` for the requests."""

    def __init__(self, control: Connection, pool: list[Connection]) -> None:
        self.control, self.pool = control, pool
        self.reference: dict[str, Any] = {}

    @classmethod
    async def open(cls, port: int) -> Bursts:
        """Connect, and save the item the bursts' requests refer to."""
        bursts = cls(
            await Connection.open(port), [await Connection.open(port) for _ in range(BURST)]
        )
        bursts.reference = await bursts.control.call(request("POST", "/_loop/seed"))
        return bursts

    async def burst(self, kind: str, over_ms: float = 5.0) -> dict[str, Any]:
        """One burst of ``kind``: what the server's :class:`~tests.loop_steps.LoopWatch` saw."""
        return await self.watch(burst_requests(kind, self.reference), over_ms)

    async def watch(self, requests: list[bytes], over_ms: float = 5.0) -> dict[str, Any]:
        """``requests`` sent at once (one a connection), watched: what the watch saw."""
        pool = self.pool[: len(requests)]
        await self.control.call(request("POST", f"/_loop/start?over_ms={over_ms}"))
        for connection, sent in zip(pool, requests, strict=True):
            connection.send(sent)  # all written in one step of this loop
        answers = await asyncio.gather(*(connection.answer() for connection in pool))
        watched: dict[str, Any] = await self.control.call(request("POST", "/_loop/stop"))
        bad = [(status, body[:200]) for status, body in answers if status != 200]
        assert not bad, f"{len(bad)} answers were not 200, the first: {bad[0]}"
        return watched

    async def objects(self) -> int:
        """The objects the server keeps after a full collection."""
        counted: dict[str, int] = await self.control.call(request("POST", "/_loop/objects"))
        return counted["objects"]

    async def freeze(self) -> None:
        """Move what survives a full collection out of the collector's way, in the server."""
        await self.control.call(request("POST", "/_loop/freeze"))

    def close(self) -> None:
        """Close every connection."""
        for connection in [self.control, *self.pool]:
            connection.close()


def served_requests(watched: dict[str, Any], prefix: str, *, own: bool = True) -> float:
    """The longest step that served a request under ``prefix`` (``/toast/``), in ms.

    By :attr:`~tests.loop_steps.Step.own_ms` (``own``), else held.

    Raises:
        AssertionError: No step was named after such a request (the names are missing).
    """
    by_name = watched["longest_own_by_name" if own else "longest_by_name"]
    steps = [ms for name, ms in by_name.items() if name.split(" ", 1)[-1].startswith(prefix)]
    assert steps, f"no step served a request under {prefix}: {sorted(by_name)}"
    return max(steps)
