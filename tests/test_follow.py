"""Following the published series (issue 18): backlog, caught_up, new and corrected minutes, resume, the command.

The service runs on the double's fast clock (30x real time) with history 90 s behind, so every example sees
new live minutes and live minutes corrected (upgraded) to replay.
"""
import os
import random
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

import gapless

from gapless.cli import main
from gapless.follower import CaughtUp, Follower
from gapless.sequence import read_published_seq
from gapless.storage import Storage
from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig
from tests.follow_support import FollowerCopy, follower, published_copy
from tests.support import make_gapless, wait_until

ROOT = Path(__file__).resolve().parent.parent
TYPES = ["quote_1m", "trade_bar_1m", "trade"]
START = datetime(2026, 11, 25, 0, 20, tzinfo=timezone.utc)


@pytest.fixture
def fast_tardis():
    """The double on a clock 30x faster than real time (a minute every two seconds)."""
    with FakeTardisMachine(clock=FakeClock(start=START, speed=30.0), market=MarketConfig(book_rate=2.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=5)) as machine:
        yield machine


def run_service_until(gapless, condition, timeout=60, message="condition"):
    with gapless:
        wait_until(condition, timeout=timeout, message=message)


def settle(copies, storage, timeout=20):
    """Wait until every copy has consumed everything published (the service has stopped)."""
    newest = read_published_seq(storage)
    wait_until(lambda: all((c.last_seq or 0) >= newest for c in copies), timeout=timeout,
               message="followers caught up with seq %d" % newest)


def test_a_follower_gets_the_backlog_then_new_and_corrected_minutes_and_its_copy_equals_the_published_series(
        fast_tardis, database_url):
    fast_tardis.availability_delay = timedelta(seconds=90)
    gapless = make_gapless(database_url, fast_tardis, TYPES, symbols=["BTC-PERPETUAL"])
    streams = gapless.streams
    stop = threading.Event()
    copy, resumed = FollowerCopy(), FollowerCopy()
    rng = random.Random(7)
    kills = []

    def killed_and_resumed():
        """A second follower that is stopped at random points and resumed from the last seq it saw."""
        position = None
        while not stop.is_set():
            if position is not None:
                resumed.resume_from(position)
            reader = follower(gapless.storage, streams, since=gapless.window()[0] if position is None else None,
                              resume=position, stop=stop)
            budget = rng.randint(1, 40)
            for event in reader:
                resumed.take(event)
                if isinstance(event, CaughtUp) or resumed.caught_up is not None:
                    position = resumed.last_seq
                    budget -= 1
                if budget <= 0 and resumed.caught_up is not None:
                    kills.append(position)
                    break
            reader.close()

    with gapless:
        wait_until(lambda: gapless.last_rebuild is not None, timeout=20, message="first pass")
        copy.run(follower(gapless.storage, streams, since=gapless.window()[0], stop=stop))
        second = threading.Thread(target=killed_and_resumed, daemon=True)
        second.start()
        # new live minutes, and live minutes upgraded to replay (corrections: a higher revision)
        wait_until(lambda: copy.caught_up is not None and any(e.revision >= 1 for e in copy.events)
                   and sum(1 for e in copy.events if e.source == "live" and e.revision == 0) >= 3
                   and len(kills) >= 2, timeout=60, message="new live minutes, corrections and two resumes")
    store = Storage(database_url, create=False)
    try:
        settle([copy, resumed], store)
        stop.set()
        second.join(10)
        published = published_copy(store)
    finally:
        store.close()
    assert not copy.problems, copy.problems[:5]
    assert not resumed.problems, resumed.problems[:5]
    assert copy.error is None and len(kills) >= 2, (copy.error, kills)
    assert not copy.differences(published), copy.differences(published)[:5]
    # the resumed follower started at the same window start: killed and resumed, it has exactly the same
    assert not resumed.differences(published), resumed.differences(published)[:5]
    corrected = [e for e in copy.events if e.revision >= 1]
    assert any(e.source == "replay" for e in corrected)


def test_resume_delivers_exactly_what_was_published_or_changed_after_the_seq(tmp_path, fast_tardis):
    url = "sqlite:///%s" % (tmp_path / "g.db")
    fast_tardis.availability_delay = timedelta(seconds=90)
    service = make_gapless(url, fast_tardis, ["trade_bar_1m"], symbols=["BTC-PERPETUAL"])
    run_service_until(service, lambda: service.last_rebuild is not None and read_published_seq(service.storage) > 40,
                      message="some publishing")
    store = Storage(url, create=False)
    try:
        published = published_copy(store)
        newest = read_published_seq(store)
        for position in (0, newest // 3, newest // 2, newest - 1, newest):
            events = list(Follower(store, None, resume=position, timeout=0.3, poll=0.05))
            minutes = [e for e in events if not isinstance(e, CaughtUp)]
            assert isinstance(events[-1], CaughtUp) and events[-1].seq == newest
            want = sorted(v[0] for v in published.values() if v[0] > position)
            assert [e.seq for e in minutes] == want, position
    finally:
        store.close()
    # the library's reader-only form, as legacy code calls it (README): the backlog from a text time
    events = list(gapless.follow("deribit:BTC-PERPETUAL:trade_bar_1m", database_url=url, since="2026-11-25T00:00",
                                 timeout=0.3))
    assert isinstance(events[-1], gapless.CaughtUp) and events[-1].seq == newest
    assert sorted((e.minute.value // 1000, e.seq) for e in events[:-1]) == sorted(
        (key[3], v[0]) for key, v in published.items())
    assert all(isinstance(e, gapless.MinuteEvent) and e.minute.tz is not None for e in events[:-1])


def test_a_follower_started_before_anything_is_published_gets_everything(tmp_path, fast_tardis):
    url = "sqlite:///%s" % (tmp_path / "g.db")
    gapless = make_gapless(url, fast_tardis, ["trade"], symbols=["BTC-PERPETUAL"])
    store = Storage(url, create=False)  # the service made the schema; nothing is published yet
    copy = FollowerCopy()
    stop = threading.Event()
    try:
        assert read_published_seq(store) == 0
        copy.run(follower(store, gapless.streams, since=gapless.window()[0], stop=stop))
        wait_until(lambda: copy.caught_up == 0, message="caught up at once with nothing")
        run_service_until(gapless, lambda: len(copy.events) >= 5, message="events")
        settle([copy], store)
        assert not copy.problems and not copy.differences(published_copy(store))
    finally:
        stop.set()
        store.close()


def test_the_command_writes_json_lines_ends_quietly_on_a_closed_pipe_and_refuses_bad_input(
        tmp_path, fast_tardis, isolated_cli, capsys):
    db = tmp_path / "g.db"
    url = "sqlite:///%s" % db
    gapless = make_gapless(url, fast_tardis, ["trade_bar_1m"], symbols=["BTC-PERPETUAL"])
    run_service_until(gapless, lambda: read_published_seq(gapless.storage) > 10, message="publishing")
    flags = ["--database", url, "--exchange", "deribit", "--symbols", "BTC-PERPETUAL", "--data-types", "trade_bar_1m"]
    # a consumer that reads five lines and closes the pipe
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    pipe = subprocess.run("%s %s follow %s --since 2026-11-25T00:00 | head -5" % (
        sys.executable, ROOT / "run.py", " ".join(flags)), shell=True, capture_output=True, text=True, timeout=60,
        env=env, cwd=tmp_path, executable="/bin/bash")
    lines = [orjson.loads(line) for line in pipe.stdout.splitlines()]
    assert len(lines) == 5 and "Traceback" not in pipe.stderr and "BrokenPipe" not in pipe.stderr, pipe.stderr
    assert [line["minute"] for line in lines] == sorted(line["minute"] for line in lines)
    assert set(lines[0]) >= {"seq", "exchange", "symbol", "data_type", "minute", "source", "revision", "volume"}
    # exit status of the follower itself (not head's): PIPESTATUS
    status = subprocess.run("%s %s follow %s --since 2026-11-25T00:00 | head -2 >/dev/null; "
                            "exit ${PIPESTATUS[0]}" % (sys.executable, ROOT / "run.py", " ".join(flags)),
                            shell=True, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
                            executable="/bin/bash")
    assert status.returncode == 0, status.stderr
    # bad input: exit 2, one line naming what is wrong
    for argv, text in ((flags, "--since"), (flags + ["--resume", "x"], "--resume"),
                       (flags + ["--since", "yesterday-ish"], "--since"),
                       (["--database", "sqlite:///%s" % (tmp_path / "none.db"), "--exchange", "deribit", "--symbols",
                         "BTC-PERPETUAL", "--data-types", "trade_bar_1m", "--since", "2026-11-25"], "does not exist"),
                       (["--database", url, "--exchange", "deribit", "--symbols", "ETH-PERPETUAL", "--data-types",
                         "trade_bar_1m", "--since", "2026-11-25"], "ETH-PERPETUAL")):
        assert main(["follow"] + argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert text in err[-1], (argv, err)


def test_the_command_in_csv_and_sigterm_ends_it_with_exit_0(tmp_path, fast_tardis):
    url = "sqlite:///%s" % (tmp_path / "g.db")
    gapless = make_gapless(url, fast_tardis, ["trade_bar_1m"], symbols=["BTC-PERPETUAL"])
    run_service_until(gapless, lambda: read_published_seq(gapless.storage) > 3, message="publishing")
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "follow", "--database", url, "--exchange",
                                "deribit", "--symbols", "BTC-PERPETUAL", "--data-types", "trade_bar_1m", "--since",
                                "2026-11-25T00:00", "--format", "csv"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    header = process.stdout.readline().strip().split(",")
    assert header[:9] == ["event", "seq", "exchange", "symbol", "data_type", "minute", "source", "revision", "reason"]
    assert "vwap" in header
    while True:
        row = process.stdout.readline()
        assert row, process.stderr.read()
        if row.startswith("caught_up,"):
            break
    process.terminate()
    assert process.wait(20) == 0
    assert "Traceback" not in process.stderr.read()


@pytest.mark.slow
def test_a_follower_in_another_process_is_woken_by_postgresql_notify(fast_tardis, pg_database, tmp_path):
    from tests.conftest import pg_schema_url
    _, url = pg_schema_url(pg_database)
    gapless = make_gapless(url, fast_tardis, ["trade_bar_1m", "trade"], symbols=["BTC-PERPETUAL"])
    seen = {}  # seq -> when it became visible in the database (watched every 20 ms)
    stop = threading.Event()

    def watch():
        store = Storage(url, create=False)
        try:
            while not stop.wait(0.02):
                seen.setdefault(read_published_seq(store), time.monotonic())
        finally:
            store.close()
    with gapless:
        wait_until(lambda: gapless.last_rebuild is not None, timeout=20, message="first pass")
        process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "follow", "--database", url, "--exchange",
                                    "deribit", "--symbols", "BTC-PERPETUAL", "--data-types", "trade_bar_1m,trade",
                                    "--since", "2026-11-25T00:00"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            while True:
                line = orjson.loads(process.stdout.readline())
                if line.get("event") == "caught_up":
                    marker = line["seq"]
                    break
            after = []
            while len(after) < 8:
                line = orjson.loads(process.stdout.readline())
                after.append((line, time.monotonic()))
        finally:
            stop.set()
            process.terminate()
            process.wait(20)
    assert all(line["seq"] > marker for line, _ in after)
    assert len({(line["minute"], line["data_type"]) for line, _ in after}) >= 3
    # woken by NOTIFY at the pass's commit, not by the 5 s safety read (which would spread the delays over
    # 0-5 s): each pass's last event arrives soon after the pass becomes visible, with room for a loaded machine
    delays = [received - seen[line["seq"]] for line, received in after if line["seq"] in seen]
    assert len(delays) >= 2 and max(delays) < 3.0, delays


def test_the_sequence_numbers_new_and_changed_minutes_only(tmp_path):
    """A republished minute keeps its seq and revision when nothing about it changed (source, missing flag, every
    value); any change, a value alone included, takes the next seq with the next revision."""
    from gapless.aggregate import value_columns
    from gapless.schema import SERIES_VALUES
    from gapless.sequence import PublishSequence
    store = Storage("sqlite:///%s" % (tmp_path / "s.db"))
    try:
        sequence = PublishSequence(store)
        at = SERIES_VALUES.index("close")
        row = lambda minute, source, close: ("deribit", "X", "trade", minute, source, source == "missing",  # noqa: E731
                                             *((None,) * at + (close,) + (None,) * (len(SERIES_VALUES) - at - 1)),
                                             None)  # levels last
        first, events = sequence.stamp([row(0, "live", 1.0), row(60, "missing", None)], {})
        assert events == 2 and [r[-2:] for r in first] == [(1, 0), (2, 0)]
        # as old_rows reads them: minute, seq, revision, source, missing, then the columns a trade stream fills
        columns = [SERIES_VALUES.index(c) for c in value_columns("trade") if c in SERIES_VALUES] + [len(SERIES_VALUES)]
        old = {r[3]: (r[3], r[-2], r[-1], r[4], r[5]) + tuple(r[6 + i] for i in columns) for r in first}
        again, events = sequence.stamp([row(0, "live", 1.0), row(60, "missing", None)], old)
        assert events == 0 and [r[-2:] for r in again] == [(1, 0), (2, 0)]
        changed, events = sequence.stamp([row(0, "live", 1.5), row(60, "replay", 2.0)], old)
        assert events == 2 and [r[-2:] for r in changed] == [(3, 1), (4, 1)]
    finally:
        store.close()


def test_live_minutes_are_published_as_soon_as_their_claims_cover_them_not_at_the_next_tick(tmp_path, fast_tardis):
    url = "sqlite:///%s" % (tmp_path / "g.db")
    # an hour between ticks: after the first pass, only the early passes of final minutes publish anything
    service = make_gapless(url, fast_tardis, ["trade", "quote_1m"], symbols=["BTC-PERPETUAL"],
                           rebuild_interval="3600s")
    copy, stop = FollowerCopy(), threading.Event()
    try:
        with service:
            wait_until(lambda: service.last_rebuild is not None, timeout=20, message="first pass")
            copy.run(follower(service.storage, service.streams, since=service.window()[0], stop=stop))
            new_live = lambda kind: sum(1 for e in copy.events  # noqa: E731
                                        if e.data_type == kind and e.source == "live" and e.revision == 0)
            wait_until(lambda: new_live("trade") >= 3 and new_live("quote_1m") >= 3, timeout=30,
                       message="new live minutes without a tick")
            passes = service.final.passes
    finally:
        stop.set()
    assert passes >= 3 and not copy.problems


def test_deeper_book_levels_are_published_exported_and_followed(tmp_path, fast_tardis):
    """Regression: the published series had no deeper book levels, so the export (GAPLESS_EXPORT) and the
    picture of a book_snapshot_5 stream failed (KeyError: bids_1_price ...), and a follower got the top only."""
    import pandas as pd
    url = "sqlite:///%s" % (tmp_path / "g.db")
    export = tmp_path / "series.parquet"
    service = make_gapless(url, fast_tardis, ["book_snapshot_5_1s"], symbols=["BTC-PERPETUAL"], export=str(export))
    copy, stop = FollowerCopy(), threading.Event()
    try:
        with service:
            wait_until(lambda: service.last_rebuild is not None, timeout=20, message="first pass")
            copy.run(follower(service.storage, service.streams, since=service.window()[0], stop=stop))
            wait_until(lambda: sum(1 for e in copy.events if e.source != "missing") >= 3 and export.exists(),
                       timeout=30, message="published minutes with data")
            service.heal(download=False)  # one more tick: the export of what is published now
            frames = service.series()
            store = Storage(url, create=False)
            try:
                settle([copy], store)
                published = published_copy(store)
            finally:
                store.close()
    finally:
        stop.set()
    exported = pd.read_parquet(export)
    assert "bids_4_price" in exported.columns and exported["bids_4_price"].notna().any()
    frame = frames[("BTC-PERPETUAL", "book_snapshot_5_1s")]
    rows = exported.set_index(pd.to_datetime(exported["minute"], utc=True))
    common = [m for m in frame.index if m in rows.index and frame.loc[m, "source"] != "missing"]
    assert common
    for minute in common:
        for column in ("bids_1_price", "asks_4_amount"):
            assert rows.loc[minute, column] == frame.loc[minute, column], (minute, column)
    assert not copy.differences(published)
    delivered = [e for e in copy.events if e.source != "missing"]
    assert delivered and all(e.values.get("asks_4_amount") is not None for e in delivered)


def test_an_early_pass_publishes_only_the_streams_whose_claims_passed_a_minute_boundary():
    """With an option chain's hundreds of streams passing their boundaries a few seconds apart, publishing every
    stream on each early pass kept the service publishing without pause (bench_chain: 84 % of a core)."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from gapless.final import FinalMinutes
    from gapless.storage import Claim
    from gapless.timeutil import US
    published, done = [], threading.Event()

    def publish(streams):
        published.append(sorted(s[1] for s in streams))
        done.set()

    def claim(symbol, end):
        return Claim("deribit", symbol, "option_summary", "live", "seg-" + symbol, 0, end, is_open=True)

    scheduler = BackgroundScheduler()
    scheduler.start()
    final = FinalMinutes(publish, lambda: scheduler, threading.Event())
    try:
        for claims, expected in (([claim("A", 65 * US), claim("B", 50 * US)], ["A"]),  # B: not past 00:01 yet
                                 ([claim("A", 70 * US), claim("B", 61 * US)], ["B"]),  # A: the same minute still
                                 ([claim("C", 125 * US)], ["C"])):
            done.clear()
            final.claimed(claims)
            assert done.wait(10)
            wait_until(lambda: not final._running, timeout=10, message="the pass ended")
            assert published[-1] == expected
        final.claimed([claim("A", 119 * US)])  # nothing passed a boundary: no pass asked for (decided at once)
        assert len(published) == 3 and not final._due.is_set()
    finally:
        scheduler.shutdown()
