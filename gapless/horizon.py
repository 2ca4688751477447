"""How far history reaches: the history delay in use, measured, and the watermark it implies.

History lags real time by a delay that depends on the server (a few minutes, 15, 30...). Asking for
minutes that are not available yet either fails (the error line) or, worse, comes back EMPTY and looks
like a quiet market; so gapless never asks past ``now - delay``. The configured ``GAPLESS_HISTORY_DELAY``
is only the starting upper bound: the delay in use is *measured* (:mod:`gapless.probe`) at start, when a
request near the edge is refused, and every :data:`PROBE_INTERVAL_US`. A refusal also makes the delay
grow at once (a wrong guess costs requests), until the next measurement says better.

The last measurement also says up to where availability is *proven* (the edge it saw): a replay run
that reaches past it claims only what its own lines prove (see :class:`gapless.claims.ClaimTracker`).
Where the server answers a minute not available yet with EMPTY lines (or nothing says it refuses them),
no request reaches past the proven edge at all: tardis-machine would cache that empty answer for the
stream's filter set for good. The edge then moves on with one one-minute probe a pass (see
:meth:`gapless.feed.Feed.download_history`).
"""
import logging
import threading

from .claims import LATENCY_MARGIN_US
from .timeutil import MINUTE_US, US, floor_minute, iso

log = logging.getLogger(__name__)

PROBE_INTERVAL_US = 30 * MINUTE_US
SAFETY_US = 2 * US  # on top of a measured delay: the edge seen is the newest line, not the newest minute


def watermark_of(delay, mode, edge, now_us):
    """``floor(now - delay)``, and, unless the server refuses minutes not available yet ("error" mode), not past
    the proven edge's minute (a line of minute m proves the whole minute: upstream serves one-minute slices)."""
    mark = floor_minute(now_us - delay)
    if mode != "error" and edge is not None:
        mark = min(mark, floor_minute(edge) + MINUTE_US)
    return mark


def stored_horizon(storage, exchange, default_delay=0):
    """``{"delay", "measured_at", "mode"}`` the service last used for an exchange (stored in the database)."""
    meta = storage.models["meta"]
    values = {}
    for name, key in (("delay", "history_delay_us:%s"), ("measured_at", "history_measured_at:%s")):
        row = meta.get_or_none(meta.key == key % exchange)
        values[name] = int(row.value) if row is not None else None
    values["mode"] = storage.meta_value("history_mode:%s" % exchange) or "unknown"
    if values["delay"] is None:
        values["delay"] = default_delay
    return values


class HistoryHorizon:
    """The history delay in use and the watermark it implies (thread-safe)."""

    def __init__(self, delay_us, max_delay_us=None, probe_interval_us=PROBE_INTERVAL_US):
        self.configured = delay_us
        self.delay = delay_us
        self.max_delay = max_delay_us if max_delay_us is not None else max(delay_us * 8, 6 * 60 * MINUTE_US)
        self.probe_interval = probe_interval_us
        self.measured_at = None
        self.edge = None  # the newest line the last measurement saw (local time)
        # how the server answers a minute not available yet (see MODES); until evidence says "error", requests
        # stay below the proven edge: an EMPTY answer would be cached for the stream's filter set for good
        self.mode = "unknown"
        self._probe_due = True
        self._lock = threading.Lock()

    def watermark(self, now_us):
        """History is requested only before this minute boundary: ``floor(now - delay)``, and, unless the server
        is known to refuse minutes not available yet ("error" mode), not past the proven edge's minute (see
        :meth:`claim_limit` for "error" mode)."""
        with self._lock:
            return watermark_of(self.delay, self.mode, self.edge, now_us)

    def delay_watermark(self, now_us):
        """``floor(now - delay)``: where the watermark would be if the edge were proven that far."""
        with self._lock:
            return floor_minute(now_us - self.delay)

    def saw_mode(self, mode):
        """Evidence of how minutes not available yet come back: "error" (refused) or "empty" (no lines where live
        has trades). "empty" is final (a stream's cache is at stake); "error" only replaces "unknown"."""
        with self._lock:
            if mode in ("error", "empty") and mode != self.mode and (mode == "empty" or self.mode == "unknown"):
                log.info("history not available yet comes back as %s", "an error" if mode == "error" else
                         "EMPTY minutes: requests stay below the proven edge")
                self.mode = mode

    def advanced(self, edge_us):
        """A probe proved history up to ``edge_us`` (local time) since the last measurement."""
        with self._lock:
            if edge_us is not None and (self.edge is None or edge_us > self.edge):
                self.edge = edge_us

    def claim_limit(self, now_us):
        """Latest claim end a replay request may have (its ``to`` is one minute later).

        Where the server refuses minutes not available yet ("error" mode) nothing can be cached: the limit is where
        history can prove data now (``now - delay`` less the latency margin), not rounded down to a minute; the
        request for it reaches past where history ends (its claim end is rounded up, its ``to`` a minute later),
        is refused there, and claims what its lines prove (see :meth:`gapless.feed.Feed._learn_horizon`).
        """
        with self._lock:
            if self.mode == "error":
                return now_us - self.delay - LATENCY_MARGIN_US
        return self.watermark(now_us) - MINUTE_US

    def proven_until(self, now_us):
        """Up to where availability is proven (local time): the last edge measured, else the configured bound;
        None where the server refuses minutes not available yet (a complete run then proves itself)."""
        with self._lock:
            if self.mode == "error":
                return None
            return self.edge if self.edge is not None else now_us - self.configured

    def probe_due(self, now_us):
        """True when the delay should be measured (at start, after a refusal, or every probe interval)."""
        with self._lock:
            return self._probe_due or self.measured_at is None or now_us - self.measured_at >= self.probe_interval

    def measured(self, now_us, edge_us, tight=True):
        """A measurement saw history up to ``edge_us`` (None: it could not tell; keep the delay in use).

        ``tight`` False: history may reach further (the minutes after the edge sent nothing, and nothing says
        they should have: a quiet market, or not available yet where the server answers with empty minutes).
        The delay it implies may then grow the delay in use only up to the configured bound
        (``GAPLESS_HISTORY_DELAY``); beyond it, growth needs evidence (a refusal, or live trades history lacks).
        """
        with self._lock:
            self._probe_due = False
            self.measured_at = now_us
            if edge_us is None:
                return
            delay = min(self.max_delay, max(0, now_us - edge_us) + SAFETY_US)
            if not tight:
                delay = min(delay, max(self.delay, self.configured))
                edge_us = max(edge_us, self.edge or edge_us)
            if abs(delay - self.delay) >= US:
                log.info("history delay %s -> %s (measured: history reaches %s)", _text(self.delay), _text(delay),
                         iso(edge_us))
            self.delay = delay
            self.edge = edge_us

    def refused(self, now_us, delivered_until_us):
        """A run near the edge was refused after delivering data up to ``delivered_until_us`` (or None).

        The delay grows at once to what the refusal shows, and a measurement is due.
        """
        with self._lock:
            self._probe_due = True
            reach = delivered_until_us if delivered_until_us else now_us - self.delay - MINUTE_US
            wanted = min(self.max_delay, max(self.delay, now_us - floor_minute(reach) + MINUTE_US))
            if wanted != self.delay:
                log.warning("history ends near %s: history delay %s -> %s", iso(floor_minute(reach)),
                            _text(self.delay), _text(wanted))
                self.delay = wanted
                self.edge = min(self.edge, reach) if self.edge is not None else reach

    def state(self):
        """Delay in use, its bounds, and the last measurement (µs; ``measured_at`` None before one)."""
        with self._lock:
            return {"delay": self.delay, "configured": self.configured, "max": self.max_delay,
                    "measured_at": self.measured_at, "edge": self.edge, "mode": self.mode}


def _text(us):
    """A delay for humans: ``15 min 00 s`` or ``40 s``."""
    seconds = us // US
    return "%d min %02d s" % divmod(seconds, 60) if seconds >= 60 else "%d s" % seconds
