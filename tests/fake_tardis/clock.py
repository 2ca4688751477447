"""The double's notion of "now": real-speed time that may start anywhere."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that runs at ``speed`` x real time from ``start`` (aware UTC; None = real now).

    Progress is measured with ``time.monotonic`` so wall-clock jumps on the host do not
    move it. ``offset_seconds`` (start - wall time at creation) lets another process
    rebuild the same clock with :meth:`from_offset` (for speed 1.0).
    """

    def __init__(self, start: datetime | None = None, speed: float = 1.0):
        wall = time.time()
        self._mono0 = time.monotonic()
        if start is None:
            self._start_us = int(wall * 1_000_000)
        else:
            if start.tzinfo is None:
                raise ValueError("FakeClock start must be timezone-aware (UTC)")
            self._start_us = int(start.timestamp()) * 1_000_000 + start.microsecond
        self.speed = float(speed)
        self.offset_seconds = self._start_us / 1_000_000 - wall

    @classmethod
    def from_offset(cls, seconds: float, speed: float = 1.0) -> "FakeClock":
        """A clock that reads real time shifted by ``seconds`` (see ``offset_seconds``)."""
        return cls(datetime.fromtimestamp(time.time() + seconds, timezone.utc), speed=speed)

    def now_us(self) -> int:
        """Microseconds since the epoch on this clock."""
        return self._start_us + int((time.monotonic() - self._mono0) * self.speed * 1_000_000)

    def now(self) -> datetime:
        """Aware UTC datetime on this clock."""
        us = self.now_us()
        return datetime.fromtimestamp(us // 1_000_000, timezone.utc).replace(microsecond=us % 1_000_000)

    def wall_seconds_until(self, target_us: int) -> float:
        """Real seconds to wait until this clock reads ``target_us`` (<= 0 when past)."""
        return (target_us - self.now_us()) / 1_000_000 / self.speed

    def wait_until(self, target_us: int, stop: threading.Event | None = None) -> bool:
        """Block until the clock reaches ``target_us``; False if ``stop`` was set first."""
        while True:
            delay = self.wall_seconds_until(target_us)
            if delay <= 0:
                return True
            if stop is not None:
                if stop.wait(delay):
                    return False
            else:
                time.sleep(delay)

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now().isoformat()}, speed={self.speed})"
