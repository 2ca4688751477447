"""Why a published minute is missing, for followers: the gap reason of the run of missing minutes holding it.

The same rules as ``gapless status`` (:func:`gapless.status.gap_reason`), applied to the run of published
missing minutes around the minute, with the history horizon the service last stored in the database.
"""
from .horizon import stored_horizon, watermark_of
from .series import covered_minutes
from .status import gap_reason, ledger_entries
from .timeutil import MINUTE_US


class GapReasons:
    """Gap reasons of missing minutes, cached per run until :meth:`forget` (the runs change as passes publish)."""

    def __init__(self, storage, now, horizons=None):
        self.storage = storage
        self.now = now  # () -> µs
        self.horizons = horizons  # () -> {exchange: horizon state}, or None: read what the service stored
        self._runs = {}
        self._sql = None

    def forget(self):
        """Drop what was cached (call before reading another batch of events)."""
        self._runs = {}

    def reason(self, key, minute):
        """The gap reason of the missing ``minute`` (µs) of stream ``key``."""
        for lo, hi, reason in self._runs.get(key, ()):
            if lo <= minute < hi:
                return reason
        lo, hi = self._run(key, minute)
        exchange, symbol, data_type = key
        now_us = self.now()
        state = (self.horizons() if self.horizons else {}).get(exchange) or stored_horizon(self.storage, exchange)
        limit = watermark_of(int(state.get("delay") or 0), state.get("mode", "error"), state.get("edge"),
                             now_us) - MINUTE_US
        intervals = [self.storage.covered(exchange, symbol, data_type, s) for s in ("replay", "live")]
        somewhere = any((covered_minutes(i, lo, hi) >= 0).any() for i in intervals)
        reason = gap_reason(self.storage.coverage_rows(exchange, symbol, data_type),
                            ledger_entries(self.storage, exchange, symbol, data_type), lo, hi, limit, now_us,
                            somewhere)[0]
        self._runs.setdefault(key, []).append((lo, hi, reason))
        return reason

    def _run(self, key, minute):
        """``[lo, hi)``: the published missing minutes around ``minute`` (up to the published minutes next to it)."""
        if self._sql is None:
            m = self.storage.mark
            stream = '"exchange" = {m} AND "symbol" = {m} AND "data_type" = {m}'.format(m=m)
            self._sql = (
                'SELECT MAX("minute") FROM "minute_series" WHERE {s} AND "minute" < {m} AND NOT "missing"'
                .format(s=stream, m=m),
                'SELECT MIN("minute") FROM "minute_series" WHERE {s} AND "minute" > {m} AND NOT "missing"'
                .format(s=stream, m=m),
                'SELECT MIN("minute"), MAX("minute") FROM "minute_series" WHERE ' + stream)
        run = self.storage.db.execute_sql
        before = run(self._sql[0], tuple(key) + (minute,)).fetchone()[0]
        after = run(self._sql[1], tuple(key) + (minute,)).fetchone()[0]
        if before is None or after is None:
            first, last = run(self._sql[2], tuple(key)).fetchone()
        lo = before + MINUTE_US if before is not None else first
        hi = after if after is not None else last + MINUTE_US
        return lo, hi
