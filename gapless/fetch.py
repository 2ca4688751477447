"""Fetching replay runs concurrently: threads in the calling process, or worker processes with threads.

tardis-machine answers one request at a time per core at ~20-30k lines/s: concurrency across requests
(day slices) is what pays, so several requests are in flight at once (``concurrency``). Fetching and
parsing run in *fetchers*; the one writer (the caller, see :class:`gapless.download.Downloader`) takes
``("batch", task, Batch)`` and ``("done", task, (bytes, failure))`` messages from a results queue.

* :class:`ThreadFetchers`: threads in the calling process (no child processes in a library user's
  process; parsing shares the GIL, which is fine while the server, not parsing, is the limit);
* :class:`~gapless.fetch_workers.ProcessFetchers`: ``workers`` spawned processes, each running
  ``concurrency / workers`` threads (parsing on several cores).
"""
import gc
import itertools
import logging
import queue
import threading

from .exceptions import ServerError, Stopped
from .fetch_workers import ProcessFetchers, close_fetchers  # noqa: F401 (ProcessFetchers: imported from here too)
from .ingest import RunParser
from .replay import ReplayClient, replay_options
from .silence import SilenceCheck

log = logging.getLogger(__name__)


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
        del failure
        if config.get("collect_after_task"):  # a worker process, whose cyclic GC is off (see fetch_workers)
            gc.collect()


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
        self._task_ids = itertools.count(1)

    def next_task_id(self):
        """A task id never used before by these fetchers."""
        return next(self._task_ids)

    def alive(self):
        """True while a fetcher can still answer."""
        return any(t.is_alive() for t in self.threads)

    def close(self, timeout=5.0):
        """Stop the fetchers (after their current batch) and join them."""
        close_fetchers(self, self.threads, timeout)
