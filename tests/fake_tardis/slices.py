"""tardis-machine's data-feed slice cache, as far as it changes answers: empty slices kept for good.

The real server caches every one-minute raw slice it fetched from upstream, per *filter set* (the
channels behind the data types AND the symbols of one options object; see ``tardis-machine.md``, "The
slice cache"). A slice fetched while the minute was not available yet, from an upstream that answers
such a minute EMPTY, is cached empty like any other: asked again later through the same filter set, the
minute still has nothing in it, although upstream has long had its data. Another filter set (one more
symbol, even one no exchange lists) is fetched fresh. An upstream that refuses such a minute with an error
caches nothing.

Non-empty slices are cached too, but they hold the true data, so they change no answer: only the
poisoned (cached-empty) minutes are kept here. Minutes are local (arrival) time, like the slices.
"""
from __future__ import annotations

import threading

__all__ = ["SliceCache", "filter_key", "MINUTE_US"]

MINUTE_US = 60_000_000


def filter_key(spec) -> tuple:
    """The cache folder of one options object: exchange, channels and symbols (order does not matter)."""
    channels = []
    if spec.needs_book:
        channels.append("book")
    if spec.needs_trades:
        channels.append("trades")
    if spec.needs_ticker:  # derivative_ticker, book_ticker and option_summary: one channel
        channels.append("ticker")
    return spec.exchange, tuple(sorted(channels)), tuple(sorted(spec.symbols))


class SliceCache:
    """Minutes cached empty per filter set (thread-safe). ``clear()`` is ``--clear-cache``."""

    def __init__(self):
        self._empty: dict[tuple, set[int]] = {}
        self._lock = threading.Lock()

    def blanks(self, spec) -> tuple[int, ...]:
        """Start (µs) of every minute this options object's filter set has cached empty, ascending."""
        with self._lock:
            return tuple(sorted(self._empty.get(filter_key(spec), ())))

    def fetched_unavailable(self, spec, available_from_us: int) -> None:
        """A request fetched the minutes of ``spec`` from ``available_from_us`` on while upstream had none of
        them: upstream answered them empty, and they are cached empty now."""
        first = max(spec.from_us, available_from_us - available_from_us % MINUTE_US)
        if first >= spec.to_us:
            return
        with self._lock:
            self._empty.setdefault(filter_key(spec), set()).update(range(first, spec.to_us, MINUTE_US))

    def poisoned(self, exchange: str, channels, symbols) -> list[int]:
        """Minutes cached empty for a filter set given by its parts (for tests)."""
        with self._lock:
            return sorted(self._empty.get((exchange, tuple(sorted(channels)), tuple(sorted(symbols))), ()))

    def clear(self) -> None:
        """Forget everything (the server started with ``--clear-cache``)."""
        with self._lock:
            self._empty.clear()
