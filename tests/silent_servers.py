"""Loopback TCP servers that never speak a storage protocol, for connect and timeout tests.

A :class:`SilentServer` listens on a free loopback port (:attr:`SilentServer.port`) and does
one of three things with the connections clients open:

* ``SilentServer()``: accepts each and holds it open without a word (a hung server);
* ``SilentServer(reply=b"...")``: accepts each, reads one request and answers ``reply``, then
  hangs up (another service on the port);
* ``SilentServer(accept=False)``: never accepts; the kernel's backlog completes the
  connections and nobody answers (a blackholed network).

Use it as a context manager: leaving it stops its thread and closes every socket.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

_BACKLOG = 16
_POLL = 0.1  # seconds between looks at the stop event while waiting for a connection


class SilentServer:
    """A loopback listener that holds, answers or never accepts (see the module docstring)."""

    def __init__(self, *, accept: bool = True, reply: bytes | None = None) -> None:
        if reply is not None and not accept:
            raise ValueError("a server that never accepts cannot reply: pass accept=True")
        self._reply = reply
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=_BACKLOG)
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if accept:
            self._listener.settimeout(_POLL)
            self._thread = threading.Thread(target=self._accept, daemon=True)
            self._thread.start()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, then close the held connections and the listener."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for connection in self._held:
            connection.close()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection = self._listener.accept()[0]
            except OSError:
                continue
            if self._reply is None:
                self._held.append(connection)
            else:
                self._answer(connection, self._reply)

    @staticmethod
    def _answer(connection: socket.socket, reply: bytes) -> None:
        """Read one request (up to 1 KiB), answer ``reply`` and hang up."""
        with connection:
            connection.settimeout(2)
            with contextlib.suppress(OSError):
                connection.recv(1024)
                connection.sendall(reply)
