"""What the silence checks of a feed learned, kept for later runs (see :mod:`gapless.silence`).

* :class:`CheckAnswers`: answers of checks through a stream's own filter set, shared by the runs of one feed in
  one process (a cached slice never changes);
* :class:`SettledMinutes`: the verdicts on silent minutes, and the holes in tardis' recording found, per filter set,
  kept in the database across restarts.
"""
import logging
import threading

import orjson

from .datatypes import parse_data_type

log = logging.getLogger(__name__)

QUIET, CACHED_EMPTY, UNVERIFIED = "quiet", "history_cached_empty", "unverified_quiet"
# a minute the fresh request shows inside a hole of tardis' own recording: not claimed, but the same in every filter
# set (books after it are rebuilt from the reconnect snapshot in all of them), so no book cut and nothing settled
DOWN = "history_outage"
_CHANNEL = {"book_snapshot": "book", "book_change": "book", "trade": "trades", "trade_bar": "trades",
            "derivative_ticker": "ticker", "liquidation": "trades", "book_ticker": "ticker", "option_summary": "ticker"}


class _Answer:
    def __init__(self):
        self.ready = threading.Event()
        self.seen = None


class CheckAnswers:
    """Answers of checks through a stream's own filter set, shared by the runs of one feed (one server, one
    exchange; runs in threads): its slices never change once cached, so a run in flight at the same time, or a
    later one, takes the answer instead of asking the very same request again."""

    LIMIT = 4096

    def __init__(self):
        self._answers = {}  # key -> _Answer, oldest first
        self._lock = threading.Lock()

    def get(self, key, ask):
        """The answer for ``key``, asked with ``ask()`` by the first run that needs it (None answers are not kept)."""
        with self._lock:
            pending = self._answers.get(key)
            mine = pending is None
            if mine:
                pending = self._answers[key] = _Answer()
                while len(self._answers) > self.LIMIT:
                    self._answers.pop(next(iter(self._answers)))
        if not mine:
            pending.ready.wait(60.0)
            return pending.seen if pending.seen is not None else ask()  # the other ask failed: ask ourselves
        pending.seen = ask()
        if pending.seen is None:
            with self._lock:
                self._answers.pop(key, None)  # a failure is no answer: the next run asks again
        pending.ready.set()
        return pending.seen


class SettledMinutes:
    """Silent minutes checked, per filter set (channels and symbols), with their verdict (quiet, or cached empty),
    kept in the database: a later run of the same filter set (the day's book re-read from 00:00 every so often)
    does not check them again. A slice never changes once tardis-machine cached it (unless its cache is cleared:
    then a minute kept as cached empty is only asked fresh once more than needed)."""

    LIMIT = 20_000  # per exchange: the oldest are forgotten (a forgotten minute is only checked again)
    HOLES = 200  # per filter set: the newest holes are kept (a minute whose hole is forgotten is only checked again)

    def __init__(self):
        self._minutes = {}  # (channels, symbols) -> {minute: verdict}
        self._holes = {}  # (channels, symbols) -> {(disconnect, next line)}: closed holes in tardis' recording

    @staticmethod
    def _key(request):
        channels = sorted({_CHANNEL[parse_data_type(name).family] for name in request.data_types})
        return ",".join(channels), ",".join(sorted(request.symbols))

    @classmethod
    def restored(cls, storage, exchange):
        """The minutes kept for ``exchange`` (none when unreadable: they are only checked again)."""
        memory = cls()
        try:
            rows = orjson.loads(storage.meta_value(cls._meta_key(exchange)) or "[]")
            for row in rows:
                channels, symbols, quiet, cached = row[:4]
                down, holes = row[4:6] if len(row) >= 6 else ([], [])  # rows kept before holes were settled
                key = (str(channels), str(symbols))
                kept = memory._minutes[key] = dict.fromkeys(map(int, quiet), QUIET)
                kept.update(dict.fromkeys(map(int, cached), CACHED_EMPTY))
                kept.update(dict.fromkeys(map(int, down), DOWN))
                memory._holes[key] = {(int(a), int(b)) for a, b in holes}
        except (orjson.JSONDecodeError, TypeError, ValueError):
            log.warning("%s: the settled silent minutes are unreadable; they will be checked again", exchange)
        return memory

    def save(self, storage, exchange):
        """Keep the minutes in ``storage``."""
        every = sorted((m, key, v) for key, minutes in self._minutes.items() for m, v in minutes.items())
        kept = {}
        for m, key, verdict in every[-self.LIMIT:]:
            kept.setdefault(key, {})[m] = verdict
        self._minutes = kept
        self._holes = {key: holes for key, holes in self._holes.items() if key in kept}
        rows = [[channels, symbols, sorted(m for m, v in minutes.items() if v == QUIET),
                 sorted(m for m, v in minutes.items() if v == CACHED_EMPTY),
                 sorted(m for m, v in minutes.items() if v == DOWN),
                 sorted(self._holes.get((channels, symbols), ()))[-self.HOLES:]]
                for (channels, symbols), minutes in kept.items()]
        storage.put_meta(self._meta_key(exchange), orjson.dumps(rows).decode())

    @staticmethod
    def _meta_key(exchange):
        return "settled_silence:%s" % exchange

    def of(self, request):
        """``((minute, verdict), ...)`` settled inside a request's range."""
        minutes = self._minutes.get(self._key(request), {})
        return tuple(sorted((m, v) for m, v in minutes.items() if request.start <= m < request.request_end))

    def holes_of(self, request):
        """``((disconnect, next line), ...)`` kept that overlap a request's range."""
        holes = self._holes.get(self._key(request), ())
        return tuple(sorted((a, b) for a, b in holes if a < request.request_end and b > request.start))

    def add(self, request, verdicts, holes=()):
        """``[(minute, verdict)]`` a run of ``request`` settled, and the closed holes its minutes in holes lie in."""
        if verdicts:
            self._minutes.setdefault(self._key(request), {}).update(verdicts)
        if holes:
            self._holes.setdefault(self._key(request), set()).update(holes)
