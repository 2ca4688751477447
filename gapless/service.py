"""The gapless service: record live, download history, heal gaps and publish the series on a schedule.

:class:`Gapless` is the long-lived object (library and ``python run.py``). It keeps one
:class:`~gapless.feed.Feed` per exchange (a recorder thread, a history horizon, the history downloads);
:meth:`Gapless.heal` is one pass: publish what changed, download the history each exchange can deliver
and coverage lacks, publish again. An APScheduler job runs it every ``rebuild_interval`` (``max_instances=1``,
coalescing), plus one extra pass for the moment history will reach a gap. :meth:`Gapless.run` is the
service: the first pass runs in the calling (main) thread, signals stop it gracefully, and a component
that dies makes it return non-zero.
"""
import dataclasses
import logging
import signal
import threading
import time
from datetime import timedelta

from .config import make_clock, parse_lookback, parse_upgrade
from .exceptions import GaplessError, RequestRejectedError
from .feed import Feed
from .final import FinalMinutes
from .healing import HealingPlanner
from .healing_state import HealingMemory
from .monitor import Monitor
from .publish import rebuild
from .published import published_frames
from .redaction import protect_url_loggers, url_password
from .stitch import series as compute_series
from .status import SETTLE_US, status_report
from .storage import Storage
from .streams import parse_streams
from .timeutil import MINUTE_US, ceil_minute, floor_minute, iso, parse_duration_us
from .urls import validate_http_url

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_COMPONENT_DIED = 3


class Gapless:
    """Gapless minute series of one or several exchanges' streams, kept up to now.

    One exchange: ``Gapless("deribit", ["BTC-PERPETUAL"], ["quote_1m"], ...)``; several:
    ``Gapless(streams="deribit:BTC-PERPETUAL:quote_1m;binance-futures:BTCUSDT:trade", ...)`` (or a list of
    ``(exchange, symbols, data_types)``). ``start()``/``stop()`` (or ``with Gapless(...) as g:``) for
    long-lived library use; ``run()`` for the service. ``series()``, ``coverage()``, ``gaps()`` and
    ``status()`` read the database; a second process can read the same database while this one writes.
    ``upgrade``: ``"daily"`` (default) or ``"hourly"``, when live minutes of quotes and book snapshots become replay
    (``GAPLESS_UPGRADE``; see :mod:`gapless.healing`).
    """

    def __init__(self, exchange=None, symbols=None, data_types=None, lookback="1d",
                 database_url="sqlite:///gapless.db", tardis_url="http://localhost:8000",
                 tardis_ws_url="ws://localhost:8001", api_key=None, history_delay="15m", rebuild_interval="60s",
                 export=None, workers=0, concurrency=8, now=None, recorder_options=None, downloader_options=None,
                 metrics_addr=None, plot=None, streams=None, upgrade="daily"):
        # the same checks as the command line: names reach URLs, logs and SQL parameters
        if streams is None:
            if exchange is None or symbols is None or data_types is None:
                raise GaplessError("give exchange, symbols and data_types, or streams")
            streams = [(exchange, symbols, data_types)]
        self.groups = parse_streams(streams, "streams" if exchange is None else "exchange/symbols/data_types")
        self.exchange, self.symbols, self.data_types = (self.groups[0].exchange, self.groups[0].symbols,
                                                        self.groups[0].data_types)
        self.lookback = parse_lookback(parse_duration_us(lookback, "lookback"), "lookback")
        self.rebuild_interval = parse_duration_us(rebuild_interval, "rebuild_interval") / 1e6
        self.upgrade = parse_upgrade(upgrade, "upgrade")
        self.export = export or None
        self.tardis_url = validate_http_url(tardis_url, "tardis_url")
        self.api_key = api_key or None
        protect_url_loggers([self.api_key, url_password(database_url)])
        self.now = now or make_clock()
        self.storage = Storage(database_url)
        self.stop_event = threading.Event()
        self._heal_lock = threading.Lock()
        self._publish_lock = threading.Lock()  # the tick's passes and the early ones (gapless.final) take turns
        self._scheduler = None
        # when book days were last asked from 00:00 is kept in the database: every process healing it (a restart,
        # a library call beside a running service) continues one schedule (see gapless.healing)
        self.planner = HealingPlanner(HealingMemory(self.storage), upgrade=self.upgrade)
        # operators' view (metrics listener, systemd notifications, picture): see gapless.monitor
        self.monitor = Monitor("+".join(g.exchange for g in self.groups), metrics_addr=metrics_addr, plot_path=plot,
                               telemetry=self.telemetry, components=self.components)
        delay = parse_duration_us(history_delay, "history_delay")
        self.feeds = [Feed(group, self.storage, self.now, self.tardis_url, tardis_ws_url, self.api_key, delay,
                           workers=workers, concurrency=concurrency, recorder_options=recorder_options,
                           downloader_options=downloader_options, planner=self.planner, stop_event=self.stop_event,
                           monitor=self.monitor) for group in self.groups]
        # live minutes are published as soon as their claims cover them whole (not at the next tick)
        self.final = FinalMinutes(lambda streams: self._publish(early=True, only=streams), lambda: self._scheduler,
                                  self.stop_event)
        for feed in self.feeds:
            feed.recorder.on_claimed = self.final.claimed
        self._started = (time.monotonic(), self.now())
        self.last_rebuild = None
        self.last_download = None
        self.heal_error = None

    @classmethod
    def from_settings(cls, settings, **kwargs):
        """Build from validated :class:`~gapless.config.Settings`."""
        kwargs.setdefault("now", make_clock(settings.test_clock))
        as_delta = lambda us: timedelta(microseconds=us)  # noqa: E731 (settings hold µs)
        return cls(streams=settings.streams, lookback=as_delta(settings.lookback), database_url=settings.database_url,
                   tardis_url=settings.tardis_url, tardis_ws_url=settings.tardis_ws_url,
                   api_key=settings.api_key or None, history_delay=as_delta(settings.history_delay),
                   rebuild_interval=as_delta(settings.rebuild_interval), export=settings.export or None,
                   workers=settings.workers, concurrency=settings.concurrency,
                   metrics_addr=settings.metrics_addr or None, plot=settings.plot or None, upgrade=settings.upgrade,
                   **kwargs)

    # -- one exchange, as before ----------------------------------------------------------------
    @property
    def recorder(self):
        """The first exchange's recorder (all of them: ``[f.recorder for f in feeds]``)."""
        return self.feeds[0].recorder

    @property
    def horizon(self):
        """The first exchange's history horizon."""
        return self.feeds[0].horizon

    @property
    def streams(self):
        """``[(exchange, symbol, data_type)]`` of every group."""
        return [s for g in self.groups for s in g.streams]

    def measure_history_delay(self):
        """Measure how far each exchange's history reaches now; returns the first exchange's result."""
        return [feed.measure_history_delay() for feed in self.feeds][0]

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
        for feed in self.feeds:
            feed.recorder.start()
        self._start_scheduler(first_run_now=initial_heal)
        return self

    def stop(self, timeout=8.0):
        """Stop the scheduler (and any download), the recorders (flushed), then close the database."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        if self._scheduler is not None:
            try:
                self._scheduler.shutdown(wait=True)
            except Exception:  # a scheduler that is already down must not keep us from stopping the rest
                log.exception("scheduler shutdown failed")
            self._scheduler = None
        for feed in self.feeds:
            feed.close_downloads()
            feed.recorder.stop(max(1.0, deadline - time.monotonic()))
        self.monitor.stop()
        self.storage.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def _start_scheduler(self, first_run_now):
        from datetime import datetime, timezone

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
        from datetime import datetime, timezone
        wait = self.wall_seconds_until(due)
        if wait is None or wait >= self.rebuild_interval:
            return  # the regular pass comes first
        scheduler.add_job(self._scheduled_heal, "date", id="reach", replace_existing=True, misfire_grace_time=30,
                          run_date=datetime.now(timezone.utc) + timedelta(seconds=max(0.0, wait)))

    def next_pass_due(self):
        """When (our clock, µs) a pass will reach the next gap that has ended, over every exchange (or None)."""
        window = self.window()
        due = [d for d in (feed.next_pass_due(window) for feed in self.feeds) if d is not None]
        return min(due) if due else None

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
                reports = [feed.download_history(self.window(), use_published=publish) for feed in self.feeds]
                self.last_download = reports[0]
                if publish and not self.stop_event.is_set():
                    self._publish()
            return self.last_rebuild
        finally:
            self._heal_lock.release()

    def download_history(self, use_published=False):
        """Download what each exchange's history can deliver and coverage lacks (the first one's report)."""
        return [feed.download_history(self.window(), use_published) for feed in self.feeds][0]

    def _publish(self, early=False, only=None):
        """One publishing pass over every stream, or ``only`` those (an early pass of final minutes)."""
        streams = self.streams if only is None else [s for s in self.streams if s in only]
        if not streams:
            return
        with self._publish_lock:
            start, end = self.window()
            # the export file and the picture are rewritten by the tick's passes, not by each early one
            report = rebuild(self.storage, streams, start, end, export=None if early else self.export,
                             now_us=self.now())
            if only is not None and self.last_rebuild is not None:
                # the other streams' results stand as the last pass left them (the next tick publishes every one)
                report = dataclasses.replace(report, streams={**self.last_rebuild.streams, **report.streams})
            self.last_rebuild = report
        failed = sum(1 for r in report.streams.values() if r.error)
        log.log(logging.DEBUG if early else logging.INFO, "rebuilt %d stream(s) over %s .. %s in %.2fs: %s",
                len(report.streams), iso(start), iso(end), report.seconds,
                "%d stream(s) could not be published" % failed if failed else
                "gapless" if not report.missing else "%d missing minute(s)" % report.missing)
        self.monitor.rebuilt(report, gaps=self.gaps, frames=self._published_frames, draw=not early)

    # -- reading -------------------------------------------------------------------------------
    def _key(self, exchange, symbol, data_type):
        """Frames are keyed ``(symbol, data_type)`` with one exchange, ``(exchange, symbol, data_type)`` with more."""
        return (symbol, data_type) if len(self.groups) == 1 else (exchange, symbol, data_type)

    def series(self, start=None, end=None, sources=("replay", "live")):
        """``{key: DataFrame}`` over the window (or ``[start, end)`` µs/datetimes); keys: see :meth:`_key`."""
        from .timeutil import to_us
        window_start, window_end = self.window()
        start = window_start if start is None else to_us(start)
        end = window_end if end is None else to_us(end)
        frames = {}
        for g in self.groups:
            for symbols, types in g.filters:
                for (symbol, data_type), frame in compute_series(self.storage, g.exchange, symbols, types, start, end,
                                                                 sources).items():
                    frames[self._key(g.exchange, symbol, data_type)] = frame
        return frames

    def follow(self, since=None, resume=None, timeout=None):
        """Every published minute of our streams from ``since`` (default: the window's start) through now and on,
        then each minute as it is published or corrected: :class:`~gapless.follower.MinuteEvent` objects and one
        :class:`~gapless.follower.CaughtUp` marker (see :mod:`gapless.follower`). ``resume``: a seq to continue
        after instead. ``timeout``: stop after that many seconds without an event. Blocks; ends when we stop.
        """
        from .follower import Follower, since_us
        if resume is None:
            since = self.window()[0] if since is None else since_us(since)
        return iter(Follower(self.storage, self.streams, since=since, resume=resume, timeout=timeout,
                             stop=self.stop_event, now=self.now,
                             horizons=lambda: {f.exchange: f.horizon.state() for f in self.feeds}))

    def is_gapless(self, frames=None):
        """True when no minute of the window is missing in any stream."""
        frames = frames if frames is not None else self.series()
        return all(not frame["missing"].any() for frame in frames.values())

    def coverage(self):
        """Coverage rows of our streams (list of dicts with ISO times)."""
        rows = []
        for exchange, symbol, data_type in self.streams:
            for row in self.storage.coverage_rows(exchange, symbol, data_type):
                rows.append(dict(row, start=iso(row["start"]), end=iso(row["end"])))
        return rows

    def status(self):
        """The status document, grouped by exchange (see :mod:`gapless.status`)."""
        groups = [(g.exchange, symbols, types) for g in self.groups for symbols, types in g.filters]
        return status_report(self.storage, groups, self.lookback,
                             {feed.exchange: feed.horizon.state() for feed in self.feeds}, self.now())

    def gaps(self):
        """Gaps per stream: ``[{exchange, symbol, data_type, start, end, minutes, reason, healable}, ...]``."""
        gaps = []
        for stream in self.status()["streams"]:
            for gap in stream["gaps"]:
                gaps.append(dict(gap, exchange=stream["exchange"], symbol=stream["symbol"],
                                 data_type=stream["data_type"]))
        return gaps

    def _published_frames(self):
        return {self._key(*key): frame
                for key, frame in published_frames(self.storage, self.streams, *self.window()).items()}

    # -- monitoring ----------------------------------------------------------------------------
    def telemetry(self):
        """Counters and gauges for monitoring, keyed like the metrics' labels (see :mod:`gapless.metrics`)."""
        values = {"live_lag_seconds": {}, "history_delay_seconds": {}, "reconnects": {}, "malformed": {},
                  "rows_stored": dict(self.storage.rows_inserted)}
        for feed in self.feeds:
            part = feed.telemetry()
            for name in ("live_lag_seconds", "history_delay_seconds", "reconnects"):
                values[name][feed.exchange] = part[name]
            values["malformed"][(feed.exchange, "live")] = part["malformed"]
        return values

    def components(self):
        """``{"recorder": all alive, "scheduler": alive}`` (a scheduler not started yet counts as alive)."""
        scheduler = self._scheduler
        return {"recorder": all(feed.recorder.is_alive() for feed in self.feeds),
                "scheduler": scheduler.running if scheduler is not None else not self.stop_event.is_set()}

    def plot(self, path):
        """Draw the coverage picture of the window to ``path`` (PNG, atomically); returns a
        :class:`~gapless.plot.Picture`."""
        from .plot import check_png_path, draw_coverage
        check_png_path(path, "path")
        return draw_coverage(self.series(), self.gaps(), path, title="gapless %s" % self.monitor.exchange)

    # -- service -------------------------------------------------------------------------------
    def run(self, install_signals=True):
        """Run as a service until SIGTERM/SIGINT; return the exit status (non-zero if a component died)."""
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop_event.set())
        log.info("gapless %s: lookback %d min, history delay at most %d min (measured at start), rebuild every "
                 "%.0fs, database %s", "; ".join(str(g) for g in self.groups), self.lookback // MINUTE_US,
                 self.horizon.state()["delay"] // MINUTE_US, self.rebuild_interval, self.storage.redacted_url)
        status = EXIT_OK
        try:
            if self.stop_event.is_set():  # stopped before we were up: start nothing
                return status
            self.monitor.start()
            for feed in self.feeds:
                feed.recorder.start()
            self.monitor.ready("recording; initial download")
            try:
                self.heal()  # the initial download, in the main thread
            except RequestRejectedError:
                raise
            except GaplessError as exc:
                log.error("initial download failed: %s (healing will retry)", exc)
            if not self.stop_event.is_set():
                self._start_scheduler(first_run_now=False)
                self._schedule_reach()
            while not self.stop_event.wait(1.0):
                self.monitor.tick()  # WATCHDOG=1 only while the recorders and the scheduler are alive
                dead = [feed for feed in self.feeds if not feed.recorder.is_alive()]
                if dead:
                    log.error("the recorder thread died (%s: %r); exiting so the service manager restarts us",
                              dead[0].exchange, dead[0].recorder.error)
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
