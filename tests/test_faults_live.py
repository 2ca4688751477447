"""Issue 6, faults 3, 7 and 8: repeated exchange drops, a long-lived reader, and a run across midnight.

These run the recorder / the service object in this process (so its threads, sockets and memory can
be counted) against the fake tardis-machine on a fast clock.
"""
import logging
import os
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone

import orjson
import pandas as pd
import psutil
import pytest

from gapless.download import Downloader
from gapless.recorder import Recorder
from gapless.stitch import series
from gapless.status import status_report
from gapless.storage import Storage
from gapless.timeutil import MINUTE_US, US, ceil_minute, floor_minute, iso, parse_timestamp_us
from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig
from tests.invariants import (assert_coverage_truthful, assert_live_is_a_prefix_per_connection,
                              assert_nothing_invented, live_truth, replay_truth)
from tests.support import make_gapless, us, wait_until

SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def rss_mb():
    return psutil.Process().memory_info().rss / 2 ** 20


# -- 3. the exchange side drops again and again -------------------------------------------------------
@pytest.mark.slow
def test_repeated_exchange_drops_keep_one_connection_leak_nothing_and_every_hole_is_reported_then_healed(tmp_path):
    speed, drops, types = 6.0, 7, ["quote", "trade", "quote_1m"]
    clock = FakeClock(start=datetime(2026, 11, 25, 0, 20, tzinfo=timezone.utc), speed=speed)
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=5.0, trade_rate=2.0),
                           availability_delay=timedelta(seconds=5)) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        threads_before, fds_before = threading.active_count(), fd_count()
        recorder = Recorder(store, tm.ws_url, "deribit", SYMBOLS, types, clock=lambda: tm.clock.now_us() / 1e6,
                            backoff_base=0.05, backoff_cap=0.5)
        recorder.start()
        try:
            wait_until(lambda: recorder.health()["rows_stored"] > 100, timeout=20, message="recording")
            warm = (threading.active_count(), fd_count(), rss_mb())
            samples = []
            for i in range(drops):
                dropped_at = tm.clock.now_us()
                tm.exchange_drop(0.05)
                wait_until(lambda: recorder.health()["disconnects"] == i + 1, timeout=10, message="drop %d" % i)
                # about two seconds of data after each drop, then the next one
                wait_until(lambda: (recorder.health()["last_message_us"] or 0) > dropped_at + 2 * speed * US,
                           timeout=10, message="data after drop %d" % i)
                samples.append((threading.active_count(), fd_count(), rss_mb()))
            health = recorder.health()
        finally:
            assert recorder.stop(5.0)
        ended_at = tm.clock.now_us()
        tm.wait_for(lambda: all(c.closed_at is not None for c in tm.connections), timeout=5)
        wait_until(lambda: threading.active_count() <= threads_before, timeout=5, message="threads back to before")
        # the exchange connection dropped; the websocket to tardis-machine never did: no reconnect at all
        assert health["disconnects"] == drops
        assert health["connections"] == 1 and health["reconnects"] == 0 and len(tm.connections) == 1
        assert health["write_failures"] == 0 and recorder.error is None
        assert max(s[0] for s in samples) <= warm[0], samples
        assert max(s[1] for s in samples) <= warm[1] + 2, samples
        assert samples[-1][2] - warm[2] < 25, "memory grew from %.0f MB to %.0f MB" % (warm[2], samples[-1][2])
        assert fd_count() <= fds_before + 3  # at most this thread's SQLite files
        # one live segment per exchange connection, each ended by its disconnect message
        for symbol in SYMBOLS:
            segments = sorted((r for r in store.coverage_rows(source="live") if r["symbol"] == symbol
                               and r["data_type"] == "quote"), key=lambda r: r["start"])
            assert len(segments) == drops + 1, [(iso(r["start"]), iso(r["end"]), r["end_reason"]) for r in segments]
            assert [r["end_reason"] for r in segments] == ["disconnect"] * drops + ["stop"]
        sizes = assert_live_is_a_prefix_per_connection(store, tm.connections)
        assert sizes[0][0] > 500
        assert assert_coverage_truthful(store, live_truth(tm.connections), "live") > 0
        # every hole is reported: the minutes with a drop are missing in status
        disconnects = [parse_timestamp_us(m["localTimestamp"]) for m in map(orjson.loads,
                       tm.connections[0].sent) if m["type"] == "disconnect"]
        report = status_report(store, [("deribit", SYMBOLS, types)], 10 * MINUTE_US, {"deribit": {"delay": 10 * US}},
                               ended_at)
        for stream in report["streams"]:
            missing = set()
            for gap in stream["gaps"]:
                a = pd.Timestamp(gap["start"])
                missing |= {iso(int(t.value // 1000)) for t in pd.date_range(a, pd.Timestamp(gap["end"]),
                                                                             freq="1min", inclusive="left")}
            for at in disconnects:
                if floor_minute(at) < us(report["window"]["end"].rstrip("Z")):
                    assert iso(floor_minute(at)) in missing, (stream["symbol"], stream["data_type"], iso(at))
        # ... and healed by replay
        # from the minute of the first drop (a hole minute) to a minute history has: at least one minute
        start = floor_minute(min(disconnects))
        wait_until(lambda: tm.clock.now_us() >= start + MINUTE_US + 10 * US, timeout=20, message="a whole minute")
        end = floor_minute(tm.clock.now_us() - 10 * US)
        report = Downloader(store, tm.http_url, workers=0, progress=False).download("deribit", SYMBOLS, types,
                                                                                  start - MINUTE_US, end)
        assert report.complete
        assert_nothing_invented(store, replay_truth(tm), "replay")
        frames = series(store, "deribit", SYMBOLS, types, start, end)
        for key, frame in frames.items():
            assert len(frame) >= 1 and not frame["missing"].any(), key
            assert set(frame["source"]) == {"replay"}, key  # no minute with a drop was wholly live
        store.close()


@pytest.mark.slow
def test_refused_reconnects_back_off_and_leave_no_socket_or_thread_behind(tardis, tmp_path):
    store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
    recorder = Recorder(store, tardis.ws_url, "deribit", SYMBOLS, ["trade", "quote"],
                        clock=lambda: tardis.clock.now_us() / 1e6, backoff_base=0.05, backoff_cap=0.5)
    with recorder:
        wait_until(lambda: recorder.health()["rows_stored"] > 5, timeout=20, message="recording")
        threads, fds = threading.active_count(), fd_count()
        refused = 8
        tardis.refuse_connections(refused)
        began = time.monotonic()
        tardis.drop_clients("reset")
        peak = []
        wait_until(lambda: peak.append((threading.active_count(), fd_count())) or len(tardis.connections) == 2,
                   timeout=30, message="reconnected after the refusals")
        elapsed = time.monotonic() - began
        wait_until(lambda: recorder.health()["rows_stored"] > 10, message="recording again")
        health = recorder.health()
    assert health["reconnects"] == refused + 1
    # capped exponential backoff with jitter: at least half of 0.05, 0.1, 0.2, 0.4, 0.5, 0.5 ... seconds
    minimum = sum(0.5 * min(0.5, 0.05 * 2 ** k) for k in range(refused))
    assert elapsed >= minimum, (elapsed, minimum)
    assert max(t for t, _ in peak) <= threads + 1 and max(f for _, f in peak) <= fds + 2, (threads, fds, peak[-5:])
    store.close()


# -- 7. a reader holds a long read transaction while the recorder writes -----------------------------
class _Reader:
    """A foreign client with an open read transaction (BEGIN; SELECT ...; and nothing else)."""

    def __init__(self, database_url):
        if database_url.startswith("sqlite:///"):
            self.connection = sqlite3.connect(database_url[len("sqlite:///"):], isolation_level=None, timeout=1)
            self.connection.execute("BEGIN")
        else:
            import psycopg
            self.connection = psycopg.connect(database_url.replace("postgresql://", "postgresql://", 1),
                                              autocommit=True)
            self.connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")

    def count(self, table):
        return self.connection.execute('SELECT count(*) FROM "%s"' % table).fetchone()[0]

    def close(self):
        try:
            self.connection.execute("ROLLBACK")
        finally:
            self.connection.close()


@pytest.mark.slow
def test_a_long_read_transaction_never_makes_the_recorder_fail_or_fall_behind(database_url, caplog):
    clock = FakeClock(start=datetime(2026, 11, 25, 0, 20, tzinfo=timezone.utc), speed=10.0)
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=20.0, trade_rate=5.0),
                           availability_delay=timedelta(seconds=5)) as tm, \
            caplog.at_level(logging.WARNING, logger="gapless"):
        gapless = make_gapless(database_url, tm, ["quote", "trade", "quote_1m"])
        with gapless:
            recorder = gapless.recorder
            wait_until(lambda: recorder.health()["rows_stored"] > 200 and gapless.last_rebuild is not None,
                       timeout=30, message="recording and rebuilding")
            reader = _Reader(database_url)
            try:
                seen = reader.count("trade")
                rebuilds = []
                for _ in range(6):  # about six seconds of writing while the transaction stays open
                    stored, rebuild = recorder.health()["rows_stored"], gapless.last_rebuild
                    wait_until(lambda: recorder.health()["rows_stored"] > stored + 100, timeout=10,
                               message="rows keep growing")
                    wait_until(lambda: gapless.last_rebuild is not rebuild, timeout=10, message="a new rebuild")
                    rebuilds.append(gapless.last_rebuild)
                assert reader.count("trade") == seen  # the reader's snapshot is stable the whole time
            finally:
                reader.close()
            health = recorder.health()
            heal_error = gapless.heal_error
        store = Storage(database_url, create=False)
        total = store.count_rows("trade")
        store.close()
    assert health["write_failures"] == 0 and health["error"] is None, health
    assert heal_error is None, heal_error
    assert health["commit_delay_p99"] < 2.0, health  # seconds from receipt to commit: it kept up
    assert total > seen
    assert not [r.getMessage() for r in caplog.records if "locked" in r.getMessage().lower()]


# -- 8. running across midnight --------------------------------------------------------------------------
@pytest.mark.slow
def test_running_across_midnight_leaves_no_gap_at_the_day_boundary(database_url, tmp_path):
    clock = FakeClock(start=datetime(2026, 11, 25, 23, 58, 30, tzinfo=timezone.utc), speed=30.0)
    types = ["quote_1m", "trade", "trade_bar_1m"]
    first, last = us("2026-11-25T23:52"), us("2026-11-26T00:03")
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=2.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=5)) as tm:
        # the double generates a day in order: build 2026-11-25 before the clock matters (not part of the test)
        tm.expected_replay({"exchange": "deribit", "symbols": SYMBOLS, "dataTypes": ["quote_1m"],
                            "from": "2026-11-25T23:50:00Z", "to": "2026-11-25T23:58:00Z"})
        gapless = make_gapless(database_url, tm, types)
        # 23:58 (the recording began at 23:58:30) and 23:59 (its quote_1m sample is stamped 00:00:00 of the next
        # day) can only come from history
        boundary = pd.DatetimeIndex(["2026-11-25T23:58", "2026-11-25T23:59"], tz="UTC")
        with gapless:
            def healed():
                # no minute missing, and history up to the day boundary
                frames = gapless.series(first, last)
                return all(not f["missing"].any() and (f.loc[boundary, "source"] == "replay").all()
                           for f in frames.values()) and frames
            frames = wait_until(healed, timeout=60, interval=0.5, message="healed across the day boundary")
            # (at 30x a commit every 0.25 s lags the 10 s settle margin: the newest minute may be open briefly)
            wait_until(lambda: all(not s["gaps"] for s in gapless.status()["streams"]), timeout=30, interval=0.5,
                       message="status without gaps")
        for key, frame in frames.items():
            assert len(frame) == 11 and not frame["missing"].any(), key
            assert set(frame["source"]) <= {"replay", "live"}, key
            value = "bid_price" if key[1] == "quote_1m" else "close"
            assert frame[value].notna().all(), key
        # the book-derived type is only ever asked from 00:00 of a day (the day's only initial snapshot)
        quote_starts = {r.from_.strftime("%H:%M") for r in tm.requests
                        if r.options and "quote_1m" in r.options[0]["dataTypes"]}
        assert quote_starts == {"00:00"}, quote_starts
        # the stitched series equals a clean download of the same minutes
        reference = Storage("sqlite:///%s" % (tmp_path / "reference.db"))
        report = Downloader(reference, tm.http_url, workers=0, progress=False).download(
            "deribit", SYMBOLS, types, first, last)
        assert report.complete
        expected = series(reference, "deribit", SYMBOLS, types, first, last, sources=("replay",))
        reference.close()
    for key, frame in frames.items():
        replay = frame["source"] == "replay"
        assert replay.sum() >= 8, key  # 23:52 .. 23:59 at least
        pd.testing.assert_frame_equal(frame[replay], expected[key][replay], check_dtype=False, obj=str(key))
