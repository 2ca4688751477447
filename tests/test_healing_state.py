"""Issue 20, items 1 and 2: book-derived streams are asked from 00:00 only when the schedule says so, whichever
process heals the database, and the steady state downloads a raw book-derived day about once.

tardis-machine replays book-derived types (quotes, snapshots) only from 00:00 of the day, so every such request
downloads the day so far. The double records every replay request with its options and ``from``; these tests
count the from-00:00 requests and their lines there, never in gapless' own bookkeeping.
"""
import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from gapless import get_data_without_gap
from gapless.cli import main
from gapless.exceptions import ConfigurationError
from gapless.service import Gapless
from gapless.storage import Storage
from tests.fake_tardis import FakeClock, FakeTardisMachine, ManualClock, MarketConfig
from tests.support import make_gapless, wait_until
from tests.truth_harness import advance

UTC = timezone.utc
DAY = datetime(2026, 11, 26, tzinfo=UTC)
S = 1_000_000
MINUTE = 60 * S
HOUR = 60 * MINUTE
BTC, ETH = "BTC-PERPETUAL", "ETH-PERPETUAL"
# the service's recorder on a manual clock: short backoffs, commits every 20 ms, no silence watchdog (the clock
# stands still between steps)
RECORDER = {"backoff_base": 0.01, "backoff_cap": 0.05, "flush_interval": 0.02, "recv_timeout": 0.01,
            "data_silence": 3600.0, "dead_after": 3600.0}


def us(when):
    return int(when.timestamp()) * S


def from_midnight(tm, symbol, data_type="quote", day=None):
    """The replay requests the double answered for ``symbol``'s ``data_type`` starting at 00:00 of a day (of
    ``day`` when given); history-delay probes ask one-minute trades of symbols of their own and are not among them."""
    found = []
    for record in tm.requests:
        options = record.options[0] if record.options else {}
        if record.from_ is None or data_type not in options.get("dataTypes", ()) or \
                symbol not in options.get("symbols", ()):
            continue
        if record.from_.time() == datetime.min.time() and (day is None or record.from_.date() == day.date()):
            found.append(record)
    return found


def day_lines(tm, symbol, day):
    """How many lines a replay of ``symbol``'s raw quotes over the whole ``day`` sends (the double's own account)."""
    options = {"exchange": "deribit", "symbols": [symbol], "dataTypes": ["quote"], "from": day.isoformat(),
               "to": (day + timedelta(days=1)).isoformat()}
    return len(tm.expected_replay(options, ignore_availability=True))


def manual_service(tm, symbols, tmp_path, name, lookback="30m", **options):
    """A service on the double's manual clock; its passes are made by the test, as its scheduler would."""
    return Gapless("deribit", symbols, ["quote"], database_url="sqlite:///%s" % (tmp_path / name),
                   tardis_url=tm.http_url, tardis_ws_url=tm.ws_url, lookback=lookback, history_delay="15m",
                   rebuild_interval="3600s", workers=0, now=tm.clock.now_us, recorder_options=dict(RECORDER),
                   **options)


def run_passes(clock, tm, services, until_us, every_us):
    """Move the clock to ``until_us``; every ``every_us`` each service makes one healing pass."""
    recorders = [s.recorder for s in services]
    while clock.now_us() < until_us:
        advance(clock, tm, min(until_us, clock.now_us() + every_us), recorders, step_us=every_us)
        for service in services:
            service.heal()


# -- (a) library calls and new Gapless objects beside a running service -------------------------------------
def test_library_calls_and_a_restarted_gapless_beside_a_running_service_ask_no_day_from_midnight_again(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///%s" % (tmp_path / "g.db")
    clock = FakeClock(start=DAY + timedelta(minutes=20), speed=30.0)
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=2.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=5)) as tm:
        service = make_gapless(url, tm, ["quote"], symbols=[BTC])
        with service:
            # its own schedule: the day from 00:00 at the first pass, then as history reaches the minutes before the
            # first whole live minute (00:21: the recording began during 00:20); then nothing until the day is over
            # (hours away): no gap, no intraday upgrade
            wait_until(lambda: clock.now() >= DAY + timedelta(minutes=22) and service.last_rebuild is not None
                       and service.last_rebuild.gapless and service.is_gapless(), timeout=40, interval=0.2,
                       message="the service gapless past its first whole live minute")
            asked = len(from_midnight(tm, BTC))
            assert asked >= 1, [(r.from_, r.to) for r in tm.requests]
            began = clock.now_us()
            for i in range(4):  # legacy code calling every (simulated) minute
                wait_until(lambda: clock.now_us() >= began + i * MINUTE, timeout=10, message="minute %d" % i)
                frames = get_data_without_gap("deribit", [BTC], ["quote"], lookback="10m",
                                              recording_warmup_seconds=20, database_url=url,
                                              tardis_url=tm.http_url, tardis_ws_url=tm.ws_url, history_delay="10s",
                                              now=clock.now_us, poll_seconds=0.2)
                assert not frames[(BTC, "quote")]["missing"].any(), i
            for _ in range(2):  # a Gapless object started, stopped, and started again beside it
                other = make_gapless(url, tm, ["quote"], symbols=[BTC])
                with other:
                    wait_until(lambda: other.last_download is not None, timeout=20, message="a pass of the other")
            # still gapless (the newest minute may wait a moment for the recorder's next commit at 30x)
            wait_until(service.is_gapless, timeout=10, interval=0.2, message="the service still gapless")
        extra = from_midnight(tm, BTC)[asked:]
        assert extra == [], [(r.received_at, r.from_, r.to) for r in extra]


# -- (b) a day of steady state ---------------------------------------------------------------------------------
def test_a_steady_day_downloads_a_raw_quote_day_about_once_and_hourly_upgrades_many_times(tmp_path):
    start = DAY + timedelta(hours=1, minutes=35, seconds=20)
    clock = ManualClock(start)
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=0.2, trade_rate=0.1),
                           availability_delay=timedelta(seconds=60)) as tm:
        # two services on the same double, one stream each (the requests name their symbol): the default (daily)
        # and GAPLESS_UPGRADE=hourly; a pass every hour (every minute would decide the same, at 60 times the test's
        # cost; tests/bench/bench_upgrade.py makes one every 5 minutes) from 01:35 to 01:35 the next day
        daily = manual_service(tm, [BTC], tmp_path, "daily.db", lookback="90m")
        hourly = manual_service(tm, [ETH], tmp_path, "hourly.db", lookback="90m", upgrade="hourly")
        for service in (daily, hourly):
            service.recorder.start()
        try:
            run_passes(clock, tm, [daily, hourly], us(start + timedelta(days=1)), HOUR)
            status = {s.recorder.symbols[0]: s.status()["streams"][0] for s in (daily, hourly)}
            replay = daily.storage.covered("deribit", BTC, "quote", "replay")
        finally:
            for service in (daily, hourly):
                service.stop()
        lines = {symbol: day_lines(tm, symbol, DAY) for symbol in (BTC, ETH)}
    cost = {symbol: sum(r.lines_sent for r in from_midnight(tm, symbol, day=DAY)) for symbol in (BTC, ETH)}
    asks = {symbol: from_midnight(tm, symbol, day=DAY) for symbol in (BTC, ETH)}
    # daily: the cold start (the day so far), and the whole day once when it is over
    assert cost[BTC] <= 1.5 * lines[BTC], (cost, lines)
    assert len(asks[BTC]) <= 3, [(r.received_at, r.to) for r in asks[BTC]]
    assert asks[BTC][-1].received_at >= DAY + timedelta(days=1)  # the day-over request
    # ... and the whole day became replay, as with hourly upgrades, and nothing went missing
    assert any(a <= us(DAY) and b >= us(DAY + timedelta(days=1)) for a, b in replay), replay
    for stream in status.values():
        assert stream["gapless"] and not stream["gaps"], stream
    # hourly: the day so far again every hour (quadratic in the hour of the day)
    assert cost[ETH] > 1.5 * lines[ETH] and len(asks[ETH]) >= 20, (cost, lines, len(asks[ETH]))


# -- (c) evidence: a disagreement brings the hourly upgrade back -----------------------------------------------
def test_a_reported_disagreement_brings_back_the_hourly_upgrade_of_that_stream_only(tmp_path):
    start = DAY + timedelta(hours=4, minutes=5, seconds=20)
    clock = ManualClock(start)
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=0.5, trade_rate=0.1),
                           availability_delay=timedelta(seconds=60)) as tm:
        # live BTC quotes are 1 % off in one minute that history will also cover (the recording begins at 04:05)
        tm.perturb("live", BTC, DAY + timedelta(hours=4, minutes=10), factor=1.01)
        service = manual_service(tm, [BTC, ETH], tmp_path, "g.db", lookback="4h")
        service.recorder.start()
        try:
            # history reaches the minute the recording began: one request for both, and the minutes it upgrades on
            # the way are compared with live
            run_passes(clock, tm, [service], us(start + timedelta(minutes=15)), 15 * MINUTE)
            disagreements = {s["symbol"]: s["disagreements"]["count"] for s in service.status()["streams"]}
            assert disagreements[BTC] >= 1 and disagreements[ETH] == 0, disagreements
            before = {symbol: len(from_midnight(tm, symbol, day=DAY)) for symbol in (BTC, ETH)}
            run_passes(clock, tm, [service], us(start + timedelta(hours=3, minutes=15)), 15 * MINUTE)
        finally:
            service.stop()
    after = {symbol: from_midnight(tm, symbol, day=DAY)[before[symbol]:] for symbol in (BTC, ETH)}
    assert len(after[BTC]) == 3 and all(r.options[0]["symbols"] == [BTC] for r in after[BTC]), after[BTC]
    assert after[ETH] == [], [(r.received_at, r.to) for r in after[ETH]]


# -- the setting, and readers of older databases ------------------------------------------------------------
@pytest.mark.usefixtures("isolated_cli")
def test_a_bad_upgrade_setting_is_refused_naming_it(tardis, tmp_path, capsys, monkeypatch):
    db = "sqlite:///%s" % (tmp_path / "g.db")
    base = ["--exchange", "deribit", "--symbols", BTC, "--data-types", "quote", "--tardis-url", tardis.http_url,
            "--database", db]
    assert main(["serve", *base, "--upgrade", "weekly"], now=tardis.clock.now) == 2
    assert "--upgrade: 'weekly' is not daily or hourly" in capsys.readouterr().err
    monkeypatch.setenv("GAPLESS_UPGRADE", "Hourly!")
    assert main(["status", *base], now=tardis.clock.now) == 2
    assert "GAPLESS_UPGRADE: 'Hourly!' is not daily or hourly" in capsys.readouterr().err
    with pytest.raises(ConfigurationError, match="upgrade: 'sometimes'"):
        Gapless("deribit", [BTC], ["quote"], database_url=db, upgrade="sometimes")
    assert not tardis.connections and not tardis.requests  # nothing started


def test_status_reads_a_database_without_the_healing_state_table_and_a_writer_adds_it(tmp_path, capsys,
                                                                                      isolated_cli):
    clock = ManualClock(DAY + timedelta(hours=2, seconds=20))
    path = tmp_path / "g.db"
    with FakeTardisMachine(clock=clock, availability_delay=timedelta(seconds=60)) as tm:
        service = manual_service(tm, [BTC], tmp_path, "g.db")
        try:
            service.heal()  # the cold start: one from-00:00 request, remembered
        finally:
            service.stop()
        assert len(from_midnight(tm, BTC)) == 1
        argv = ["status", "--json", "--exchange", "deribit", "--symbols", BTC, "--data-types", "quote",
                "--database", "sqlite:///%s" % path, "--lookback", "30m"]
        assert main(argv, now=clock.now) == 0
        shown = json.loads(capsys.readouterr().out)["streams"][0]["history_from_midnight"]
        assert shown["reason"] == "cold" and shown["requests"] == 1 and shown["day"] == "2026-11-26", shown
        # a database written before the table existed (same schema version): readers cope, never create it
        with sqlite3.connect(path) as connection:
            connection.execute('DROP TABLE "healing_state"')
        assert main(argv, now=clock.now) == 0
        assert json.loads(capsys.readouterr().out)["streams"][0]["history_from_midnight"] is None
        reader = Storage("sqlite:///%s" % path, create=False)
        reader.close()
        with sqlite3.connect(path) as connection:
            tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "healing_state" not in tables
        # a writer makes it again; with no memory of the day, its next pass starts the day cold (with the memory, the
        # minutes history delivered since would wait for the frontier rule's 15 minutes)
        service = manual_service(tm, [BTC], tmp_path, "g.db")
        try:
            clock.advance(5 * 60)
            service.heal()
        finally:
            service.stop()
        assert len(from_midnight(tm, BTC)) == 2
        assert main(argv, now=clock.now) == 0
        shown = json.loads(capsys.readouterr().out)["streams"][0]["history_from_midnight"]
        assert shown["reason"] == "cold" and shown["requests"] == 1, shown


# -- the memory itself, on both backends ----------------------------------------------------------------------
def test_two_planners_on_one_database_follow_one_schedule(database_url):
    """Two planners on two connections to one database (two processes): what one asked, the other does not ask
    again; the day is asked once more when it is over, by whichever decides first."""
    from gapless.healing import HealingPlanner
    from gapless.healing_state import HealingMemory

    day = us(DAY)
    stores = [Storage(database_url), Storage(database_url)]
    planners = [HealingPlanner(HealingMemory(store)) for store in stores]

    def sources_of(symbol, data_type, a, b):  # the series as published: live since 01:00, missing before
        return ["live" if t >= day + HOUR else "missing" for t in range(a, b, MINUTE)]

    def ask(planner, now):
        window = (now - 2 * HOUR, now - now % MINUTE)
        wanted = planner.wanted(sources_of, "deribit", [BTC], ["quote"], window[0], now - 2 * MINUTE, now,
                                end=window[1])
        return sorted(wanted)

    try:
        first = us(DAY + timedelta(hours=3))
        assert ask(planners[0], first) != []  # nothing asked for the day yet: cold
        for minutes in (1, 2, 30):  # the other process, later: the same schedule, nothing new to ask
            assert ask(planners[1], first + minutes * MINUTE) == []
        over = us(DAY + timedelta(days=1, minutes=5))
        assert ask(planners[1], over) != []  # the day is over: once
        assert ask(planners[0], over + MINUTE) == []
    finally:
        for store in stores:
            store.close()
