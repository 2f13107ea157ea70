"""A TCP proxy in front of a real database server, for tests that need the wire.

* ``silence()``: from then on nothing more reaches the client (or the server): a server
  that accepted the connection and stopped answering, as a frozen or partitioned
  server looks to a client.
* ``exchanges``: how many times the conversation turned from the server answering to
  the client sending again — the round trips the client waited for.
* ``cut_after(n)``: the connection that makes the n-th exchange from now is cut right
  there, both ways (once): a connection lost in the middle of a transaction.
* ``mute()``: on the connections open now, the server's answers never reach the client
  any more, while what the client sends still reaches the server (an answer lost in the
  network after the request arrived); new connections work.
* ``refuse_new()``: from then on a new connection is closed as soon as it is accepted.

``SilentServer`` is a socket that accepts connections and never answers at all.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Proxy:
    """Relays every connection to ``upstream`` (host, port), counting exchanges."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._silent = threading.Event()
        self._lock = threading.Lock()
        self._last_from_server: dict[int, bool] = {}
        self.exchanges = 0
        self._cut_at: int | None = None
        self._pairs: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._sockets: list[socket.socket] = []
        self._muted: set[int] = set()
        self._refusing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def silence(self) -> None:
        """Stop relaying anything, in both directions, on every connection."""
        self._silent.set()

    def mute(self) -> None:
        """Drop the server's answers on every connection open now; relay the rest."""
        with self._lock:
            self._muted.update(self._pairs)

    def refuse_new(self) -> None:
        """Close every connection accepted from now on at once."""
        self._refusing.set()

    def cut_after(self, n: int) -> None:
        """Cut the connection that makes the ``n``-th exchange from now, before relaying it."""
        with self._lock:
            self._cut_at = self.exchanges + n

    def reset_count(self) -> None:
        """Start counting exchanges from zero."""
        with self._lock:
            self.exchanges = 0

    def close(self) -> None:
        """Stop accepting, and drop every relayed connection."""
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing.is_set():
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, server]
            key = id(client)
            self._pairs[key] = (client, server)
            self._last_from_server[key] = True
            threading.Thread(
                target=self._pump, args=(client, server, key, False), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, key, True), daemon=True
            ).start()

    def _pump(
        self, source: socket.socket, target: socket.socket, key: int, from_server: bool
    ) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
                return
            if self._silent.is_set() or (from_server and key in self._muted):
                continue  # swallowed: the other side waits forever
            with self._lock:
                if not from_server and self._last_from_server[key]:
                    self.exchanges += 1
                    if self._cut_at is not None and self.exchanges >= self._cut_at:
                        self._cut_at = None
                        for sock in self._pairs[key]:
                            with contextlib.suppress(OSError):
                                sock.shutdown(socket.SHUT_RDWR)
                        return
                self._last_from_server[key] = from_server
            try:
                target.sendall(data)
            except OSError:
                return


class SilentServer:
    """Accepts TCP connections and never sends or reads a byte."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(conn)  # kept open, never answered

    def close(self) -> None:
        """Close the listener and every accepted connection."""
        self._listener.close()
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()


@contextmanager
def proxy_to(host: str, port: int) -> Iterator[Proxy]:
    """A :class:`Proxy` to ``host:port`` for the duration."""
    proxy = Proxy((host, port))
    try:
        yield proxy
    finally:
        proxy.close()


@contextmanager
def silent_server() -> Iterator[SilentServer]:
    """A :class:`SilentServer` for the duration."""
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()
