"""Download worker processes shared across runs (gapless.fetch_workers): what a later run stores, stale
results, the end of the pool, and a worker whose parent is killed."""
import os
import signal
import subprocess
import sys
import textwrap

import psutil

from gapless.download import Downloader
from gapless.fetch_workers import ProcessFetchers
from gapless.storage import Storage
from tests.service_process import ROOT
from tests.support import us, wait_until
from tests.test_download import ALL_TYPES, SYMBOLS, as_sets, stored_rows


def _downloader(store, tardis, fetchers=None, workers=1):
    return Downloader(store, tardis.http_url, progress=False, workers=workers, backoff_base=0.01, fetchers=fetchers)


def test_runs_on_shared_workers_store_what_runs_with_their_own_store_and_use_one_process(tardis, tmp_path):
    own = Storage("sqlite:///%s" % (tmp_path / "own.db"))
    shared = Storage("sqlite:///%s" % (tmp_path / "shared.db"))
    config = _downloader(shared, tardis).fetcher_config()
    fetchers = ProcessFetchers(config, 1, 8)
    try:
        pids = set()
        for start, end in (("00:02", "00:07"), ("00:07", "00:12"), ("00:00", "00:14")):
            for store, pool in ((own, None), (shared, fetchers)):
                report = _downloader(store, tardis, fetchers=pool).download(
                    "deribit", SYMBOLS, ALL_TYPES, us("2026-11-25T" + start), us("2026-11-25T" + end))
                assert report.complete
            pids |= {p.pid for p in fetchers.processes}
            assert not fetchers.closed and fetchers.alive()
        assert len(pids) == 1  # one worker served every run
        assert as_sets(stored_rows(own)) == as_sets(stored_rows(shared)) != {}
    finally:
        fetchers.close()
        own.close()
        shared.close()
    assert not fetchers.alive()


def test_a_result_of_an_earlier_runs_task_is_never_written_by_a_later_run(tardis, store):
    config = _downloader(store, tardis).fetcher_config()
    fetchers = ProcessFetchers(config, 1, 2)
    try:
        # a run that ended early left a result behind (its task id was taken from the same fetchers)
        stale_id = fetchers.next_task_id()
        fetchers.results.put(("done", stale_id, (0, None)))
        report = _downloader(store, tardis, fetchers=fetchers).download(
            "deribit", SYMBOLS, ["trade"], us("2026-11-25T00:02"), us("2026-11-25T00:05"))
        assert report.complete and report.finished == report.requests == 1
        assert {p.pid for p in fetchers.processes} and not fetchers.closed  # a clean run keeps them
    finally:
        fetchers.close()


def test_a_stopped_run_closes_the_shared_workers_and_the_next_run_starts_its_own(tardis, store):
    config = _downloader(store, tardis).fetcher_config()
    fetchers = ProcessFetchers(config, 1, 2)
    stopped = _downloader(store, tardis, fetchers=fetchers)
    stopped.stop_event.set()
    stopped.download("deribit", SYMBOLS, ["trade"], us("2026-11-25T00:02"), us("2026-11-25T00:05"))
    assert fetchers.closed and not fetchers.alive()  # told to abort: of no use to a later run
    report = _downloader(store, tardis, fetchers=fetchers).download(
        "deribit", SYMBOLS, ["trade"], us("2026-11-25T00:06"), us("2026-11-25T00:09"))
    assert report.complete and report.requests == 1 and report.rows_inserted > 0


PARENT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, %(root)r)
    from gapless.fetch_workers import ProcessFetchers, fetcher_config
    if __name__ == "__main__":
        fetchers = ProcessFetchers(fetcher_config("http://127.0.0.1:9"), 1, 1)
        print(fetchers.processes[0].pid, flush=True)
        time.sleep(600)
""")


def test_a_worker_ends_itself_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT % {"root": str(ROOT)})
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = psutil.Process(int(parent.stdout.readline()))
        assert worker.is_running()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, timeout=10,
                   message="the orphaned worker ended")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_an_unclosed_pool_does_not_hold_up_the_interpreters_exit(tmp_path):
    script = tmp_path / "forgets.py"
    script.write_text(PARENT.replace("time.sleep(600)", "pass") % {"root": str(ROOT)})
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    worker = int(done.stdout.split()[0])
    wait_until(lambda: not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE,
               timeout=10, message="the worker ended with the interpreter")


def test_a_service_keeps_one_download_worker_across_its_passes_and_ends_it_when_it_stops(tmp_path):
    from datetime import datetime, timedelta, timezone

    from gapless import Gapless
    from tests.fake_tardis import FakeTardisMachine, ManualClock, MarketConfig
    from tests.test_healing_state import RECORDER
    clock = ManualClock(datetime(2026, 11, 25, 0, 30, tzinfo=timezone.utc))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=2.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=5)) as tardis:
        _one_worker_across_passes(tmp_path, clock, tardis)


def _one_worker_across_passes(tmp_path, clock, tardis):
    from gapless import Gapless
    from tests.test_healing_state import RECORDER
    service = Gapless("deribit", SYMBOLS, ["trade", "quote_1m"], database_url="sqlite:///%s" % (tmp_path / "g.db"),
                      tardis_url=tardis.http_url, tardis_ws_url=tardis.ws_url, lookback="15m", history_delay="6m",
                      rebuild_interval="3600s", workers=1, now=clock.now_us, recorder_options=dict(RECORDER))
    me = psutil.Process()
    feed = service.feeds[0]
    pids, requests = [], 0
    service.start(initial_heal=False)  # the passes are the test's (the scheduler's next one is an hour away)
    try:
        for _ in range(4):
            report = service.download_history()
            assert report is not None and report.complete
            requests += report.requests
            pids.append(tuple(p.pid for p in feed._fetchers.processes))
            clock.advance(120)
        workers = [c for c in me.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
        assert [w.pid for w in workers] == list(pids[0])
    finally:
        service.stop()
    assert requests > 1 and len(set(pids)) == 1  # the same worker served every pass
    wait_until(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in workers), timeout=10,
               message="the download worker ended with the service")


def test_a_worker_whose_runs_end_in_errors_keeps_none_of_them(tardis, store):
    """A run that ends in an error line keeps its frame (its parser, its last lines) in a cycle through the
    exception's traceback. Workers run without the cyclic GC, and a service keeps its worker for good: in
    bench_chain the worker grew by 25 MB a pass (runs reaching past the history edge end refused). Each task is
    followed by a collection now: the worker's memory after 40 failed runs is what it was after 8."""
    from gapless.runs import ReplayRequest
    config = _downloader(store, tardis).fetcher_config()
    fetchers = ProcessFetchers(config, 1, 1)
    try:
        worker = psutil.Process(fetchers.processes[0].pid)
        request = ReplayRequest("deribit", tuple(SYMBOLS), ("quote", "trade"), us("2026-11-25T00:00"),
                                us("2026-11-25T00:18"))
        sizes = []
        for n in range(40):
            tardis.add_replay_fault("error_line", after_lines=3000)
            task = fetchers.next_task_id()
            fetchers.tasks.put((task, request))
            while True:
                kind, task_id, payload = fetchers.results.get(timeout=30)
                if kind == "done" and task_id == task:
                    assert payload[1] is not None  # the run did end in the error
                    break
            sizes.append(worker.memory_info().rss)
        grown = (sizes[-1] - sizes[7]) / 2 ** 20
        assert grown < 8, "the worker grew by %.1f MB over 32 failed runs" % grown
    finally:
        fetchers.close()
