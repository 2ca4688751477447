"""The eight ways the series lied or looped (issue 11), each pinned against the double's ground truth.

Every value check compares with :func:`tests.truth.minute_truth` (the market model), never with gapless'
own output; the harness in tests/test_truth_random.py searches for more of the same at random.
"""
from datetime import datetime, timedelta, timezone

import pytest

from gapless import get_data_without_gap
from gapless.cli import main
from gapless.download import Downloader
from gapless.exceptions import UsageError
from gapless.recorder import Recorder
from gapless.stitch import series
from gapless.service import Gapless
from gapless.storage import Storage
from gapless.timeutil import MINUTE_US, iso
from tests.fake_tardis import FakeClock, FakeTardisMachine, ManualClock, MarketConfig, Outage
from tests.truth_checks import false_minutes
from tests.truth_harness import advance

UTC = timezone.utc
DAY = datetime(2026, 11, 25, tzinfo=UTC)
SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
RECORDER = {"backoff_base": 0.01, "backoff_cap": 0.05, "flush_interval": 0.02, "recv_timeout": 0.01,
            "data_silence": 3600.0,
            "dead_after": 3600.0}


def at(hh_mm, day=0):
    """µs of ``hh:mm[:ss]`` on the test day (+ ``day`` days)."""
    parts = [int(p) for p in hh_mm.split(":")] + [0]
    return int((DAY + timedelta(days=day, hours=parts[0], minutes=parts[1], seconds=parts[2])).timestamp()) * 10 ** 6


def dt(us):
    return datetime.fromtimestamp(us / 1e6, UTC)


def minutes(frame, source):
    return [t.strftime("%H:%M") for t, s in frame["source"].items() if s == source]


def download(store, tm, types, start, end, symbols=SYMBOLS, now=None):
    downloader = Downloader(store, tm.http_url, workers=0, progress=False, now=now or tm.clock.now_us)
    return downloader.download("deribit", symbols, types, start, end)


# -- 1. intervals other than a minute ---------------------------------------------------------------
def test_sub_minute_bars_and_snapshots_add_up_to_the_true_minute(tmp_path):
    types = ["trade_bar_10s", "quote_10s", "book_snapshot_5_1s", "trade_bar_1m"]
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(minutes=40)),
                           market=MarketConfig(book_rate=1.0, trade_rate=1.0)) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        assert download(store, tm, types, at("00:05"), at("00:25")).complete
        frames = series(store, "deribit", SYMBOLS, types, at("00:05"), at("00:25"))
        assert all(set(frame["source"]) == {"replay"} for frame in frames.values())
        assert false_minutes(tm, frames) == []
        for symbol in SYMBOLS:  # six 10-second bars make the one-minute bar
            tens, ones = frames[(symbol, "trade_bar_10s")], frames[(symbol, "trade_bar_1m")]
            for column in ("open", "high", "low", "close", "volume", "trades"):
                assert (tens[column] == ones[column]).all(), column


@pytest.mark.parametrize("name, rule", [("trade_bar_5m", "5m is longer than a minute"),
                                        ("quote_7s", "7s does not divide a minute"),
                                        ("book_change", "raw order book feed")])
def test_a_data_type_without_a_minute_series_is_refused_by_library_service_and_command_line(
        name, rule, tmp_path, isolated_cli, capsys):
    url = "sqlite:///%s" % (tmp_path / "g.db")
    with pytest.raises(UsageError, match=rule):
        Gapless("deribit", ["BTC-PERPETUAL"], ["trade", name], database_url=url)
    with pytest.raises(UsageError, match=rule):
        get_data_without_gap("deribit", ["BTC-PERPETUAL"], [name], database_url=url)
    for argv in (["series", "--data-types", name, "--from", "2026-11-25T00:00", "--database", url],
                 ["serve", "--data-types", "trade," + name, "--database", url]):
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert name in error and rule in error, error
    assert not (tmp_path / "g.db").exists()  # refused before anything was opened


# -- 2. a request that starts inside a history outage -------------------------------------------------
def test_a_download_starting_inside_a_history_outage_claims_none_of_it(tmp_path):
    outage = Outage(dt(at("00:03:30")), dt(at("00:09:20")))
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(minutes=40)), replay_outages=[outage]) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        download(store, tm, ["trade", "trade_bar_1m"], at("00:05"), at("00:20"))
        frames = series(store, "deribit", SYMBOLS, ["trade", "trade_bar_1m"], at("00:05"), at("00:20"))
        for key, frame in frames.items():
            assert minutes(frame, "replay") and not set(minutes(frame, "replay")) & {"00:05", "00:06", "00:07",
                                                                                     "00:08", "00:09"}, key
            assert "00:11" in minutes(frame, "replay"), key  # the data after the outage is covered
        assert false_minutes(tm, frames) == []


def test_a_day_slice_starting_inside_an_outage_across_midnight_claims_none_of_it(tmp_path):
    outage = Outage(dt(at("23:57")), dt(at("00:04:10", day=1)))
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(days=1, minutes=30)), replay_outages=[outage]) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        types = ["quote_1m", "trade"]
        download(store, tm, types, at("00:00", 1), at("00:15", 1))
        frames = series(store, "deribit", SYMBOLS, types, at("00:00", 1), at("00:15", 1))
        for key, frame in frames.items():
            assert not set(minutes(frame, "replay")) & {"00:00", "00:01", "00:02", "00:03", "00:04"}, key
            assert "00:06" in minutes(frame, "replay"), key
        assert false_minutes(tm, frames) == []


def test_a_quiet_start_is_covered_at_once_and_not_asked_again(tmp_path):
    quiet = (("*", at("00:04:30") // 1000, at("00:09") // 1000),)
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(minutes=40)), market=MarketConfig(quiet=quiet)) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        download(store, tm, ["trade"], at("00:05"), at("00:15"))
        frames = series(store, "deribit", SYMBOLS, ["trade"], at("00:05"), at("00:15"))
        for frame in frames.values():
            assert set(frame["source"]) == {"replay"} and (frame["volume"].iloc[:4] == 0).all()
        assert false_minutes(tm, frames) == []
        asked = len(tm.requests)
        download(store, tm, ["trade"], at("00:05"), at("00:15"))
        assert len(tm.requests) == asked


# -- 3. two recorders of one stream -------------------------------------------------------------------
def test_two_recorders_never_serve_a_partial_bar_as_live_and_a_bars_only_connection_claims_its_first_minute(
        tmp_path):
    clock = ManualClock(at("00:20"))
    url = "sqlite:///%s" % (tmp_path / "g.db")
    with FakeTardisMachine(clock=clock, market=MarketConfig(trade_rate=1.0)) as tm:
        def recorder():
            return Recorder(Storage(url), tm.ws_url, "deribit", ["BTC-PERPETUAL"], ["trade_bar_1m"],
                            clock=lambda: clock.now_us() / 1e6, **RECORDER)
        x = recorder().start()
        advance(clock, tm, at("00:23:20"), [x])
        y = recorder().start()  # Y joins 20 s into 00:23 ...
        advance(clock, tm, at("00:23:45"), [x, y])
        x.stop()  # ... which X leaves at 45 s
        advance(clock, tm, at("00:27:10"), [y])
        y.stop()
        store = Storage(url)
        frame = series(store, "deribit", ["BTC-PERPETUAL"], ["trade_bar_1m"], at("00:20"), at("00:27"),
                       sources=("live",))[("BTC-PERPETUAL", "trade_bar_1m")]
    live = minutes(frame, "live")
    # X subscribed at 00:20:00: its first whole minute is 00:21 (a bars-only connection claims it); neither
    # X (gone at 00:23:45, its bar never sent) nor Y (there since 00:23:20: a partial bar) had 00:23 whole;
    # Y's first whole minute is 00:24
    assert "00:21" in live and "00:23" not in live and "00:24" in live, live
    assert false_minutes(tm, {("BTC-PERPETUAL", "trade_bar_1m"): frame}) == []


# -- 4. clock skew at a run's start --------------------------------------------------------------------
@pytest.mark.parametrize("skew_ms", [-2000, 2000])
def test_clock_skew_loses_no_trade_at_a_run_start(skew_ms, tmp_path):
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(minutes=40)),
                           market=MarketConfig(skew_ms=skew_ms, trade_rate=2.0)) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        download(store, tm, ["trade", "trade_bar_1m"], at("00:05"), at("00:10"))
        frames = series(store, "deribit", SYMBOLS, ["trade", "trade_bar_1m"], at("00:05"), at("00:10"))
        assert all(minutes(f, "replay")[0] == "00:05" for f in frames.values())
        assert false_minutes(tm, frames) == []


# -- 5. status and the series decide alike; the book known at connect counts --------------------------
def test_a_quiet_book_is_known_live_from_the_connect_snapshot_and_status_agrees_with_the_series(tmp_path):
    clock = ManualClock(at("00:20:10"))
    quiet = (("BTC-PERPETUAL", at("00:20:20") // 1000, at("00:40") // 1000),)
    with FakeTardisMachine(clock=clock, market=MarketConfig(quiet=quiet),
                           availability_delay=timedelta(minutes=30)) as tm:
        gapless = Gapless("deribit", SYMBOLS, ["quote"], lookback="10m", database_url="sqlite:///%s" % (
            tmp_path / "g.db"), tardis_url=tm.http_url, tardis_ws_url=tm.ws_url, history_delay="31m",
                          now=clock.now_us, recorder_options=RECORDER)
        gapless.recorder.start()
        try:
            advance(clock, tm, at("00:31:15"), [gapless.recorder])
            gapless.heal()
            frames, status = gapless.series(), gapless.status()
        finally:
            gapless.stop()
    btc = frames[("BTC-PERPETUAL", "quote")]
    assert minutes(btc, "live") == ["00:%02d" % m for m in range(21, 31)]  # unchanged book, known at connect
    assert false_minutes(tm, frames) == []
    for stream in status["streams"]:
        frame = frames[(stream["symbol"], stream["data_type"])]
        assert stream["minutes"]["live"] == len(minutes(frame, "live"))
        assert stream["minutes"]["missing"] == int(frame["missing"].sum())


# -- 6. a quiet end of a day ---------------------------------------------------------------------------
def test_a_quiet_end_of_day_is_claimed_and_the_day_is_not_downloaded_again_and_again(tmp_path):
    quiet = (("*", at("23:50") // 1000, at("00:25", 1) // 1000),)
    clock = ManualClock(at("01:00", 1))
    with FakeTardisMachine(clock=clock, market=MarketConfig(quiet=quiet, book_rate=0.25)) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        types = ["trade_bar_1m", "quote_1m"]
        download(store, tm, types, at("23:30"), at("00:00", 1))
        first = len(stream_requests(tm, types))  # one for the bars, one for the quotes (from 00:00)
        checks = len(tm.requests) - first  # the quiet end's silent minutes, checked (see gapless.silence)
        assert checks <= 4
        for _ in range(5):  # more passes, soon after: nothing new to learn, nothing asked
            clock.advance(20)
            download(store, tm, types, at("23:30"), at("00:00", 1))
        assert len(tm.requests) == first + checks
        requests_then = len(stream_requests(tm, types))
        frames = series(store, "deribit", SYMBOLS, types, at("23:30"), at("00:00", 1))
        for symbol in SYMBOLS:
            bars = frames[(symbol, "trade_bar_1m")]
            # the quiet end is claimed; only the minute of the last trade waits for its bar (the next trade)
            assert minutes(bars, "replay")[-1] == "23:59" and len(minutes(bars, "missing")) <= 1
        assert requests_then == first == 2
        # later: the ledger lets the tails be asked again, reaching past midnight until the next event
        for _ in range(6):
            clock.advance(30 * 60)
            download(store, tm, types, at("23:30"), at("00:00", 1))
        frames = series(store, "deribit", SYMBOLS, types, at("23:30"), at("00:00", 1))
        assert all(set(f["source"]) == {"replay"} for f in frames.values()), {
            k: minutes(f, "missing") for k, f in frames.items()}
        assert false_minutes(tm, frames) == []
        assert len(stream_requests(tm, types)) <= requests_then + 6  # a few backed-off asks, each reaching further


def stream_requests(tm, types):
    """The requests a download made for its streams (not the checks of silent minutes)."""
    return [r for r in tm.requests if set(r.options[0]["dataTypes"]) <= set(types)]


# -- 7. a hole in tardis' own history ------------------------------------------------------------------
def test_a_history_outage_is_reported_not_healable_and_not_asked_again(tmp_path):
    clock = ManualClock(at("00:30"))
    outage = Outage(dt(at("00:10:20")), dt(at("00:13:40")))
    with FakeTardisMachine(clock=clock, replay_outages=[outage], availability_delay=timedelta(seconds=20)) as tm:
        gapless = Gapless("deribit", SYMBOLS, ["trade", "quote_1m"], lookback="25m", database_url="sqlite:///%s" % (
            tmp_path / "g.db"), tardis_url=tm.http_url, tardis_ws_url=tm.ws_url, history_delay="1m",
                          now=clock.now_us, recorder_options=RECORDER)
        gapless.recorder.start()
        try:
            advance(clock, tm, at("00:30:30"), [gapless.recorder])
            gapless.heal()
            asked = len(tm.requests)
            for _ in range(6):
                advance(clock, tm, clock.now_us() + 30_000_000, [gapless.recorder])
                gapless.heal()
            gaps = [g for g in gapless.gaps() if g["start"] <= iso(at("00:11")) < g["end"]]
            covering = [r for r in tm.requests[asked:] if r.from_ <= dt(at("00:11")) < r.to]
        finally:
            gapless.stop()
    assert gaps and all(g["reason"] == "history_outage" and not g["healable"] for g in gaps), gaps
    # book-derived types are asked from 00:00 for the newest minutes; nothing else comes back for the hole
    assert all(r.from_ == dt(at("00:00")) for r in covering), [(r.from_, r.to) for r in covering]
    assert len(covering) <= 1


# -- 8. one stream's failure does not block the others ----------------------------------------------
def test_a_stream_that_cannot_be_published_is_reported_and_the_others_are_published(tmp_path):
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(minutes=40))) as tm:
        url = "sqlite:///%s" % (tmp_path / "g.db")
        store = Storage(url)
        download(store, tm, ["trade"], at("00:05"), at("00:15"))
        # another program wrote a price that is not a number into one stream's rows
        store.db.execute_sql("UPDATE trade SET price = 'garbage' WHERE symbol = 'ETH-PERPETUAL' AND timestamp = "
                             "(SELECT MIN(timestamp) FROM trade WHERE symbol = 'ETH-PERPETUAL' AND timestamp >= ?)",
                             (at("00:06"),))
        gapless = Gapless("deribit", SYMBOLS, ["trade"], lookback="10m", database_url=url,
                          now=lambda: at("00:15:30"), tardis_url=tm.http_url, tardis_ws_url=tm.ws_url)
        report = gapless.heal(download=False)
        status = {s["symbol"]: s for s in gapless.status()["streams"]}
        gapless.stop()
    assert report.streams[("deribit", "ETH-PERPETUAL", "trade")].error
    assert report.streams[("deribit", "BTC-PERPETUAL", "trade")].minutes["replay"] == 10
    assert "garbage" in status["ETH-PERPETUAL"]["error"] or "could not convert" in status["ETH-PERPETUAL"]["error"]
    assert status["BTC-PERPETUAL"]["error"] is None
