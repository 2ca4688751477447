"""Raw-socket plumbing shared by the HTTP and websocket servers."""
from __future__ import annotations

import itertools
import logging
import socket
import struct
import threading
from email.utils import formatdate
from typing import Callable

log = logging.getLogger(__name__)

__all__ = ["Listener", "ConnectionSet", "abort", "http_date", "read_head"]

_MAX_HEAD = 64 * 1024


def http_date() -> str:
    """Current date in the HTTP ``Date`` header format (real time, like the real server)."""
    return formatdate(usegmt=True)


def abort(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0): the peer sees 'connection reset', not a clean end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def read_head(sock: socket.socket, buf: bytearray) -> bytes | None:
    """Read one HTTP request head (up to the blank line) from ``sock``; None on EOF.

    Bytes after the head stay in ``buf`` for the next request (keep-alive pipelining).
    """
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end])
            del buf[: end + 4]
            return head
        if len(buf) > _MAX_HEAD:
            return None
        data = sock.recv(65536)
        if not data:
            return None
        buf += data


class ConnectionSet:
    """Open connections of one server, so stop() can cut them all and join their threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict[int, tuple[socket.socket, threading.Thread]] = {}
        self._ids = itertools.count(1)

    def spawn(self, sock: socket.socket, name: str, target: Callable[[socket.socket, int], None]) -> int:
        """Serve ``sock`` in a new daemon thread ``fake-tardis-<name>-<id>``."""
        cid = next(self._ids)

        def run():
            try:
                target(sock, cid)
            except Exception:  # a handler bug must not kill the server; show it
                log.exception("connection %s-%d failed", name, cid)
            finally:
                try:
                    sock.close()
                except OSError:
                    pass
                with self._lock:
                    self._items.pop(cid, None)

        t = threading.Thread(target=run, name=f"fake-tardis-{name}-{cid}", daemon=True)
        with self._lock:
            self._items[cid] = (sock, t)
        t.start()
        return cid

    def close_all(self, timeout: float) -> None:
        """Shut every socket down (wakes blocked reads/writes) and join the threads."""
        with self._lock:
            items = list(self._items.values())
        for sock, _ in items:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, t in items:
            t.join(timeout)


class Listener:
    """A TCP listener on 127.0.0.1 with its accept thread; restartable on the same port."""

    def __init__(self, name: str, port: int, on_accept: Callable[[socket.socket], None]):
        self.name, self.port, self.on_accept = name, port, on_accept
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether it is accepting connections."""
        return self._sock is not None

    def start(self) -> None:
        """Bind (port 0 picks one; later restarts reuse it) and accept in a thread."""
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._thread = threading.Thread(target=self._run, args=(sock,), name=f"fake-tardis-{self.name}-accept",
                                        daemon=True)
        self._thread.start()

    def _run(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # stop() shut the socket down
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.on_accept(conn)
            except Exception:
                log.exception("accept handler of %s failed", self.name)
                abort(conn)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop accepting: new connections are refused from now on."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        sock.close()
        if self._thread is not None:
            self._thread.join(timeout)
