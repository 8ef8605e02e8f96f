"""A TCP proxy in front of a real server that can lose one reply, or refuse connections.

Tests point a storage URL at :attr:`FaultProxy.port` instead of the server's. Bytes pass
through unchanged until a fault is armed:

* :meth:`FaultProxy.lose_reply_to` ``(trigger)``: the first request holding ``trigger`` (a
  byte string or a compiled bytes pattern, matched in the bytes the client sent since the
  server last answered) is forwarded to the server; the server's reply is read until it
  falls silent, and thrown away; then both sides of that connection are closed. The server
  has executed the request (and committed it: the reply comes after the commit); the client
  sees its connection drop, as when a network path dies after the request left. Its
  ``then`` runs once the reply is thrown away, before the connection is cut: a fault of the
  test's own that the client then meets (a server gone busy while the reply was lost).
* :meth:`FaultProxy.delay_reply_to` ``(trigger, seconds)``: the reply to the first request
  holding ``trigger`` reaches the client ``seconds`` late, on a connection that stays open
  (a slow network: the server executed the request at once).
* :meth:`FaultProxy.refuse_connections` ``(n)``: the next ``n`` connections are closed as
  soon as they are accepted, before any byte is read (a connection that fails while being
  opened: nothing was sent).

It runs on threads of its own, so any event loop of the code under test works through it.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

_CHUNK = 65536
_QUIET = 0.2  # seconds of silence that end a reply being thrown away


class FaultProxy:
    """A loopback TCP proxy to ``host:port`` (see the module docstring)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._trigger: bytes | re.Pattern[bytes] | None = None
        self._then: Callable[[], None] | None = None  # run once the armed reply is lost
        self._delay = 0.0  # the armed trigger delays its reply this long (0: loses it)
        self._refuse = 0
        self.replies_lost = 0
        self.refused = 0
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def lose_reply_to(
        self, trigger: bytes | re.Pattern[bytes], then: Callable[[], None] | None = None
    ) -> None:
        """Lose the reply to the next request holding ``trigger``, then run ``then()`` before
        cutting the connection (see the module docstring)."""
        with self._lock:
            self._trigger, self._delay, self._then = trigger, 0.0, then

    def delay_reply_to(self, trigger: bytes | re.Pattern[bytes], seconds: float) -> None:
        """Hold the reply to the next request holding ``trigger`` for ``seconds``."""
        with self._lock:
            self._trigger, self._delay, self._then = trigger, seconds, None

    def refuse_connections(self, count: int) -> None:
        """Close the next ``count`` connections at once, before reading anything."""
        with self._lock:
            self._refuse = count

    @property
    def armed(self) -> bool:
        """Whether an armed reply loss has not happened yet."""
        with self._lock:
            return self._trigger is not None

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refuse = self._refuse > 0
                if refuse:
                    self._refuse -= 1
                    self.refused += 1
            if refuse:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
                _close(client)  # an RST: the client's connect (or first read) fails
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            link = _Link(self, client, server)
            threading.Thread(target=link.upstream, daemon=True).start()
            threading.Thread(target=link.downstream, daemon=True).start()

    def _take_trigger(self, seen: bytes) -> float | None:
        """``None`` unless ``seen`` holds the armed trigger (then disarmed: it fires once);
        else the delay of its reply (0: lost)."""
        with self._lock:
            trigger = self._trigger
            if trigger is None:
                return None
            if isinstance(trigger, bytes) and trigger not in seen:
                return None
            if isinstance(trigger, re.Pattern) and trigger.search(seen) is None:
                return None
            self._trigger = None
            return self._delay

    def _take_then(self) -> Callable[[], None] | None:
        with self._lock:
            then, self._then = self._then, None
            return then


class _Link:
    """One proxied connection: a client socket and its server socket."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.cutting = threading.Event()  # the next reply is to be thrown away
        self.delay = 0.0  # the next reply is to be held this long
        self.done = threading.Event()
        self.request = b""  # the client's bytes since the server last answered

    def upstream(self) -> None:
        """Client to server; arms the cut when the trigger passes (in one request: the bytes
        sent since the server last answered)."""
        try:
            while not self.done.is_set():
                chunk = self.client.recv(_CHUNK)
                if not chunk:
                    break
                self.request = seen = self.request[-65536:] + chunk
                delay = self.proxy._take_trigger(seen)
                if delay:
                    self.delay = delay
                elif delay is not None:
                    self.cutting.set()
                self.server.sendall(chunk)
                if self.cutting.is_set():
                    return  # nothing more goes to the server: the downstream side cuts
        except OSError:
            pass
        self._close()

    def downstream(self) -> None:
        """Server to client; once cutting, the reply is read until silent and dropped."""
        try:
            while not self.done.is_set():
                chunk = self.server.recv(_CHUNK)
                if not chunk:
                    break
                if self.cutting.is_set():
                    self._drain()
                    with self.proxy._lock:
                        self.proxy.replies_lost += 1
                    then = self.proxy._take_then()
                    if then is not None:
                        then()
                    break
                self.request = b""
                if self.delay:
                    time.sleep(self.delay)
                    self.delay = 0.0
                self.client.sendall(chunk)
        except OSError:
            pass
        self._close()

    def _drain(self) -> None:
        self.server.settimeout(_QUIET)
        with contextlib.suppress(OSError):
            while self.server.recv(_CHUNK):
                pass

    def _close(self) -> None:
        self.done.set()
        for sock in (self.client, self.server):
            _close(sock)
            with self.proxy._lock:
                self.proxy._sockets.discard(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
