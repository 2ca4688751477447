"""Publishing live minutes as soon as they are final, not at the next rebuild tick.

The recorder reports the claims of every batch it writes. When a stream's claim passes a minute boundary,
the minutes before it are final. Then one publishing pass of the streams whose claims passed one runs at once
in the scheduler's thread pool (an option chain's hundreds of streams pass their boundaries a few seconds apart:
each pass publishes those, not all of them). The pass is incremental, so it costs what changed. Followers (:mod:`gapless.follower`) get the minute a few
seconds after its end instead of up to a rebuild interval later. Requests that arrive while a pass runs
are folded into one more pass after it.
"""
import logging
import threading

from .timeutil import floor_minute

log = logging.getLogger(__name__)


class FinalMinutes:
    """Runs ``publish(streams)`` when a claim makes a new minute final (see the module docstring); ``streams``: the
    ``(exchange, symbol, data_type)`` whose claims passed a minute boundary since the last pass.

    ``scheduler``: returns the running APScheduler scheduler, or None (then nothing is run early: a library
    call that heals in its own loop publishes there).
    """

    def __init__(self, publish, scheduler, stop_event):
        self._publish = publish
        self._scheduler = scheduler
        self._stop = stop_event
        self._ends = {}  # {(exchange, symbol, data_type): the newest minute boundary claimed}
        self._changed = set()  # the streams whose boundary moved since the last pass took them
        self._due = threading.Event()
        self._lock = threading.Lock()
        self._running = False
        self.passes = 0

    def claimed(self, claims):
        """Called by the recorder thread with the claims it just wrote; never raises into it."""
        try:
            fresh = False
            for claim in claims:
                key = (claim.exchange, claim.symbol, claim.data_type)
                boundary = floor_minute(claim.end)
                if boundary > self._ends.get(key, 0):
                    self._ends[key] = boundary
                    with self._lock:
                        self._changed.add(key)
                    fresh = True
            if fresh:
                self._request()
        except Exception:  # publishing early is an optimisation: the regular tick still publishes
            log.exception("could not ask for the final minutes to be published")

    def _request(self):
        with self._lock:
            self._due.set()
            if self._running or self._stop.is_set():
                return
            scheduler = self._scheduler()
            if scheduler is None or not scheduler.running:
                return
            self._running = True
        try:
            scheduler.add_job(self._run, "date", id="final", replace_existing=True, misfire_grace_time=30)
        except Exception:  # the scheduler is shutting down
            with self._lock:
                self._running = False
            log.debug("could not schedule the publishing of final minutes", exc_info=True)

    def _run(self):
        try:
            while self._due.is_set() and not self._stop.is_set():
                self._due.clear()
                with self._lock:
                    streams, self._changed = self._changed, set()
                if streams:
                    self._publish(streams)
                    self.passes += 1
        except Exception:  # the next claim or the regular tick tries again
            log.exception("publishing the final minutes failed")
        finally:
            with self._lock:
                self._running = False
                again = self._due.is_set() and not self._stop.is_set()
            if again:  # a claim came after the loop's last look: it must not wait for the next one
                self._request()
