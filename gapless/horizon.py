"""How far history reaches: the replay watermark, learned from what tardis-machine delivers or refuses.

History lags real time (users have seen ~15 minutes; tardis' own client assumes 30). Asking for
minutes that are not available yet either fails (the error line) or, worse, can come back empty and
look like a quiet market; so gapless never asks past ``now - delay``. The delay starts at the
configured value and adapts:

* a refused run (error line or error status) that delivered up to ``t`` shows history ends near ``t``:
  the delay grows to ``now - t`` plus a safety minute (at once: a wrong guess costs requests);
* every ``probe_after`` runs that complete at the watermark let the delay shrink back by one minute,
  never below ``min_delay`` (probing slowly: a wrong guess costs one refused request).
"""
import logging
import threading

from .timeutil import MINUTE_US, floor_minute, iso

log = logging.getLogger(__name__)


class HistoryHorizon:
    """The history delay in use and the watermark it implies (thread-safe)."""

    def __init__(self, delay_us, min_delay_us=None, max_delay_us=None, probe_after=10):
        self.configured = delay_us
        self.delay = delay_us
        self.min_delay = min_delay_us if min_delay_us is not None else max(MINUTE_US, delay_us // 3)
        self.max_delay = max_delay_us if max_delay_us is not None else max(delay_us * 8, 6 * 60 * MINUTE_US)
        self.probe_after = probe_after
        self._successes = 0
        self._lock = threading.Lock()

    def watermark(self, now_us):
        """History is requested only before this minute boundary: ``floor(now - delay)``."""
        with self._lock:
            return floor_minute(now_us - self.delay)

    def claim_limit(self, now_us):
        """Latest claim end a replay request may have (its ``to`` is one minute later)."""
        return self.watermark(now_us) - MINUTE_US

    def refused(self, now_us, delivered_until_us):
        """A run near the edge was refused after delivering data up to ``delivered_until_us`` (or None)."""
        with self._lock:
            reach = delivered_until_us if delivered_until_us else now_us - self.delay - MINUTE_US
            wanted = min(self.max_delay, max(self.delay, now_us - floor_minute(reach) + MINUTE_US))
            self._successes = 0
            if wanted != self.delay:
                log.warning("history ends near %s: history delay %s -> %d min", iso(floor_minute(reach)),
                            _minutes(self.delay), -(-wanted // MINUTE_US))
                self.delay = -(-wanted // MINUTE_US) * MINUTE_US

    def delivered(self, now_us, request_end_us):
        """A run that ended at ``request_end_us`` completed; shrink the delay if it reached the edge."""
        with self._lock:
            if request_end_us < floor_minute(now_us - self.delay) or self.delay <= self.min_delay:
                return
            self._successes += 1
            if self._successes >= self.probe_after:
                self._successes = 0
                self.delay = max(self.min_delay, self.delay - MINUTE_US)
                log.info("history delivered up to %s: history delay now %s", iso(request_end_us),
                         _minutes(self.delay))

    def state(self):
        """Delay in use and its bounds (µs)."""
        with self._lock:
            return {"delay": self.delay, "configured": self.configured, "min": self.min_delay, "max": self.max_delay}


def _minutes(us):
    """A delay for humans: ``15 min`` or ``10 s``."""
    return "%d min" % (us // MINUTE_US) if us >= MINUTE_US else "%d s" % (us // 1_000_000)
