"""One exchange of a service: its live recorder, its history horizon, and the history it asks for.

A :class:`Feed` is what gapless keeps per exchange: one recorder thread (one websocket to tardis-machine
for the exchange's symbols and data types), one :class:`~gapless.horizon.HistoryHorizon` (each exchange's
history lags by its own delay, measured by probes), and the per-pass history download that the healing
rules decide (:mod:`gapless.healing`). The service (:class:`gapless.service.Gapless`) runs one Feed per
exchange and publishes all their streams together.
"""
import logging
import threading

from . import ledger
from .claims import LATENCY_MARGIN_US
from .download import Downloader
from .exceptions import GaplessError
from .fetch_workers import ProcessFetchers, pool_key, threads_per_worker
from .horizon import HistoryHorizon
from .runs import ReplayRequest
from .plan import Anchors
from .published import PublishedSources, published_sources
from .recorder import Recorder
from .series import Reader
from .silence_memory import CheckAnswers, SettledMinutes
from .status import minute_sources
from .timeutil import MINUTE_US, US

log = logging.getLogger(__name__)

# a refusal this close to the present means "not available yet", not a fault worth retrying at once
EDGE_US = 120 * MINUTE_US


class Feed:
    """One exchange: recorder, history horizon and history downloads (see the module docstring)."""

    def __init__(self, group, storage, now, tardis_url, tardis_ws_url, api_key=None, history_delay_us=15 * MINUTE_US,
                 workers=0, concurrency=8, recorder_options=None, downloader_options=None, planner=None,
                 stop_event=None, monitor=None):
        self.group = group
        self.exchange = group.exchange
        self.symbols = group.symbols
        self.data_types = group.data_types
        self.storage = storage
        self.now = now
        self.tardis_url = tardis_url
        self.api_key = api_key
        self.workers = workers
        self.concurrency = concurrency
        self.planner = planner
        self.stop_event = stop_event
        self.monitor = monitor
        self.horizon = HistoryHorizon(history_delay_us)
        # the very same request is never made again before its backoff, across restarts too
        self.asked = ledger.RequestMemory.restored(storage, self.exchange)
        self.settled = SettledMinutes.restored(storage, self.exchange)
        self.check_answers = CheckAnswers()
        self._restore_horizon()
        self.pairs = group.stream_pairs  # exactly the streams kept (groups of one exchange merge: gapless.streams)
        self.recorder = Recorder(storage, tardis_ws_url, self.exchange, self.symbols, self.data_types,
                                 clock=lambda: now() / 1e6, pairs=group.pairs, **(recorder_options or {}))
        self._downloader_options = dict(downloader_options or {})
        self._fetchers = None  # download worker processes kept across passes (see _shared_fetchers)
        self._fetchers_lock = threading.Lock()  # held by the run that uses them
        self.last_download = None
        self.probe_requests = 0

    # -- history -------------------------------------------------------------------------------
    def download_history(self, window, use_published=False):
        """Download what replay coverage lacks over ``window`` (start, end), up to where history can deliver.

        ``use_published``: decide from the series published just before (cheaper than stitching again).
        """
        now_us = self.now()
        if self.horizon.probe_due(now_us):
            self.measure_history_delay()
            now_us = self.now()
        start, end = window
        self._advance_edge(now_us, start)
        now_us = self.now()
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
        downloader.settled = self.settled
        downloader.check_answers = self.check_answers
        if self.horizon.state()["mode"] == "error":
            downloader.history_ends = now_us - self.horizon.state()["delay"]  # requests reach past it on purpose
        downloader.on_run_finished = self._learn_horizon
        downloader.admit = lambda request: self.asked.admit(request, self.now())
        if self.monitor is not None:
            downloader.on_batch = self.monitor.progress  # the first download runs in the main thread: the watchdog
        # a refusal near the present means "not available yet": the next pass asks less, no retry storm
        downloader.should_retry = lambda request, failure: not (
            getattr(failure, "refused", False) and request.request_end >= self.now() - EDGE_US)
        wanted = self._wanted(start, limit, end, use_published)
        # one run at a time on the shared workers (they have one results queue); a run beside it (a library call
        # while the scheduler's pass downloads) starts workers of its own, as every run did before
        shared = self._fetchers_lock.acquire(blocking=False)
        try:
            downloader.fetchers = self._shared_fetchers(downloader) if shared else None
            report = downloader.download_wanted(self.exchange, wanted)
        finally:
            if shared:
                self._fetchers_lock.release()
        if self.horizon.probe_due(self.now()):
            self.measure_history_delay()  # a refusal near the edge: history fell behind; find out how far
        if report.requests:
            log.info("%s history: %d request(s), %d new rows, %d lines in %.1fs%s", self.exchange, report.requests,
                     report.rows_inserted, report.lines, report.seconds,
                     "; %d incomplete" % len(report.failed) if report.failed else "")
        self._save_horizon()
        self.asked.save(self.storage, self.exchange)
        self.settled.save(self.storage, self.exchange)
        if self.monitor is not None:
            self.monitor.downloaded(report, self.exchange)
        self.last_download = report
        return report

    def _shared_fetchers(self, downloader):
        """The feed's download worker processes, started once and kept across passes (each start costs about
        0.3 s of CPU); new ones when they were closed, died, or the downloader wants others. None: threads."""
        if downloader.workers == 0:
            return None
        config, workers = downloader.fetcher_config(), downloader.workers
        threads = threads_per_worker(downloader.concurrency, workers)
        current = self._fetchers
        if current is not None and (current.closed or current.key != pool_key(config, workers, threads)
                                    or not current.alive()):
            current.close()
            current = None
        if current is None:
            current = self._fetchers = ProcessFetchers(config, workers, threads)
        return current

    def close_downloads(self):
        """Stop the feed's download worker processes (the service's stop, after its last pass)."""
        with self._fetchers_lock:
            if self._fetchers is not None:
                self._fetchers.close()
                self._fetchers = None

    def _sources_of(self, use_published=True, window=None):
        """``sources_of(symbol, data_type, a, b)``: the published sources (read for every stream of ``window`` at
        once when given), or the series' where they are not all published."""
        published = PublishedSources(self.storage, self.exchange, *window) if use_published and window else \
            (lambda symbol, data_type, a, b: published_sources(self.storage, self.exchange, symbol, data_type, a, b))

        def sources_of(symbol, data_type, a, b):
            if use_published:
                sources = published(symbol, data_type, a, b)
                if sources is not None:
                    return sources
            with Reader(self.storage, [(self.exchange, symbol, data_type)]) as reader:
                return minute_sources(reader, self.exchange, symbol, data_type, a, b)
        return sources_of

    def _wanted(self, start, limit, end, use_published=False):
        """What history to fetch this pass, per stream (see :mod:`gapless.healing`)."""
        now_us = self.now()
        return self.planner.wanted(self._sources_of(use_published), self.exchange, self.symbols, self.data_types,
                                   start, limit, now_us, self._held_of(now_us, limit), end=end,
                                   cached_of=self._cached_of, disagrees=self._disagrees, pairs=self.pairs)

    def _disagrees(self, symbol, data_type):
        """True when the last publishing pass (of any process) found replay and live minutes of the stream to disagree
        (``stream_status.disagreements``): evidence that its live minutes should become history soon."""
        model = self.storage.models["stream_status"]
        row = model.get_or_none((model.exchange == self.exchange) & (model.symbol == symbol)
                                & (model.data_type == data_type))
        return bool(row is not None and row.disagreements)

    def _cached_of(self, symbol, data_type):
        """What tardis-machine's cache holds empty for a stream: ``[(start, end, found at)]`` (the replay ledger)."""
        return [(e["start"], e["end"], e["asked_at"]) for e in ledger.entries(self.storage, self.exchange, symbol,
                                                                              data_type)
                if e["reason"] == "history_cached_empty"]

    def _held_of(self, now_us, limit):
        """``held_of(symbol, data_type)``: what the replay ledger holds back now (see :mod:`gapless.ledger`)."""
        anchors = Anchors(self.storage, self.exchange)
        by_stream = ledger.entries_by_stream(self.storage, self.exchange)

        def held_of(symbol, data_type):
            return ledger.held_back(by_stream.get((symbol, data_type), []), now_us, anchors, limit)[0]

        return held_of

    def next_pass_due(self, window):
        """When (our clock, µs) a pass will reach the next gap that has ended (None: no such gap).

        ``claim_limit(t) = floor(t - delay) - 1 min`` reaches the gap's end ``e`` at ``t = e + 1 min + delay``.
        In "error" mode requests reach past the edge and lines prove what they reach: history proves ``e`` once
        it delivers lines the latency margin past it, at ``t = e + delay + margin`` (always in the future).
        """
        now_us = self.now()
        start, end = window
        state = self.horizon.state()
        limit = self.horizon.claim_limit(now_us)
        reach = self.planner.next_reach(self._sources_of(window=(start, end)), self.symbols, self.data_types, start,
                                        limit, end, self._held_of(now_us, limit), pairs=self.pairs)
        if reach is None:
            return None
        if state["mode"] == "error":
            return reach + state["delay"] + LATENCY_MARGIN_US + US
        return reach + MINUTE_US + state["delay"] + US

    # -- the history delay ----------------------------------------------------------------------
    def _probe(self):
        from .probe import EdgeProbe
        from .replay import ReplayClient
        return EdgeProbe(ReplayClient(self.tardis_url, timeout=(5.0, 30.0)), self.exchange, self.symbols,
                         api_key=self.api_key, live_trades_in=self._live_trades_in, admit=self._admit_probe)

    def _advance_edge(self, now_us, start):
        """Where requests stop at the proven edge ("empty" or unknown mode), prove the newest minute the delay
        would allow with one probe (its own filter set), so history follows now between measurements."""
        watermark, wanted = self.horizon.watermark(now_us), self.horizon.delay_watermark(now_us)
        if wanted <= watermark or wanted - MINUTE_US < start:
            return
        try:
            latest, mode = self._probe().advance(wanted - MINUTE_US)
        except GaplessError as exc:
            log.info("%s: probing the history edge failed (%s)", self.exchange, exc)
            return
        self.probe_requests += 1
        self.horizon.saw_mode(mode)
        self.horizon.advanced(latest)

    def measure_history_delay(self):
        """Measure how far history reaches now (a handful of one-minute probes) and use it as the delay."""
        probe = self._probe()
        try:
            state = self.horizon.state()
            result = probe.measure(self.now(), known_edge=state["edge"])
        except GaplessError as exc:
            log.warning("%s: measuring the history delay failed (%s); keeping %s", self.exchange, exc,
                        self.horizon.state()["delay"])
            return None
        self.horizon.saw_mode(result.mode)
        self.horizon.measured(self.now(), result.edge, result.tight)
        self.probe_requests += result.probes
        self._save_horizon()
        self.asked.save(self.storage, self.exchange)
        return result

    def _admit_probe(self, minute):
        """A probe of ``minute`` goes through the request memory like any replay request."""
        request = ReplayRequest(self.exchange, tuple(self.symbols), ("trade",), minute, minute)
        return self.asked.admit(request, self.now())

    def _live_trades_in(self, minute):
        """True when the live recording stored trades of our symbols inside ``minute`` (history must have them)."""
        for symbol in self.symbols:
            if self.storage.last_row_before("trade", self.exchange, symbol, "trade", "live", minute + MINUTE_US,
                                            minute, columns=["timestamp"]):
                return True
            for name in self.data_types:
                if name.startswith("trade_bar") and (symbol, name) in self.pairs and self.storage.last_row_before(
                        "trade_bar", self.exchange, symbol, name, "live", minute + MINUTE_US + 1, minute + 1,
                        columns=["timestamp"]):
                    return True
        return False

    def _learn_horizon(self, request, failure):
        now_us = self.now()
        if failure is not None and getattr(failure, "refused", False) and request.request_end >= now_us - EDGE_US:
            self.horizon.saw_mode("error")
            state = self.horizon.state()
            delivered = getattr(failure, "delivered_until", None)
            if request.request_end > now_us - state["delay"] and delivered is not None and \
                    delivered >= now_us - state["delay"] - MINUTE_US:
                # asked past the edge on purpose ("error" mode): refused where history ends, about where the delay
                # says; the lines prove what they reach
                self.horizon.advanced(delivered)
                return
            # refused before where the delay says history reaches: it fell behind: grow, and measure again
            self.horizon.refused(now_us, getattr(failure, "delivered_until", None))

    def _horizon_keys(self):
        return ("history_delay_us:%s" % self.exchange, "history_measured_at:%s" % self.exchange,
                "history_edge:%s" % self.exchange, "history_mode:%s" % self.exchange)

    def _restore_horizon(self):
        """Start from the delay the last run used (measured or grown); it is measured again at once, without
        asking again for the minutes the last measurement proved available (its edge)."""
        meta = self.storage.models["meta"]
        keys = self._horizon_keys()
        values = {row.key: row.value for row in meta.select().where(meta.key.in_([keys[0], keys[2], keys[3]]))}
        self.horizon.saw_mode(values.get(keys[3]))
        try:
            if keys[0] in values:
                self.horizon.delay = max(0, min(self.horizon.max_delay, int(values[keys[0]])))
            if keys[2] in values:
                self.horizon.edge = int(values[keys[2]])
        except ValueError:
            pass

    def _save_horizon(self):
        state = self.horizon.state()
        mode = state["mode"] if state["mode"] != "unknown" else None
        for key, value in zip(self._horizon_keys(), (state["delay"], state["measured_at"], state["edge"], mode)):
            if value is not None:
                self.storage.put_meta(key, str(value))

    # -- monitoring ----------------------------------------------------------------------------
    def telemetry(self):
        """This exchange's part of the monitoring counters (see :meth:`gapless.service.Gapless.telemetry`)."""
        health = self.recorder.health()
        return {"live_lag_seconds": health["lag_seconds"], "history_delay_seconds": self.horizon.state()["delay"] / 1e6,
                "reconnects": health["reconnects"], "malformed": health["malformed"]}
