"""Download worker processes: started from a light module, so a caller can start them before its own imports.

A worker is a spawned interpreter; it imports the parsing and HTTP code (:mod:`gapless.fetch`) itself, in
:func:`_worker_main`. This module imports nothing heavy: ``gapless download`` starts the workers as its first
step, and their start (about a quarter of a second) runs while the command imports, opens the database and
plans, instead of before the first request.
"""
import atexit
import gc
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time

DEFAULT_TIMEOUT = (5.0, 60.0)  # (connect, read) seconds for replay requests
DEFAULT_BATCH_ROWS = 5000


def fetcher_config(tardis_url, api_key=None, timeout=DEFAULT_TIMEOUT, batch_rows=DEFAULT_BATCH_ROWS):
    """What every fetcher needs to know (picklable: it goes to the worker processes)."""
    return {"tardis_url": tardis_url, "api_key": api_key, "timeout": timeout, "batch_rows": batch_rows}


def threads_per_worker(concurrency, workers):
    """Fetcher threads each of ``workers`` processes runs so that ``concurrency`` requests can be in flight."""
    return -(-concurrency // workers)


def pool_key(config, workers, threads):
    """What a pool of worker processes is started for: a pool of another key cannot serve the same runs."""
    return tuple(sorted(config.items())), workers, threads


class ProcessFetchers:
    """``workers`` spawned processes with ``threads`` fetcher threads each.

    Starting takes a while (a new interpreter imports the parsing code: about 0.3 s of CPU), so a caller that
    knows it will download can start them first thing and hand them to :class:`gapless.download.Downloader`
    (``fetchers=``): ``gapless download`` overlaps the start with its own imports and planning, a service's feed
    keeps them across its passes. Task ids are unique over the fetchers' life, so a result of a run that ended
    early can never be taken for one of a later run's. They are closed at the latest when the interpreter
    exits, and a worker whose parent died ends itself.
    """

    def __init__(self, config, workers, threads):
        self.key = pool_key(config, workers, threads)
        self.closed = False
        self._task_ids = itertools.count(1)
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
        # before multiprocessing's own exit handler (atexit runs the last registered first), which would join
        # the workers without a timeout: they ignore SIGTERM, so an unclosed pool would hang the exit
        atexit.register(self.close)

    def next_task_id(self):
        """A task id never used before by these fetchers."""
        return next(self._task_ids)

    def alive(self):
        """True while a worker process runs."""
        return any(p.is_alive() for p in self.processes)

    def close(self, timeout=5.0):
        """Stop the workers (after their current batch), join them, close the queues."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        close_fetchers(self, self.processes, timeout, stops=len(self.processes) * self.threads)
        for process in self.processes:
            if process.is_alive():  # stuck past the timeout; SIGTERM is ignored by design (see _worker_main)
                process.kill()
                process.join(1.0)
        self.tasks.close()
        self.results.close()


def close_fetchers(fetchers, runners, timeout, stops=None):
    """Stop fetcher threads or processes (after their current batch) and join them."""
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
    # parsing allocates millions of short-lived dicts: no cyclic GC while a task runs, one collection after each
    # (see _fetch_loop: a run that ends in an error keeps its frame, with its batch, in a cycle through the
    # exception's traceback; with the GC off for the worker's life, a service's worker grew by 25 MB a pass)
    gc.disable()
    _few_malloc_arenas()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(processName)s %(message)s")
    parent = multiprocessing.parent_process()
    if parent is not None:  # a parent killed outright (SIGKILL) never closes us: do not outlive it
        threading.Thread(target=_end_with, args=(parent,), name="gapless-parent-watch", daemon=True).start()
    from .fetch import _fetch_loop  # the heavy imports (parsing, HTTP) happen here, in the worker
    from .redaction import install_secret_filter
    from .replay import ReplayClient
    from .silence_memory import CheckAnswers

    # the feed's CheckAnswers cannot cross into a process: each worker keeps its own, for as long as it lives
    # (a feed keeps its workers across passes), so a check is not asked again by every pass (seed 77014)
    config = dict(config, answers=config.get("answers") or CheckAnswers(), collect_after_task=True)

    install_secret_filter([config["api_key"]])
    runners = [threading.Thread(target=_fetch_loop, name="gapless-fetch-%d" % i, args=(
        tasks, results, abort, config, ReplayClient(config["tardis_url"], timeout=tuple(config["timeout"]))))
        for i in range(threads)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    # every result is handed to the queue's pipe, then the process ends without the interpreter's teardown
    # (a tenth of a second of freeing modules nobody will use again, at the end of every download)
    results.close()
    results.join_thread()
    logging.shutdown()
    os._exit(0)


def _few_malloc_arenas(arenas=2):
    """Cap glibc's malloc arenas before the fetcher threads start. Each thread otherwise gets an arena of its own
    that keeps what it once held: a worker of 8 threads sat at 155 MB after ten one-minute passes of 100
    options, 83 MB with one arena (the GIL serialises the threads' allocations anyway). Not glibc: nothing."""
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(-8, arenas))  # M_ARENA_MAX (glibc's malloc.h)


def _end_with(parent):
    parent.join()
    os._exit(0)
