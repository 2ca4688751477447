"""Replay downloader: fetch the planned requests (see :mod:`gapless.plan`), write them with coverage.

Planning reads the coverage table and the replay ledger, so a restart resumes from what is stored and
nothing already covered (or recently asked for in vain) is requested again, except what tardis-machine's
00:00 rule forces. After each complete run, what it did not claim goes to the ledger.

Fetching and parsing run in worker processes (``workers`` of them, default 1) and the calling thread is
the single database writer: parsing JSON is CPU-bound, threads would share one core under the GIL, and
SQLite wants one writer. ``workers=0`` does everything in the calling thread.
"""
import gc
import logging
import multiprocessing
import queue
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from . import ledger
from .datatypes import parse_data_type, parse_data_types
from .exceptions import GaplessError, RequestRejectedError, ServerError
from .ingest import ReplayRequest, RunParser
from .plan import plan_wanted
from .redaction import install_secret_filter
from .replay import ReplayClient, redact_options, replay_options
from .timeutil import MINUTE_US, US

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
    failed: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self):
        """True when every planned request finished."""
        return not self.failed


def fetch_run(request, client, api_key, batch_rows, emit, should_stop=lambda: False):
    """Run one replay request: stream, parse, and ``emit`` each :class:`~gapless.ingest.Batch`.

    Returns ``None`` when the run completed, else the exception that ended it (the batches emitted
    before are valid: their coverage claims only what they contain).
    """
    parser = RunParser(request, batch_rows=batch_rows)
    options = replay_options(request.exchange, request.symbols, request.data_types, request.start,
                             request.request_end, api_key)
    complete = False
    failure = None
    try:
        for lines in client.stream_lines(options):
            for batch in parser.feed(lines):
                emit(batch)
            if should_stop():
                failure = _Stopped("stopped")
                break
        else:
            complete = True
    except ServerError as exc:
        failure = exc
    final = parser.finish(complete)
    if final.rows or final.claims or final.lines or final.unclaimed:
        emit(final)
    if failure is not None:
        # how far this run got (after the last flush): the history horizon learns from refusals
        failure.delivered_until = parser.last_arrival if parser.has_data else None
    return failure


class _Stopped(GaplessError):
    """The download was asked to stop."""


class Downloader:
    """Downloads replay data into a :class:`~gapless.storage.Storage`.

    ``download(exchange, symbols, data_types, start, end)`` plans from coverage, runs the requests
    (``workers`` processes, or inline when 0), retries incomplete ones with capped exponential backoff
    (re-planning from what was stored, so a retry only asks for what is still missing) and returns a
    :class:`DownloadReport`. Permanent refusals (unknown exchange...) raise
    :class:`~gapless.exceptions.RequestRejectedError`.
    """

    def __init__(self, storage, tardis_url, api_key=None, workers=1, batch_rows=5000, max_attempts=6,
                 backoff_base=1.0, backoff_cap=30.0, timeout=(5.0, 60.0), progress=None, stop_event=None,
                 now=None):
        self.storage = storage
        self.tardis_url = tardis_url
        self.api_key = api_key
        self.workers = max(0, int(workers))
        self.batch_rows = batch_rows
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.timeout = timeout
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.stop_event = stop_event or threading.Event()
        self.now = now or (lambda: int(time.time() * US))
        self.limit = None  # the history horizon's claim limit: how far a quiet tail's retry may reach
        self.on_run_finished = None  # callback(request, failure) for the history-horizon logic
        self.should_retry = None  # callback(request, failure) -> bool; default: retry every transient failure
        self.on_batch = None  # callback(report) after each written batch (benchmarks, progress displays)

    def download(self, exchange, symbols, data_types, start, end):
        """Download what replay coverage lacks in ``[start, end)`` (µs). Returns a :class:`DownloadReport`."""
        data_types = parse_data_types(data_types)
        return self.download_wanted(exchange, {(s, dt): [(start, end)] for s in symbols for dt in data_types})

    def download_wanted(self, exchange, wanted):
        """Download what replay coverage lacks of ``{(symbol, DataType): [(start, end), ...]}``."""
        self.storage.ensure_tables({dt.table for _, dt in wanted})
        for symbol, data_type in wanted:
            ledger.forget_covered(self.storage, exchange, symbol, data_type.name,
                                  self.storage.covered(exchange, symbol, data_type.name, "replay"))
        return self.run(plan_wanted(self.storage, exchange, wanted, now_us=self.now(), limit=self.limit))

    def run(self, requests):
        """Execute planned requests (with retries) and return a :class:`DownloadReport`."""
        report = DownloadReport()
        began = time.monotonic()
        if not requests:
            return report
        report.minutes_asked = sum((r.claim_end - r.claim_from) // MINUTE_US for r in requests)
        bar = _progress_bar(report.minutes_asked) if self.progress else None
        # batches are large: collect garbage less often while writing them (restored afterwards)
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], 50_000), thresholds[1], thresholds[2])
        try:
            if self.workers == 0:
                self._run_inline(requests, report, bar)
            else:
                self._run_pool(requests, report, bar)
        finally:
            gc.set_threshold(*thresholds)
            if bar is not None:
                bar.close()
            report.seconds = time.monotonic() - began
        return report

    # -- shared --------------------------------------------------------------------------------
    def _write(self, batch, report, bar, progress_state, request):
        report.rows_inserted += self.storage.write(batch.rows, batch.claims)
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
        if isinstance(failure, _Stopped):
            return [], 0
        if isinstance(failure, RequestRejectedError):
            raise failure
        if self.should_retry is not None and not self.should_retry(request, failure):
            report.failed.append((request, str(failure)))
            return [], 0
        if request.attempt >= self.max_attempts:
            log.error("giving up on %s after %d attempts: %s", request.describe(), request.attempt, failure)
            report.failed.append((request, str(failure)))
            return [], 0
        wanted = {(s, parse_data_type(d)): [(request.claim_from, request.claim_end)] for s, d in request.streams}
        retries = plan_wanted(self.storage, request.exchange, wanted, now_us=self.now(), limit=self.limit)
        retries = [ReplayRequest(r.exchange, r.symbols, r.data_types, r.start, r.claim_end, r.skip_before,
                                 request.attempt + 1, r.claim_start, r.anchored, r.known) for r in retries]
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (request.attempt - 1)) * random.uniform(0.5, 1.0)
        retry_after = getattr(failure, "retry_after", None)
        if retry_after:
            delay = max(delay, min(retry_after, 300.0))
        log.warning("%s incomplete (attempt %d): %s; retrying %d request(s) in %.1fs", request.describe(),
                    request.attempt, failure, len(retries), delay)
        return retries, delay

    # -- inline --------------------------------------------------------------------------------
    def _run_inline(self, requests, report, bar):
        client = ReplayClient(self.tardis_url, timeout=self.timeout)
        pending = [(0.0, r) for r in requests]
        progress_state = {}
        while pending and not self.stop_event.is_set():
            pending.sort(key=lambda item: item[0])
            due, request = pending.pop(0)
            wait = due - time.monotonic()
            if wait > 0 and self.stop_event.wait(wait):
                break
            report.attempts += 1
            report.requests += request.attempt == 1
            log.debug("replay %s", redact_options(replay_options(request.exchange, request.symbols,
                                                                 request.data_types, request.start,
                                                                 request.request_end, self.api_key)))
            failure = fetch_run(request, client, self.api_key, self.batch_rows,
                                lambda b, r=request: self._write(b, report, bar, progress_state, r),
                                self.stop_event.is_set)
            if failure is None:
                if self.on_run_finished:
                    self.on_run_finished(request, None)
                continue
            retries, delay = self._after_failure(request, failure, report)
            pending.extend((time.monotonic() + delay, r) for r in retries)
        report.bytes += client.bytes_received

    # -- worker processes --------------------------------------------------------------------
    def _run_pool(self, requests, report, bar):
        context = multiprocessing.get_context("spawn")
        tasks = context.Queue()
        results = context.Queue(maxsize=max(4, self.workers * 4))
        abort = context.Event()
        config = {"tardis_url": self.tardis_url, "api_key": self.api_key, "timeout": self.timeout,
                  "batch_rows": self.batch_rows}
        n_workers = min(self.workers, len(requests))
        processes = [context.Process(target=_worker_main, args=(tasks, results, abort, config),
                                     name="gapless-download-%d" % i, daemon=True) for i in range(n_workers)]
        for process in processes:
            process.start()
        in_flight = {}
        delayed = []
        next_id = 0
        progress_state = {}

        def submit(request):
            nonlocal next_id
            next_id += 1
            in_flight[next_id] = request
            report.attempts += 1
            report.requests += request.attempt == 1
            tasks.put((next_id, request))

        try:
            for request in requests:
                submit(request)
            while in_flight or delayed:
                if self.stop_event.is_set():
                    abort.set()
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
                    kind, task_id, payload = results.get(timeout=0.5)
                except queue.Empty:
                    if not any(p.is_alive() for p in processes):
                        raise GaplessError("all download workers died") from None
                    continue
                request = in_flight.get(task_id)
                if kind == "batch":
                    self._write(payload, report, bar, progress_state, request)
                    continue
                del in_flight[task_id]
                bytes_received, failure = payload
                report.bytes += bytes_received
                if failure is None:
                    if self.on_run_finished:
                        self.on_run_finished(request, None)
                    continue
                retries, delay = self._after_failure(request, failure, report)
                delayed.extend((time.monotonic() + delay, r) for r in retries)
        finally:
            abort.set()
            for _ in processes:
                tasks.put(None)
            deadline = time.monotonic() + 5.0
            # drain so workers blocked on a full result queue can exit
            while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
                try:
                    results.get(timeout=0.1)
                except queue.Empty:
                    pass
            for process in processes:
                process.join(timeout=max(0.0, deadline - time.monotonic()))
                if process.is_alive():
                    process.terminate()
                    process.join(1.0)
            tasks.close()
            results.close()


def _worker_main(tasks, results, abort, config):
    """Body of a download worker process: fetch and parse runs, send batches to the writer."""
    # the parent stops us through ``abort``; a Ctrl-C or SIGTERM for the process group must not kill a
    # worker halfway through a batch
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # parsing allocates millions of short-lived dicts and no reference cycles: the cyclic GC only costs
    gc.disable()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(processName)s %(message)s")
    install_secret_filter([config["api_key"]])
    client = ReplayClient(config["tardis_url"], timeout=tuple(config["timeout"]))
    while True:
        task = tasks.get()
        if task is None:
            return
        task_id, request = task
        before = client.bytes_received
        try:
            failure = fetch_run(request, client, config["api_key"], config["batch_rows"],
                                lambda batch: results.put(("batch", task_id, batch)), abort.is_set)
        except Exception as exc:  # a bug must not hang the writer: report it as a failed run
            logging.getLogger(__name__).exception("download worker failed on %s", request.describe())
            failure = ServerError("worker error: %s" % exc)
        results.put(("done", task_id, (client.bytes_received - before, failure)))


def _progress_bar(total):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: no bar without it
        return None
    return tqdm(total=total, unit="min", desc="replay", dynamic_ncols=True, leave=False)
