"""The gapless service: record live, download history, heal gaps and rebuild the series on a schedule.

:class:`Gapless` is the long-lived object (library and ``python run.py``): a :class:`~gapless.recorder.Recorder`
thread records the live stream; :meth:`Gapless.heal` downloads the replay that coverage lacks and that
history can deliver (history's reach is learned by :class:`~gapless.horizon.HistoryHorizon`), then
rebuilds the combined minute series; an APScheduler job runs it every ``rebuild_interval``
(``max_instances=1``, coalescing). :meth:`Gapless.run` is the service: the initial download runs in the
calling (main) thread, signals stop it gracefully, and a component that dies makes it return non-zero.
"""
import logging
import signal
import threading
import time
from datetime import timedelta

from .config import make_clock, parse_exchange, parse_lookback, parse_symbols
from .datatypes import check_series_types, parse_data_types
from .download import Downloader
from .exceptions import GaplessError, RequestRejectedError
from . import ledger
from .healing import HealingPlanner
from .horizon import HistoryHorizon
from .monitor import Monitor
from .recorder import Recorder
from .redaction import protect_url_loggers, url_password
from .series import series as compute_series
from .plan import Anchors
from .publish import published_frames, published_sources, rebuild
from .series import Reader
from .status import SETTLE_US, minute_sources, status_report
from .storage import Storage
from .timeutil import MINUTE_US, US, ceil_minute, floor_minute, iso, parse_duration_us
from .urls import validate_http_url

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_COMPONENT_DIED = 3


class Gapless:
    """Gapless minute series for one exchange's symbols and data types, kept up to now.

    ``start()``/``stop()`` (or ``with Gapless(...) as g:``) for long-lived library use; ``run()`` for the
    service. ``series()``, ``coverage()``, ``gaps()`` and ``status()`` read the database; a second process
    can read the same database while this one writes.
    """

    def __init__(self, exchange, symbols, data_types, lookback="1d", database_url="sqlite:///gapless.db",
                 tardis_url="http://localhost:8000", tardis_ws_url="ws://localhost:8001", api_key=None,
                 history_delay="15m", rebuild_interval="60s", export=None, workers=0, concurrency=8, now=None,
                 recorder_options=None, downloader_options=None, metrics_addr=None, plot=None):
        # the same checks as the command line: names reach URLs, logs and SQL parameters
        self.exchange = parse_exchange(exchange, "exchange")
        self.symbols = parse_symbols(list(symbols) if not isinstance(symbols, str) else symbols, "symbols")
        self.data_types = tuple(dt.name for dt in check_series_types(parse_data_types(list(data_types)),
                                                                     "data_types"))
        self.lookback = parse_lookback(parse_duration_us(lookback, "lookback"), "lookback")
        self.rebuild_interval = parse_duration_us(rebuild_interval, "rebuild_interval") / 1e6
        self.export = export or None
        self.tardis_url = validate_http_url(tardis_url, "tardis_url")
        self.tardis_ws_url = tardis_ws_url
        self.api_key = api_key or None
        protect_url_loggers([self.api_key, url_password(database_url)])
        self.workers = workers
        self.concurrency = concurrency
        self.now = now or make_clock()
        self.storage = Storage(database_url)
        self.horizon = HistoryHorizon(parse_duration_us(history_delay, "history_delay"))
        self._restore_horizon()
        self.stop_event = threading.Event()
        self._heal_lock = threading.Lock()
        self._scheduler = None
        self.recorder = Recorder(self.storage, tardis_ws_url, exchange, self.symbols, self.data_types,
                                 clock=lambda: self.now() / 1e6, **(recorder_options or {}))
        self._downloader_options = dict(downloader_options or {})
        self.planner = HealingPlanner()
        self.probe_requests = 0
        self._started = (time.monotonic(), self.now())
        self.last_rebuild = None
        self.last_download = None
        self.heal_error = None
        # operators' view (metrics listener, systemd notifications, picture): see gapless.monitor
        self.monitor = Monitor(self.exchange, metrics_addr=metrics_addr, plot_path=plot, telemetry=self.telemetry,
                               components=self.components)

    @classmethod
    def from_settings(cls, settings, **kwargs):
        """Build from validated :class:`~gapless.config.Settings`."""
        kwargs.setdefault("now", make_clock(settings.test_clock))
        as_delta = lambda us: timedelta(microseconds=us)  # noqa: E731 (settings hold µs)
        return cls(settings.exchange, settings.symbols, settings.data_types, lookback=as_delta(settings.lookback),
                   database_url=settings.database_url, tardis_url=settings.tardis_url,
                   tardis_ws_url=settings.tardis_ws_url, api_key=settings.api_key or None,
                   history_delay=as_delta(settings.history_delay),
                   rebuild_interval=as_delta(settings.rebuild_interval),
                   export=settings.export or None, workers=settings.workers, concurrency=settings.concurrency,
                   metrics_addr=settings.metrics_addr or None, plot=settings.plot or None, **kwargs)

    # -- windows -------------------------------------------------------------------------------
    def window(self, now_us=None):
        """``(start, end)`` µs of the series: the lookback up to the last settled minute."""
        now_us = self.now() if now_us is None else now_us
        end = floor_minute(now_us - SETTLE_US)
        return end - ceil_minute(self.lookback), end

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, initial_heal=True):
        """Start recording and the healing schedule (the first pass runs at once, in the scheduler thread)."""
        self.stop_event.clear()
        self.monitor.start()
        self.recorder.start()
        self._start_scheduler(first_run_now=initial_heal)
        return self

    def stop(self, timeout=8.0):
        """Stop the scheduler (and any download), the recorder (flushed), then close the database."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        if self._scheduler is not None:
            try:
                self._scheduler.shutdown(wait=True)
            except Exception:  # a scheduler that is already down must not keep us from stopping the rest
                log.exception("scheduler shutdown failed")
            self._scheduler = None
        self.recorder.stop(max(1.0, deadline - time.monotonic()))
        self.monitor.stop()
        self.storage.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def _start_scheduler(self, first_run_now):
        from datetime import datetime, timedelta, timezone

        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(timezone=timezone.utc)
        first = datetime.now(timezone.utc) + (timedelta(0) if first_run_now else
                                              timedelta(seconds=self.rebuild_interval))
        scheduler.add_job(self._scheduled_heal, "interval", seconds=self.rebuild_interval, id="heal",
                          max_instances=1, coalesce=True, misfire_grace_time=max(30, int(self.rebuild_interval)),
                          next_run_time=first)
        scheduler.start()
        self._scheduler = scheduler

    def _scheduled_heal(self):
        try:
            self.heal()
            self.heal_error = None
            self._schedule_reach()
        except RequestRejectedError as exc:
            # tardis-machine refuses the configuration itself: healing cannot ever succeed
            self.heal_error = exc
            log.error("healing stopped: %s", exc)
        except Exception as exc:  # the schedule must survive a bad pass (network, database busy)
            self.heal_error = exc
            log.exception("healing pass failed")

    def _schedule_reach(self):
        """Plan an extra pass for the moment history reaches the next gap that has ended."""
        due = self.next_pass_due()
        scheduler = self._scheduler
        if due is None or scheduler is None or self.stop_event.is_set():
            return
        from datetime import datetime, timedelta, timezone
        wait = self.wall_seconds_until(due)
        if wait is None or wait >= self.rebuild_interval:
            return  # the regular pass comes first
        scheduler.add_job(self._scheduled_heal, "date", id="reach", replace_existing=True, misfire_grace_time=30,
                          run_date=datetime.now(timezone.utc) + timedelta(seconds=max(0.0, wait)))

    def next_pass_due(self):
        """When (our clock, µs) a pass will reach the next gap that has ended (None: no such gap).

        ``claim_limit(t) = floor(t - delay) - 1 min`` reaches the gap's end ``e`` at ``t = e + 1 min + delay``.
        """
        now_us = self.now()
        start, end = self.window(now_us)
        limit = self.horizon.claim_limit(now_us)

        def sources_of(symbol, data_type, a, b):
            sources = published_sources(self.storage, self.exchange, symbol, data_type, a, b)
            if sources is None:
                with Reader(self.storage, [(self.exchange, symbol, data_type)]) as reader:
                    sources = minute_sources(reader, self.exchange, symbol, data_type, a, b)
            return sources

        reach = self.planner.next_reach(sources_of, self.symbols, self.data_types, start, limit, end,
                                        self._held_of(now_us, limit))
        return None if reach is None else reach + MINUTE_US + self.horizon.state()["delay"] + US

    def wall_seconds_until(self, clock_us):
        """Real seconds until our clock reads ``clock_us`` (a test clock may run fast); None if it stands still."""
        wall, clock = time.monotonic(), self.now()
        elapsed = wall - self._started[0]
        speed = (clock - self._started[1]) / 1e6 / elapsed if elapsed > 0.5 else 1.0
        if speed <= 0:
            return None
        return (clock_us - clock) / 1e6 / speed

    # -- healing -------------------------------------------------------------------------------
    def heal(self, download=True, publish=True):
        """One pass: publish what changed, download what history can deliver and coverage lacks, publish again.

        Publishing first gives the healing decisions the current series (e.g. the live recording's start);
        both publishes are incremental. Returns the last publishing report (or None when another pass is
        running or we are stopping).
        """
        if not self._heal_lock.acquire(blocking=False):
            log.info("a healing pass is still running; skipping this one")
            return None
        try:
            if publish and not self.stop_event.is_set():
                self._publish()
            if download and not self.stop_event.is_set():
                self.last_download = self.download_history(use_published=publish)
                if publish and not self.stop_event.is_set():
                    self._publish()
            return self.last_rebuild
        finally:
            self._heal_lock.release()

    def _publish(self):
        start, end = self.window()
        self.last_rebuild = rebuild(self.storage, self.exchange, self.symbols, self.data_types, start, end,
                                    export=self.export, now_us=self.now())
        missing = self.last_rebuild.missing
        log.info("rebuilt %d stream(s) over %s .. %s in %.2fs: %s", len(self.last_rebuild.streams),
                 iso(start), iso(end), self.last_rebuild.seconds,
                 "gapless" if not missing else "%d missing minute(s)" % missing)
        self.monitor.rebuilt(self.last_rebuild, gaps=self.gaps, frames=self._published_frames)

    def download_history(self, use_published=False):
        """Download what replay coverage lacks over the window, up to where history can deliver.

        ``use_published``: decide from the series published just before (cheaper than stitching again).
        """
        now_us = self.now()
        if self.horizon.probe_due(now_us):
            self.measure_history_delay()
            now_us = self.now()
        start, _ = self.window(now_us)
        limit = self.horizon.claim_limit(now_us)
        if limit <= start:
            return None
        # the first download of a long lookback shows its progress (a bar on a terminal, else a log line a
        # request); later passes ask for a few minutes and stay quiet
        progress = None if self.last_download is None else False
        options = dict(dict(workers=self.workers, concurrency=self.concurrency, progress=progress),
                       **self._downloader_options)
        downloader = Downloader(self.storage, self.tardis_url, api_key=self.api_key, stop_event=self.stop_event,
                                now=self.now, **options)
        downloader.limit = limit
        downloader.proven_until = self.horizon.proven_until(now_us)
        downloader.on_run_finished = self._learn_horizon
        downloader.on_batch = self.monitor.progress  # the initial download runs in the main thread: feeds the watchdog
        # a refusal near the present means "not available yet": the next pass asks less, no retry storm
        downloader.should_retry = lambda request, failure: not (
            getattr(failure, "refused", False) and request.request_end >= self.now() - 120 * MINUTE_US)
        report = downloader.download_wanted(self.exchange, self._wanted(start, limit, use_published))
        if self.horizon.probe_due(self.now()):
            self.measure_history_delay()  # a refusal near the edge: history fell behind; find out how far
        if report.requests:
            log.info("history: %d request(s), %d new rows, %d lines in %.1fs%s", report.requests, report.rows_inserted,
                     report.lines, report.seconds, "; %d incomplete" % len(report.failed) if report.failed else "")
        self._save_horizon()
        self.monitor.downloaded(report)
        return report

    def _wanted(self, start, limit, use_published=False):
        """What history to fetch this pass, per stream (see :mod:`gapless.healing`)."""
        def sources_of(symbol, data_type, a, b):
            if use_published:
                sources = published_sources(self.storage, self.exchange, symbol, data_type, a, b)
                if sources is not None:
                    return sources
            with Reader(self.storage, [(self.exchange, symbol, data_type)]) as reader:
                return minute_sources(reader, self.exchange, symbol, data_type, a, b)

        now_us = self.now()
        return self.planner.wanted(sources_of, self.exchange, self.symbols, self.data_types, start, limit, now_us,
                                   self._held_of(now_us, limit), end=self.window(now_us)[1])

    def _held_of(self, now_us, limit):
        """``held_of(symbol, data_type)``: what the replay ledger holds back now (see :mod:`gapless.ledger`)."""
        anchors = Anchors(self.storage, self.exchange)

        def held_of(symbol, data_type):
            entries = ledger.entries(self.storage, self.exchange, symbol, data_type)
            return ledger.held_back(entries, now_us, anchors, limit)[0]

        return held_of

    def measure_history_delay(self):
        """Measure how far history reaches now (a handful of one-minute probes) and use it as the delay."""
        from .probe import EdgeProbe
        from .replay import ReplayClient
        probe = EdgeProbe(ReplayClient(self.tardis_url, timeout=(5.0, 30.0)), self.exchange, self.symbols,
                          api_key=self.api_key, live_trades_in=self._live_trades_in)
        try:
            result = probe.measure(self.now(), self.horizon.state()["delay"])
        except GaplessError as exc:
            log.warning("%s: measuring the history delay failed (%s); keeping %s", self.exchange, exc,
                        self.horizon.state()["delay"])
            return None
        self.horizon.measured(self.now(), result.edge)
        self.probe_requests += result.probes
        self._save_horizon()
        return result

    def _live_trades_in(self, minute):
        """True when the live recording stored trades of our symbols inside ``minute`` (history must have them)."""
        for symbol in self.symbols:
            if self.storage.last_row_before("trade", self.exchange, symbol, "trade", "live", minute + MINUTE_US,
                                            minute, columns=["timestamp"]):
                return True
            for name in self.data_types:
                if name.startswith("trade_bar") and self.storage.last_row_before(
                        "trade_bar", self.exchange, symbol, name, "live", minute + MINUTE_US + 1, minute + 1,
                        columns=["timestamp"]):
                    return True
        return False

    def _learn_horizon(self, request, failure):
        now_us = self.now()
        if failure is not None and getattr(failure, "refused", False) and \
                request.request_end >= now_us - 120 * MINUTE_US:
            # refused near the present: history does not reach that far (any more): grow, and measure again
            self.horizon.refused(now_us, getattr(failure, "delivered_until", None))

    def _horizon_keys(self):
        return "history_delay_us:%s" % self.exchange, "history_measured_at:%s" % self.exchange

    def _restore_horizon(self):
        """Start from the delay the last run used (measured or grown); it is measured again at once."""
        meta = self.storage.models["meta"]
        delay_key, measured_key = self._horizon_keys()
        row = meta.get_or_none(meta.key == delay_key)
        if row is not None:
            try:
                self.horizon.delay = max(0, min(self.horizon.max_delay, int(row.value)))
            except ValueError:
                pass

    def _save_horizon(self):
        meta = self.storage.models["meta"]
        state = self.horizon.state()
        for key, value in zip(self._horizon_keys(), (state["delay"], state["measured_at"])):
            if value is not None:
                meta.insert(key=key, value=str(value)).on_conflict(conflict_target=[meta.key],
                                                                    preserve=[meta.value]).execute()

    # -- reading -------------------------------------------------------------------------------
    def series(self, start=None, end=None, sources=("replay", "live")):
        """``{(symbol, data_type): DataFrame}`` over the window (or ``[start, end)`` µs/datetimes)."""
        from .timeutil import to_us
        window_start, window_end = self.window()
        start = window_start if start is None else to_us(start)
        end = window_end if end is None else to_us(end)
        return compute_series(self.storage, self.exchange, self.symbols, self.data_types, start, end, sources)

    def is_gapless(self, frames=None):
        """True when no minute of the window is missing in any stream."""
        frames = frames if frames is not None else self.series()
        return all(not frame["missing"].any() for frame in frames.values())

    def coverage(self):
        """Coverage rows of our streams (list of dicts with ISO times)."""
        rows = []
        for symbol in self.symbols:
            for data_type in self.data_types:
                for row in self.storage.coverage_rows(self.exchange, symbol, data_type):
                    rows.append(dict(row, start=iso(row["start"]), end=iso(row["end"])))
        return rows

    def status(self):
        """The status document (see :mod:`gapless.status`)."""
        return status_report(self.storage, [(self.exchange, self.symbols, self.data_types)], self.lookback,
                             {self.exchange: self.horizon.state()}, self.now())

    def gaps(self):
        """Gaps per stream: ``[{symbol, data_type, start, end, minutes, reason, healable}, ...]``."""
        gaps = []
        for stream in self.status()["streams"]:
            for gap in stream["gaps"]:
                gaps.append(dict(gap, symbol=stream["symbol"], data_type=stream["data_type"]))
        return gaps

    def _published_frames(self):
        streams = [(self.exchange, s, d) for s in self.symbols for d in self.data_types]
        return {key[1:]: frame for key, frame in published_frames(self.storage, streams).items()}

    # -- monitoring ----------------------------------------------------------------------------
    def telemetry(self):
        """Counters and gauges for monitoring, keyed like the metrics' labels (see :mod:`gapless.metrics`)."""
        health = self.recorder.health()
        exchange = self.exchange
        return {"live_lag_seconds": {exchange: health["lag_seconds"]},
                "history_delay_seconds": {exchange: self.horizon.state()["delay"] / 1e6},
                "reconnects": {exchange: health["reconnects"]},
                "malformed": {(exchange, "live"): health["malformed"]},
                "rows_stored": dict(self.storage.rows_inserted)}

    def components(self):
        """``{"recorder": alive, "scheduler": alive}`` (a scheduler not started yet counts as alive until stop)."""
        scheduler = self._scheduler
        return {"recorder": self.recorder.is_alive(),
                "scheduler": scheduler.running if scheduler is not None else not self.stop_event.is_set()}

    def plot(self, path):
        """Draw the coverage picture of the window to ``path`` (PNG, atomically); returns a
        :class:`~gapless.plot.Picture`."""
        from .plot import check_png_path, draw_coverage
        check_png_path(path, "path")
        return draw_coverage(self.series(), self.gaps(), path, title="gapless %s" % self.exchange)

    # -- service -------------------------------------------------------------------------------
    def run(self, install_signals=True):
        """Run as a service until SIGTERM/SIGINT; return the exit status (non-zero if a component died)."""
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop_event.set())
        log.info("gapless %s %s %s: lookback %d min, history delay %d min, rebuild every %.0fs, database %s",
                 self.exchange, ",".join(self.symbols), ",".join(self.data_types), self.lookback // MINUTE_US,
                 self.horizon.state()["delay"] // MINUTE_US, self.rebuild_interval, self.storage.redacted_url)
        status = EXIT_OK
        try:
            self.monitor.start()
            self.recorder.start()
            self.monitor.ready("recording; initial download")
            try:
                self.heal()  # the initial download, in the main thread
            except RequestRejectedError:
                raise
            except GaplessError as exc:
                log.error("initial download failed: %s (healing will retry)", exc)
            if not self.stop_event.is_set():
                self._start_scheduler(first_run_now=False)
            while not self.stop_event.wait(1.0):
                self.monitor.tick()  # WATCHDOG=1 only while the recorder and the scheduler are alive
                if not self.recorder.is_alive():
                    log.error("the recorder thread died (%r); exiting so the service manager restarts us",
                              self.recorder.error)
                    status = EXIT_COMPONENT_DIED
                    break
                if self._scheduler is not None and not self._scheduler.running:
                    log.error("the scheduler stopped; exiting")
                    status = EXIT_COMPONENT_DIED
                    break
        finally:
            began = time.monotonic()
            self.monitor.stopping()
            self.stop()
            log.info("stopped in %.1fs", time.monotonic() - began)
        return status
