"""The double's notion of "now": real-speed time that may start anywhere, or a manual clock.

Both clocks offer ``now_us()``, ``now()``, ``wall_seconds_until()`` and ``wait_until()``;
the servers use nothing else, so either drives a :class:`~.machine.FakeTardisMachine`.
"""
from __future__ import annotations

import math
import threading
import time
from datetime import datetime, timezone
from typing import Callable

__all__ = ["FakeClock", "ManualClock"]


def _to_us(value) -> int:
    """An aware datetime or epoch µs -> epoch µs."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("clock times must be timezone-aware (UTC)")
        return int(value.timestamp()) * 1_000_000 + value.microsecond
    return int(value)


def _us_dt(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, timezone.utc).replace(microsecond=us % 1_000_000)


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
        return _us_dt(self.now_us())

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


class ManualClock:
    """A clock that stands still until the test moves it with :meth:`set` or :meth:`advance`.

    Same interface as :class:`FakeClock`, plus listeners: every callable registered with
    :meth:`add_listener` is called (in the moving thread, after the move) each time the
    clock moves, so servers can wake whatever waits for a time (a running
    ``FakeTardisMachine`` wakes its live sessions this way: no polling delay).

    A big jump makes a live stream send every event up to the new time at once. The
    double keeps tardis-machine's rule that a client with more than 5 MiB waiting is
    closed (1008), so tests should advance in steps small enough for their event rates
    (a few seconds at the default rates is far below it).
    """

    def __init__(self, start: datetime | int):
        self._us = _to_us(start)
        self._cond = threading.Condition()
        self._listeners: list[Callable[[], None]] = []

    def now_us(self) -> int:
        """Microseconds since the epoch on this clock."""
        return self._us

    def now(self) -> datetime:
        """Aware UTC datetime on this clock."""
        return _us_dt(self._us)

    def wall_seconds_until(self, target_us: int) -> float:
        """0 when ``target_us`` is reached, else ``math.inf`` (only a move can get there)."""
        return 0.0 if self._us >= target_us else math.inf

    def wait_until(self, target_us: int, stop: threading.Event | None = None) -> bool:
        """Block until another thread moves the clock to ``target_us``; False if ``stop`` was set first.

        A clock move wakes the waiter at once; ``stop`` (an Event has no callbacks) is
        checked every 50 ms.
        """
        with self._cond:
            while self._us < target_us:
                if stop is not None and stop.is_set():
                    return False
                self._cond.wait(0.05 if stop is not None else None)
            return True

    def set(self, when: datetime | int) -> None:
        """Move the clock to ``when`` (aware datetime or epoch µs); never backwards."""
        us = _to_us(when)
        with self._cond:
            if us < self._us:
                raise ValueError(f"ManualClock cannot go backwards ({_us_dt(us)} < {self.now()})")
            moved, self._us = us != self._us, us
            self._cond.notify_all()
            listeners = list(self._listeners)
        if moved:
            for fn in listeners:
                fn()

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError("ManualClock cannot go backwards")
        self.set(self._us + round(seconds * 1_000_000))

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every move (idempotent for the same callable)."""
        with self._cond:
            if fn not in self._listeners:
                self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[], None]) -> None:
        """Stop calling ``fn``."""
        with self._cond:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now().isoformat()})"
