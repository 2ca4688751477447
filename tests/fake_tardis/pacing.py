"""Per-request line pacing for replay responses (``FakeTardisMachine.line_rate``).

tardis-machine serves one request at some 20-30k lines/s on one core; concurrency across
requests is what pays. A :class:`Pacer` holds one response to its own rate by sleeping
(never spinning: the test machines have two cores), so concurrent requests are paced
independently.
"""
from __future__ import annotations

import threading
import time
from typing import BinaryIO, Iterator

__all__ = ["Pacer", "cached_chunks"]


class Pacer:
    """Line ``i`` (1-based) of a response may leave ``i / rate`` seconds after the response started."""

    def __init__(self, rate: float, stop: threading.Event):
        self.rate, self.stop = float(rate), stop
        self.t0 = time.monotonic()

    def delay(self, lines: int) -> float:
        """Seconds from now until ``lines`` lines in total may have been sent (<= 0: already)."""
        return self.t0 + lines / self.rate - time.monotonic()

    def wait(self, lines: int) -> None:
        """Sleep until ``lines`` lines in total may have been sent (or the server stops)."""
        d = self.delay(lines)
        if d > 0:
            self.stop.wait(d)


def cached_chunks(f: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """``(framed chunk, lines in it)`` of a cached chunked body, the final ``0`` chunk included.

    The cache stores exactly the bytes that were sent (chunk-framed), so pacing a cached
    body only needs its chunk boundaries back.
    """
    while True:
        size_line = f.readline()
        if not size_line:
            return
        n = int(size_line, 16)
        data = f.read(n + 2)  # the chunk and its CRLF
        yield size_line + data, data[:n].count(b"\n")
