"""Fetching replay runs concurrently: threads in the calling process, or worker processes with threads.

tardis-machine answers one request at a time per core at ~20-30k lines/s: concurrency across requests
(day slices) is what pays, so several requests are in flight at once (``concurrency``). Fetching and
parsing run in *fetchers*; the one writer (the caller, see :class:`gapless.download.Downloader`) takes
``("batch", task, Batch)`` and ``("done", task, (bytes, failure))`` messages from a results queue.

* :class:`ThreadFetchers`: threads in the calling process (no child processes in a library user's
  process; parsing shares the GIL, which is fine while the server, not parsing, is the limit);
* :class:`ProcessFetchers`: ``workers`` spawned processes, each running ``concurrency / workers`` threads
  (parsing on several cores).
"""
import gc
import logging
import multiprocessing
import queue
import signal
import threading

from .exceptions import GaplessError, ServerError
from .ingest import RunParser
from .redaction import install_secret_filter
from .replay import ReplayClient, replay_options
from .silence import SilenceCheck

log = logging.getLogger(__name__)


class Stopped(GaplessError):
    """The download was asked to stop."""


def fetch_run(request, client, api_key, batch_rows, emit, should_stop=lambda: False, answers=None):
    """Run one replay request: stream, parse, and ``emit`` each :class:`~gapless.ingest.Batch`.

    Returns ``None`` when the run completed, else the exception that ended it (the batches emitted
    before are valid: their coverage claims only what they contain).
    """
    parser = RunParser(request, batch_rows=batch_rows)
    options = replay_options(request.exchange, request.symbols, request.data_types, request.start,
                             request.request_end, api_key, fresh="fresh" if request.fresh else None)
    # silent minutes are claimed only once a fresh filter set confirms them (see gapless.silence)
    emit = _vetted(SilenceCheck(request, client, api_key, answers), emit)
    complete = False
    failure = None
    try:
        for lines in client.stream_lines(options):
            for batch in parser.feed(lines):
                emit(batch)
            if should_stop():
                failure = Stopped("stopped")
                break
        else:
            complete = True
    except ServerError as exc:
        failure = exc
    # refused past where history is expected to end: that is where it ends (any other error line is a fault)
    final = parser.finish(complete, refused=getattr(failure, "refused", False) and request.past_edge)
    if final.rows or final.claims or final.lines or final.unclaimed:
        emit(final)
    if failure is not None:
        # how far this run got (after the last flush): the history horizon learns from refusals
        failure.delivered_until = parser.last_arrival if parser.has_data else None
    return failure


def _vetted(check, emit):
    def vetted(batch):
        emit(check.vet(batch))
    return vetted


def _fetch_loop(tasks, results, abort, config, client):
    """Take tasks until a ``None``; fetch each and report its batches and its end."""
    while True:
        task = tasks.get()
        if task is None:
            return
        task_id, request = task
        before = client.bytes_received
        try:
            failure = fetch_run(request, client, config["api_key"], config["batch_rows"],
                                lambda batch: results.put(("batch", task_id, batch)), abort.is_set,
                                answers=config.get("answers"))
        except Exception as exc:  # a bug must not hang the writer: report it as a failed run
            log.exception("download fetcher failed on %s", request.describe())
            failure = ServerError("fetcher error: %s" % exc)
        results.put(("done", task_id, (client.bytes_received - before, failure)))


class ThreadFetchers:
    """``concurrency`` threads in this process."""

    def __init__(self, config, concurrency):
        self.tasks = queue.Queue()
        self.results = queue.Queue(maxsize=max(4, concurrency * 4))
        self.abort = threading.Event()
        self.threads = [threading.Thread(target=_fetch_loop, name="gapless-fetch-%d" % i, daemon=True, args=(
            self.tasks, self.results, self.abort, config, ReplayClient(config["tardis_url"], tuple(config["timeout"]))))
            for i in range(concurrency)]
        for thread in self.threads:
            thread.start()

    def alive(self):
        """True while a fetcher can still answer."""
        return any(t.is_alive() for t in self.threads)

    def close(self, timeout=5.0):
        """Stop the fetchers (after their current batch) and join them."""
        _close(self, self.threads, timeout)


class ProcessFetchers:
    """``workers`` spawned processes with ``threads`` fetcher threads each."""

    def __init__(self, config, workers, threads):
        context = multiprocessing.get_context("spawn")
        self.tasks = context.Queue()
        self.results = context.Queue(maxsize=max(4, workers * threads * 4))
        self.abort = context.Event()
        self.processes = [context.Process(target=_worker_main, args=(self.tasks, self.results, self.abort, config,
                                                                    threads),
                                          name="gapless-download-%d" % i, daemon=True) for i in range(workers)]
        for process in self.processes:
            process.start()
        self.threads = threads

    def alive(self):
        """True while a worker process runs."""
        return any(p.is_alive() for p in self.processes)

    def close(self, timeout=5.0):
        """Stop the workers (after their current batch), join them, close the queues."""
        _close(self, self.processes, timeout, stops=len(self.processes) * self.threads)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(1.0)
        self.tasks.close()
        self.results.close()


def _close(fetchers, runners, timeout, stops=None):
    import time
    fetchers.abort.set()
    for _ in range(stops or len(runners)):
        fetchers.tasks.put(None)
    deadline = time.monotonic() + timeout
    # drain, so a fetcher blocked on a full result queue can finish; joined in short turns, so a pass whose
    # fetchers are already idle ends at once instead of waiting out a blocking get
    while any(r.is_alive() for r in runners) and time.monotonic() < deadline:
        try:
            while True:
                fetchers.results.get_nowait()
        except queue.Empty:
            pass
        for runner in runners:
            runner.join(timeout=0.005)
    for runner in runners:
        runner.join(timeout=max(0.0, deadline - time.monotonic()))


def _worker_main(tasks, results, abort, config, threads):
    """Body of a download worker process: ``threads`` fetchers sending batches to the writer."""
    # the parent stops us through ``abort``; a Ctrl-C or SIGTERM for the process group must not kill a
    # worker halfway through a batch
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # parsing allocates millions of short-lived dicts and no reference cycles: the cyclic GC only costs
    gc.disable()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(processName)s %(message)s")
    install_secret_filter([config["api_key"]])
    runners = [threading.Thread(target=_fetch_loop, name="gapless-fetch-%d" % i, args=(
        tasks, results, abort, config, ReplayClient(config["tardis_url"], timeout=tuple(config["timeout"]))))
        for i in range(threads)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
