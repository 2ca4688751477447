"""Issue 6, faults 4-6 with the real service process (``python run.py``): SIGKILL at random moments,
SIGTERM under load, and a full disk under the SQLite database.
"""
import errno
import os
import random
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from gapless.download import Downloader
from gapless.stitch import series
from gapless.storage import Storage
from gapless.timeutil import US, parse_time_arg, to_us
from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig
from tests.invariants import (assert_coverage_truthful, assert_live_is_a_prefix_per_connection,
                              assert_nothing_invented, assert_status_matches_coverage, live_truth, replay_truth,
                              sqlite_coverage, stored_rows)
from tests.service_process import (ROOT, SYMBOLS, TYPES, kill_service, run_status, service_log, start_service,
                                   stop_service)
from tests.support import wait_until

# service processes killed, stopped and starved of disk in loops: the full suite only, not the fast lane
pytestmark = pytest.mark.slow

START = datetime(2026, 11, 25, 0, 20, tzinfo=timezone.utc)


def integrity(path):
    connection = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


# -- 4. SIGKILL at random moments, 20+ times ------------------------------------------------------------
def test_sigkill_at_random_moments_then_restart_heals_to_the_series_of_an_uninterrupted_run(tmp_path):
    rng = random.Random(20261125)
    clock = FakeClock(start=START, speed=30.0)
    path = tmp_path / "g.db"
    url = "sqlite:///%s" % path
    settings = {"GAPLESS_LOOKBACK": "6m"}
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=2.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=5)) as tm:
        kills = {"download": 0, "recording": 0}
        for i in range(20):
            requests, connections = len(tm.requests), len(tm.connections)
            if i % 2 == 0:  # the trades download streams slowly, so the kill lands inside it (not the one-minute
                tm.replay_faults.clear()  # trade-only probe of the history delay, which is over at once)
                tm.add_replay_fault("slow", delay_s=0.02, match=lambda o: "trade" in o[0]["dataTypes"]
                                    and o[0]["dataTypes"] != ["trade"])
            service = start_service(tm, url, tmp_path, **settings)
            try:
                if i % 2 == 0:  # while a replay request streams
                    assert tm.wait_for(lambda: any(r.fault == "slow" for r in tm.requests[requests:]), timeout=20), \
                        service_log(service)
                    time.sleep(rng.uniform(0.0, 0.3))
                    kills["download"] += 1
                else:  # while the recorder records
                    assert tm.wait_for(lambda: len(tm.connections) > connections and tm.connections[-1].sent,
                                       timeout=20), service_log(service)
                    time.sleep(rng.uniform(0.0, 1.5))
                    kills["recording"] += 1
                assert service.poll() is None, service_log(service)[-2000:]
            finally:
                kill_service(service)
            # after every kill: the database opens, is intact, and status says what coverage says
            assert integrity(path) == "ok"
            Storage(url, create=False).close()
            status = run_status(tm, url, tmp_path, **settings)
            assert_status_matches_coverage(status, sqlite_coverage(path))
        assert kills == {"download": 10, "recording": 10}
        tm.replay_faults.clear()
        cut_short = [r for r in tm.requests if r.fault == "slow" and not r.completed]
        assert len(cut_short) >= 5, "too few kills landed inside a download"
        # a last, undisturbed run heals everything
        service = start_service(tm, url, tmp_path, **settings)
        try:
            def gapless_status():
                status = run_status(tm, url, tmp_path, **settings)
                return status if all(s["gapless"] for s in status["streams"]) else None

            # the very status that said gapless gives the window: the clock runs at 30x, so a status read a moment
            # later has a window one minute longer, whose newest minute (the service started inside it) waits for
            # history (this test failed about one run in four that way)
            status = wait_until(gapless_status, timeout=90, interval=0.5, message="gapless after the kills")
        finally:
            code, _ = stop_service(service)
        assert code == 0, service_log(service)[-3000:]
        # (compared once the service stopped: while it runs, coverage grows between the two reads)
        assert_status_matches_coverage(run_status(tm, url, tmp_path, **settings), sqlite_coverage(path))
        window = parse_time_arg(status["window"]["start"].rstrip("Z")), parse_time_arg(status["window"]["end"].rstrip("Z"))
        store = Storage(url, create=False)
        try:
            # every frame of every connection: a prefix stored once; coverage only where rows are
            sizes = assert_live_is_a_prefix_per_connection(store, tm.connections)
            assert len(sizes) >= 11 and sum(n for n, _ in sizes) > 0
            assert assert_coverage_truthful(store, live_truth(tm.connections), "live") > 0
            trade_requests = [r for r in tm.requests if r.options and "trade" in r.options[0]["dataTypes"]]
            replay = replay_truth(tm, trade_requests)
            assert assert_coverage_truthful(store, replay, "replay") > 0
            assert not store.open_segments("live")
            healed = series(store, "deribit", SYMBOLS, TYPES, *window)
            first_replay = min(a for s in SYMBOLS for d in TYPES
                               for a, _ in store.covered("deribit", s, d, "replay"))
        finally:
            store.close()
        # the series of an uninterrupted run: a clean download of the same minutes, without any kill
        reference = Storage("sqlite:///%s" % (tmp_path / "reference.db"))
        report = Downloader(reference, tm.http_url, workers=0, progress=False).download(
            "deribit", SYMBOLS, TYPES, max(window[0], first_replay), window[1])
        assert report.complete
        expected = series(reference, "deribit", SYMBOLS, TYPES, *window, sources=("replay",))
        reference.close()
    compared = 0
    for key, frame in healed.items():
        assert not frame["missing"].any(), key
        both = (frame["source"] == "replay") & (expected[key]["source"] == "replay")
        compared += int(both.sum())
        pd.testing.assert_frame_equal(frame[both], expected[key][both], check_dtype=False, obj=str(key))
    assert compared >= len(healed) * 3, compared


# -- 5. SIGTERM during a large batch ---------------------------------------------------------------------
def test_sigterm_during_a_large_batch_exits_0_within_10s_and_loses_nothing_received(clock, tmp_path):
    with FakeTardisMachine(clock=clock, firehose=True, firehose_seconds=60,
                           availability_delay=timedelta(seconds=5)) as tm:
        path = tmp_path / "g.db"
        service = start_service(tm, "sqlite:///%s" % path, tmp_path, data_types=["quote"],
                                GAPLESS_LOOKBACK="5m")
        try:
            # quote frames as fast as the socket takes them: the recorder commits 5000-row batches
            assert tm.wait_for(lambda: tm.connections and tm.connections[0].sent_count > 150_000, timeout=60), \
                service_log(service)[-2000:]
            code, elapsed = stop_service(service, timeout=20)
        finally:
            kill_service(service)
        log = service_log(service)
        assert code == 0, log[-3000:]
        assert elapsed < 10, elapsed
        (connection,) = tm.connections
        store = Storage("sqlite:///%s" % path, create=False)
        try:
            timestamps = sorted(r[0] for r in store.db.execute_sql(
                "SELECT local_timestamp FROM book_snapshot_1 WHERE source = 'live'").fetchall())
            open_segments = store.open_segments("live")
            reasons = {r["end_reason"] for r in store.coverage_rows(source="live")}
        finally:
            store.close()
    # firehose frame i is stamped first + i µs: what was stored is exactly frames 0 .. n-1, each once
    n = len(timestamps)
    assert n > 50_000 and n <= connection.sent_count
    assert [t - timestamps[0] for t in timestamps] == list(range(n)), "stored live rows are not a prefix"
    assert not open_segments and reasons <= {"stop"}, reasons


# -- 6. the disk under the SQLite database fills up ---------------------------------------------------------
LAUNCHER = """
import resource, signal, sys
sys.path.insert(0, %(root)r)
limit = %(limit)r
if limit:  # fallback when the test cannot mount a small filesystem: a file size limit
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from gapless.cli import setup_logging
from gapless.config import load_settings
from gapless.service import Gapless
settings = load_settings()
setup_logging(settings.log_level)
# the service exactly as run.py builds it, with a recorder that gives up after 4 failed writes instead
# of 40 (~60 s of retries), to keep the test short
sys.exit(Gapless.from_settings(settings, recorder_options={"max_write_failures": 4}).run())
"""


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs (if mounting is impossible, mounted is False: the launcher limits the file size instead)."""
    directory = tmp_path / "disk"
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(directory)],
                             capture_output=True).returncode == 0
    try:
        yield directory, mounted
    finally:
        if mounted:
            if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def fill(directory):
    """Write a file until the filesystem is full; returns its size."""
    size = 0
    descriptor = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # unbuffered
    block = b"\0" * 65536
    try:
        while True:
            written = os.write(descriptor, block)
            size += written
            if written < len(block):
                block = block[written:]
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(descriptor)
    return size


def test_a_full_disk_stops_the_service_with_a_clear_error_and_keeps_what_was_stored(small_disk, tmp_path):
    """By design the service does not carry on without storage: the recorder retries its write a few times,
    dies, and the service exits non-zero so that systemd (Restart=on-failure) restarts it."""
    directory, mounted = small_disk
    path = directory / "g.db"
    url = "sqlite:///%s" % path
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER % {"root": str(ROOT), "limit": 0 if mounted else 6 << 20})
    types = ["quote", "trade"]
    # six minutes into the day: the initial download of quotes (from 00:00) is small
    clock = FakeClock(start=datetime(2026, 11, 25, 0, 6, tzinfo=timezone.utc))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=10.0, trade_rate=5.0),
                           availability_delay=timedelta(seconds=5)) as tm:
        service = start_service(tm, url, tmp_path, argv=[sys.executable, str(launcher)], data_types=types,
                                GAPLESS_LOOKBACK="3m")
        try:
            assert tm.wait_for(lambda: tm.connections and len(tm.connections[0].sent) > 400, timeout=60), \
                service_log(service)[-2000:]
            wait_until(lambda: any(r["source"] == "live" and r["data_type"] == "quote" for r in sqlite_coverage(path)),
                       timeout=30, message="live coverage committed")
            assert service.poll() is None, service_log(service)[-3000:]
            if mounted:
                fill(directory)
            code = service.wait(60)  # the recorder dies after its write retries; the service exits non-zero
        finally:
            kill_service(service)
        log = service_log(service)
        assert code not in (0, None), log[-3000:]
        assert "StorageError" in log and "the recorder thread died" in log, log[-3000:]
        # what was stored before is intact and readable, and coverage claims only stored rows
        assert integrity(path) == "ok"
        store = Storage(url, create=False)
        try:
            rows = stored_rows(store, "live")
            assert sum(len(v) for v in rows.values()) > 300
            assert_live_is_a_prefix_per_connection(store, tm.connections)
            assert assert_coverage_truthful(store, live_truth(tm.connections), "live") > 0
            replay = replay_truth(tm)
            assert_nothing_invented(store, replay, "replay")
            assert_coverage_truthful(store, replay, "replay")
        finally:
            store.close()
        # status still works on the full disk and agrees with coverage
        status = run_status(tm, url, tmp_path, data_types=types, GAPLESS_LOOKBACK="3m")
        assert_status_matches_coverage(status, sqlite_coverage(path))
        # once space is freed the real service resumes recording into the same database
        if mounted:
            os.unlink(directory / "filler")
        before = len(tm.connections)
        service = start_service(tm, url, tmp_path, data_types=types, GAPLESS_LOOKBACK="3m")
        try:
            assert tm.wait_for(lambda: len(tm.connections) > before and len(tm.connections[-1].sent) > 200,
                               timeout=60), service_log(service)[-3000:]
            wait_until(lambda: max((r["end"] for r in sqlite_coverage(path) if r["source"] == "live"), default=0)
                       > to_us(tm.connections[-1].opened_at) + US, timeout=30, message="new live coverage")
        finally:
            code, _ = stop_service(service)
        assert code == 0, service_log(service)[-3000:]
    # the error is clear: the one-line messages name the cause (SQLite: "database or disk is full"), not a
    # side effect of it
    failures = [line for line in log.splitlines() if "write failed (" in line or "initial download failed" in line
                or "the recorder thread died (" in line]
    assert failures, log[-3000:]
    unclear = [line for line in failures if "disk is full" not in line and "no space left" not in line.lower()]
    assert not unclear, "the error does not say the disk is full:\n" + "\n".join(unclear[:3])
