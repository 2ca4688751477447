"""Replay downloader: fetch the planned requests (see :mod:`gapless.plan`), write them with coverage.

Planning reads the coverage table and the replay ledger, so a restart resumes from what is stored and
nothing already covered (or recently asked for in vain) is requested again, except what tardis-machine's
00:00 rule forces. After each complete run, what it did not claim goes to the ledger.

Up to ``concurrency`` requests (day slices) are fetched at once (see :mod:`gapless.fetch`): by threads in
the calling process (``workers=0``, the library's default: no child processes in a caller's process) or
by ``workers`` worker processes (parsing JSON on several cores). The calling thread is the single
database writer (SQLite wants one writer).
"""
import dataclasses
import gc
import logging
import queue
import random
import sys
import threading
import time
from dataclasses import dataclass, field, fields

from . import ledger
from .datatypes import parse_data_type, parse_data_types
from .exceptions import GaplessError, RequestRejectedError, Stopped
from .fetch_workers import DEFAULT_BATCH_ROWS, DEFAULT_TIMEOUT, ProcessFetchers, fetcher_config, threads_per_worker
from .plan import plan_wanted
from .replay import redact_options, replay_options
from .timeutil import MINUTE_US, US

# requests in flight: tardis-machine serves each on one core at ~20-30k lines/s, so a week of day slices
# downloads about as fast as its slowest day when they all run at once
DEFAULT_CONCURRENCY = 8

log = logging.getLogger(__name__)


@dataclass
class DownloadReport:
    """What a download did: requests, rows, lines, malformed lines, and what is still missing."""

    requests: int = 0
    attempts: int = 0
    rows_inserted: int = 0
    lines: int = 0
    messages: int = 0
    malformed: int = 0
    server_errors: int = 0
    bytes: int = 0
    minutes_asked: int = 0
    finished: int = 0
    failed: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self):
        """True when every planned request finished."""
        return not self.failed

    def merged(self, others):
        """One report summing this one and ``others`` (e.g. one per exchange)."""
        total = DownloadReport(**{f.name: getattr(self, f.name) for f in fields(self)})
        total.failed = list(self.failed)
        for other in others:
            for f in fields(self):
                value = getattr(other, f.name)
                setattr(total, f.name, getattr(total, f.name) + (list(value) if f.name == "failed" else value))
        return total


class Downloader:
    """Downloads replay data into a :class:`~gapless.storage.Storage`.

    ``download(exchange, symbols, data_types, start, end)`` plans from coverage, runs the requests
    (``workers`` processes, or inline when 0), retries incomplete ones with capped exponential backoff
    (re-planning from what was stored, so a retry only asks for what is still missing) and returns a
    :class:`DownloadReport`. Permanent refusals (unknown exchange...) raise
    :class:`~gapless.exceptions.RequestRejectedError`.
    """

    def __init__(self, storage, tardis_url, api_key=None, workers=1, batch_rows=DEFAULT_BATCH_ROWS, max_attempts=6,
                 backoff_base=1.0, backoff_cap=30.0, timeout=DEFAULT_TIMEOUT, progress=None, stop_event=None,
                 now=None, concurrency=DEFAULT_CONCURRENCY, fetchers=None):
        self.storage = storage
        self.tardis_url = tardis_url
        self.api_key = api_key
        self.workers = max(0, int(workers))
        self.batch_rows = batch_rows
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.timeout = timeout
        # True: a tqdm bar; "log": a log line per finished request (a day slice); False: quiet
        self.progress = (sys.stderr.isatty() or "log") if progress is None else progress
        self.concurrency = max(1, int(concurrency))
        self.stop_event = stop_event or threading.Event()
        self.now = now or (lambda: int(time.time() * US))
        self.limit = None  # the history horizon's claim limit: how far a quiet tail's retry may reach
        self.proven_until = None  # up to where history is proven available (beyond it, runs claim only lines)
        self.on_run_finished = None  # callback(request, failure) for the history-horizon logic
        self.should_retry = None  # callback(request, failure) -> bool; default: retry every transient failure
        self.admit = None  # callback(request) -> bool: may a planned request be made now (default: all)
        self.on_batch = None  # callback(report) after each written batch (benchmarks, progress displays)
        self.settled = None  # gapless.silence_memory.SettledMinutes: silent minutes earlier runs found quiet
        self.history_ends = None  # where history is expected to end (µs), when requests may reach past it
        self.check_answers = None  # gapless.silence_memory.CheckAnswers of the feed: checks asked once
        # started gapless.fetch_workers.ProcessFetchers to use instead of starting workers per run (the caller
        # made them with the same fetcher_config and closes them)
        self.fetchers = fetchers

    def fetcher_config(self):
        """The configuration of this downloader's fetchers (shared ones must have been started with it)."""
        return fetcher_config(self.tardis_url, self.api_key, self.timeout, self.batch_rows)

    def download(self, exchange, symbols, data_types, start, end):
        """Download what replay coverage lacks in ``[start, end)`` (µs). Returns a :class:`DownloadReport`."""
        data_types = parse_data_types(data_types)
        return self.download_wanted(exchange, {(s, dt): [(start, end)] for s in symbols for dt in data_types})

    def download_wanted(self, exchange, wanted):
        """Download what replay coverage lacks of ``{(symbol, DataType): [(start, end), ...]}``."""
        self.storage.ensure_tables({dt.table for _, dt in wanted})
        ledger.forget_covered(self.storage, exchange, {(symbol, data_type.name) for symbol, data_type in wanted},
                              lambda symbol, data_type: self.storage.covered(exchange, symbol, data_type, "replay"))
        requests = plan_wanted(self.storage, exchange, wanted, now_us=self.now(), limit=self.limit,
                               proven_until=self.proven_until)
        return self.run([r for r in requests if self.admit is None or self.admit(r)])

    def run(self, requests):
        """Execute planned requests (with retries) and return a :class:`DownloadReport`."""
        report = DownloadReport()
        began = time.monotonic()
        if not requests:
            return report
        report.minutes_asked = sum((r.claim_end - r.claim_from) // MINUTE_US for r in requests)
        bar = _progress_bar(report.minutes_asked) if self.progress is True else None
        # batches are large: collect garbage less often while writing them (restored afterwards)
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], 50_000), thresholds[1], thresholds[2])
        try:
            self._drive(requests, report, bar)
        finally:
            gc.set_threshold(*thresholds)
            if bar is not None:
                bar.close()
            report.seconds = time.monotonic() - began
        return report

    # -- shared --------------------------------------------------------------------------------
    def _write(self, batch, report, bar, progress_state, request):
        report.rows_inserted += self.storage.write(batch.rows, batch.claims)
        if self.settled is not None:
            self.settled.add(request, batch.settled, batch.holes)
        if batch.unclaimed:
            ledger.record(self.storage, request.exchange, batch.unclaimed, self.now(), request.claim_end,
                          anchored=request.anchored)
        report.lines += batch.lines
        report.messages += batch.messages
        report.malformed += batch.malformed
        report.server_errors += batch.errors
        if self.on_batch is not None:
            self.on_batch(report)
        if batch.malformed:
            log.warning("%d malformed line(s) from tardis-machine in %s, e.g. %s", batch.malformed,
                        request.describe(), "; ".join(batch.samples[:2]))
        if bar is not None:
            done = max(0, min(batch.progress_us, request.claim_end) - request.claim_from) // MINUTE_US
            key = (request.exchange, request.symbols, request.data_types, request.start)
            previous = progress_state.get(key, 0)
            if done > previous:
                bar.update(done - previous)
                progress_state[key] = done

    def _after_failure(self, request, failure, report):
        """Decide what to do after a run ended early: raise, give up, or the retry requests + delay."""
        if self.on_run_finished:
            self.on_run_finished(request, failure)
        if isinstance(failure, Stopped):
            return [], 0
        if isinstance(failure, RequestRejectedError):
            raise failure
        if getattr(failure, "refused", False) and request.past_edge:
            report.finished += 1
            return [], 0  # refused where history ends, as expected: complete up to its last line (see fetch_run)
        if self.should_retry is not None and not self.should_retry(request, failure):
            report.failed.append((request, str(failure)))
            return [], 0
        if request.attempt >= self.max_attempts:
            log.error("giving up on %s after %d attempts: %s", request.describe(), request.attempt, failure)
            report.failed.append((request, str(failure)))
            return [], 0
        wanted = {(s, parse_data_type(d)): [(request.claim_from, request.claim_end)] for s, d in request.streams}
        retries = plan_wanted(self.storage, request.exchange, wanted, now_us=self.now(), limit=self.limit,
                              proven_until=self.proven_until)
        retries = [dataclasses.replace(r, attempt=request.attempt + 1) for r in retries]
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (request.attempt - 1)) * random.uniform(0.5, 1.0)
        retry_after = getattr(failure, "retry_after", None)
        if retry_after:
            delay = max(delay, min(retry_after, 300.0))
        log.warning("%s incomplete (attempt %d): %s; retrying %d request(s) in %.1fs", request.describe(),
                    request.attempt, failure, len(retries), delay)
        return retries, delay

    # -- the writer loop ----------------------------------------------------------------------
    def _drive(self, requests, report, bar):
        """Submit the requests to concurrent fetchers, write what they send, retry what failed."""
        config = self.fetcher_config()
        if self.workers == 0 and self.check_answers is not None:
            config["answers"] = self.check_answers  # shared by the fetcher threads (not picklable to workers)
        concurrency = max(1, min(self.concurrency, len(requests)))
        if self.fetchers is not None and not self.fetchers.closed:
            fetchers = self.fetchers
        elif self.workers == 0:
            from .fetch import ThreadFetchers  # here: with worker processes this process never parses
            fetchers = ThreadFetchers(config, concurrency)
        else:
            workers = min(self.workers, concurrency)
            fetchers = ProcessFetchers(config, workers, threads_per_worker(concurrency, workers))
        in_flight, delayed, progress_state = {}, [], {}

        def submit(request):
            if self.settled is not None:
                request = dataclasses.replace(request, settled=self.settled.of(request),
                                              holes=self.settled.holes_of(request))
            if self.history_ends is not None and request.request_end > self.history_ends:
                request = dataclasses.replace(request, past_edge=True)
            task_id = fetchers.next_task_id()
            in_flight[task_id] = request
            report.attempts += 1
            report.requests += request.attempt == 1
            log.debug("replay %s", redact_options(replay_options(request.exchange, request.symbols,
                                                                 request.data_types, request.start,
                                                                 request.request_end, self.api_key)))
            fetchers.tasks.put((task_id, request))

        try:
            for request in requests:
                submit(request)
            while in_flight or delayed:
                if self.stop_event.is_set():
                    fetchers.abort.set()
                    delayed.clear()
                now = time.monotonic()
                for item in [d for d in delayed if d[0] <= now]:
                    delayed.remove(item)
                    submit(item[1])
                if not in_flight:
                    wait = min(d[0] for d in delayed) - time.monotonic() if delayed else 0.1
                    self.stop_event.wait(max(0.0, min(wait, 0.5)))
                    continue
                try:
                    kind, task_id, payload = fetchers.results.get(timeout=0.5)
                except queue.Empty:
                    if not fetchers.alive():
                        raise GaplessError("all download fetchers died") from None
                    continue
                request = in_flight.get(task_id)
                if request is None:  # shared fetchers: a task of an earlier run that ended early (never ours)
                    log.debug("ignoring a %s of task %s, not of this run", kind, task_id)
                    continue
                if kind == "batch":
                    self._write(payload, report, bar, progress_state, request)
                    continue
                del in_flight[task_id]
                bytes_received, failure = payload
                report.bytes += bytes_received
                if failure is None:
                    self._finished(request, report, len(requests))
                    continue
                retries, delay = self._after_failure(request, failure, report)
                delayed.extend((time.monotonic() + delay, r) for r in retries)
        finally:
            # shared fetchers still busy with this run's tasks (it ended early: an error), or told to abort (a stop),
            # are of no use to a later run: they are closed, and their owner starts new ones
            if fetchers is not self.fetchers or in_flight or fetchers.abort.is_set():
                fetchers.close()

    def _finished(self, request, report, planned):
        report.finished += 1
        if self.progress == "log":
            log.info("history: %s done (%d of %d request(s))", request.describe(), report.finished, planned)
        if self.on_run_finished:
            self.on_run_finished(request, None)


def _progress_bar(total):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: no bar without it
        return None
    return tqdm(total=total, unit="min", desc="replay", dynamic_ncols=True, leave=False)
