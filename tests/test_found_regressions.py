"""Bugs the randomized tests found after issue 11's eight, each pinned by name.

(Replay a harness seed by hand: ``GAPLESS_TRUTH_SEED=17 GAPLESS_TRUTH_EXAMPLES=1 pytest tests/test_truth_random.py``.)

* harness seed 2: the history-delay probe asked the same minute again, within one measurement (the
  bisection came back to it) and in every later one (30 min apart, with nothing new to learn);
* harness seed 17: a history outage just below the edge hid the edge from the probe (it searched upwards
  from an older available minute and stopped at the hole); the delay grew to an hour and the minutes after
  the outage were never downloaded;
* tests/test_incremental.py: a ticker minute at the start of a recomputed range took every field from the
  last minute with data only (a ticker message carries only what changed), so an incremental pass and a
  full recompute disagreed;
* a publishing pass that failed for every stream was logged as "gapless";
* harness seed 1011: a silent symbol's whole lookback was asked again every few minutes (the window slides
  on, so each range started afresh at attempt 1 and the backoff never grew);
* harness seeds 1005 and 1011: the very same request for a quiet tail was made again a minute later (the
  tail looked reachable while the horizon had moved back);
* harness seeds 1055, 1060, 3028, 3029: after a restart the same quiet range, and the probe the same empty
  minutes, were asked again at once (the request memory lived only in the process);
* harness seed 67016: a minute another client had asked too early (cached EMPTY for the trades filter set) was
  found by a run of trade and trade_bar_10s; only trade's claim reached it, so only trade got a
  ``history_cached_empty`` ledger entry and was healed fresh. The later trade_bar_10s runs were cut by the
  minute's settled verdict but reported nothing, so they were asked through the poisoned filter set for good
  and the bars stayed live (the whole seed, ~70 s, is left to ``tests/bench/truth_batch.py --first 67016
  --count 1``; the test below pins the mechanism in 2 s);
* harness seed 77014 (the first seeds drawn with download worker processes, the default outside the harness):
  a silence check through a stream's own filter set was asked again by the next pass without backing off.
  The feed's answers to such checks (``CheckAnswers``) are shared by fetcher threads only; worker processes
  had none, so every run asked for itself. Each worker now keeps its own, for as long as it lives (a feed
  keeps its workers across passes).
* harness seed 86045: a silent minute inside a hole of tardis' own recording was never settled, so every
  restarted service's next from-00:00 run asked its check again through the run's own filter set, sooner than
  the backoff. A minute in a closed hole is now settled with the hole in the database.
* harness seed 86840: a run that began inside a hole of tardis' recording (an unproven start) claimed the
  liquidations only from its first line; the minutes before it were silent because another client had asked them
  too early (cached empty), but no claim reached them, so they were never checked, and the ``unproven_start`` entry
  was asked again through the same poisoned filter set seven times: the minutes stayed live. An unproven start's
  silent minutes are now checked; cached empty, the entry says so and is asked with a fresh filter set.
* harness seed 86993 (the first chain drawn across an option's expiration): the retry of a quiet tail just before
  the expiration reached past it, met a hole of tardis' recording there and held the option's last minute back
  for the rest of the day (it stayed live); a tail is now never asked past the end of an option's life.
* harness seed 86984: another client asked the book channel too early just after a hole in tardis' recording, so
  the reconnect snapshot was cached empty for the quotes' filter set: the book never came back through it, the
  ledger held the rest of the day back as a history outage, and it stayed live. A history outage's silent minutes
  are now checked like an unproven start's (seed 86840); seed 76009 heals at the next pass instead of the next day.
"""
import json
from datetime import datetime, timedelta, timezone

import pytest
import requests

from gapless.convert import Converter
from gapless.probe import EdgeProbe
from gapless.publish import rebuild
from gapless.replay import ReplayClient
from gapless.storage import Claim, Storage
from gapless.timeutil import MINUTE_US, US
from tests.fake_tardis import FakeTardisMachine, ManualClock, MarketConfig, Outage

DAY = datetime(2026, 11, 25, tzinfo=timezone.utc)
SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]


def probe_against(tm, live_trades_in=None):
    return EdgeProbe(ReplayClient(tm.http_url, timeout=(5.0, 30.0)), "deribit", SYMBOLS,
                     live_trades_in=live_trades_in)


@pytest.mark.parametrize("mode", ["error", "empty"])
def test_a_history_outage_just_below_the_edge_does_not_hide_the_edge_from_the_probe(mode):
    now = DAY + timedelta(hours=2)
    # history lost 37 minutes; in empty mode history comes in whole minutes (01:58 is not complete yet), so the
    # outage ends a minute earlier to leave the same stretch of history after it as in error mode
    outage = Outage(now - timedelta(minutes=40), now - timedelta(minutes=3 if mode == "error" else 4))
    with FakeTardisMachine(clock=ManualClock(now), market=MarketConfig(book_rate=1.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=70), availability_mode=mode,
                           replay_outages=[outage]) as tm:
        # live had trades in the outage's minutes: their empty answers look like "not available yet"
        result = probe_against(tm, live_trades_in=lambda minute: True).measure(tm.clock.now_us())
        now_us = tm.clock.now_us()
        assert result.edge is not None
        assert 70 * US <= now_us - result.edge <= 70 * US + 2 * MINUTE_US, (now_us - result.edge) / US
        assert result.probes <= 12, result.answers


def test_the_probe_never_asks_a_minute_twice_nor_one_an_earlier_measurement_proved():
    now = DAY + timedelta(hours=2)
    with FakeTardisMachine(clock=ManualClock(now), market=MarketConfig(book_rate=1.0, trade_rate=1.0),
                           availability_delay=timedelta(minutes=9), availability_mode="empty") as tm:
        probe = probe_against(tm)
        first = probe.measure(tm.clock.now_us())
        asked = [r.from_ for r in tm.requests]
        assert len(asked) == len(set(asked)) == first.probes  # one request per minute in a measurement
        assert first.edge is not None and not first.tight  # empty answers above it are not proof of anything
        tm.clock.advance(30 * 60)
        before = len(tm.requests)
        second = probe.measure(tm.clock.now_us(), known_edge=first.edge)
        again = [r.from_ for r in tm.requests[before:]]
        assert len(again) == second.probes and len(again) == len(set(again))
        # nothing at or before the proven edge was asked again
        assert all(int(t.timestamp() * US) + MINUTE_US > first.edge for t in again), again
        assert second.edge > first.edge


def test_a_ticker_minute_at_the_start_of_a_recomputed_range_carries_every_field_on_its_own(tmp_path):
    # mark price changes at 00:00:10 only; the funding rate at 00:00:20 and 00:03:10. Minute 00:02 has
    # no update of its own: it carries both fields, from two different minutes.
    store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
    t0 = int(DAY.timestamp()) * US
    converter = Converter("live")

    def ticker(seconds, **fields):
        stamp = (DAY + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        message = dict({"type": "derivative_ticker", "symbol": "BTC-PERPETUAL", "exchange": "deribit",
                        "timestamp": stamp, "localTimestamp": stamp}, **fields)
        return converter.convert(message)

    rows = [ticker(10, markPrice=100.0), ticker(20, fundingRate=0.01), ticker(70, lastPrice=99.0)]
    claim = Claim("deribit", "BTC-PERPETUAL", "derivative_ticker", "live", "s", t0, t0 + 5 * MINUTE_US)
    store.write({rows[0][0]: [r[1] for r in rows]}, [claim])
    streams = [("deribit", "BTC-PERPETUAL", "derivative_ticker")]
    rebuild(store, streams, t0, t0 + 5 * MINUTE_US)
    # a late update inside minute 00:01 makes 00:01.. dirty: the recomputed range starts there
    store.write({rows[0][0]: [ticker(100, indexPrice=98.0)[1]]}, [claim])
    report = rebuild(store, streams, t0, t0 + 5 * MINUTE_US)
    assert not any(r.error for r in report.streams.values())
    model = store.models["minute_series"]
    row = model.get((model.minute == t0 + 2 * MINUTE_US))
    assert (row.mark_price, row.funding_rate, row.last_price, row.index_price) == (100.0, 0.01, 99.0, 98.0)
    store.close()


def test_a_pass_that_publishes_nothing_is_not_logged_or_reported_as_gapless(tmp_path, caplog):
    from gapless.service import Gapless
    url = "sqlite:///%s" % (tmp_path / "g.db")
    t0 = int(DAY.timestamp()) * US
    store = Storage(url)
    converter = Converter("replay")
    rows = [converter.convert({"type": "trade", "symbol": "BTC-PERPETUAL", "exchange": "deribit", "id": str(i),
                               "price": 100.0 + i, "amount": 1.0, "side": "buy",
                               "timestamp": "2026-11-25T00:0%d:30.000Z" % i,
                               "localTimestamp": "2026-11-25T00:0%d:30.000Z" % i})[1] for i in range(10)]
    store.write({"trade": rows}, [Claim("deribit", "BTC-PERPETUAL", "trade", "replay", "r", t0, t0 + 10 * MINUTE_US)])
    # another program wrote a price that is not a number: the only stream cannot be aggregated
    store.db.execute_sql("UPDATE trade SET price = 'garbage' WHERE trade_id = '3'")
    store.close()
    gapless = Gapless("deribit", ["BTC-PERPETUAL"], ["trade"], lookback="10m", database_url=url,
                      now=lambda: t0 + 10 * MINUTE_US + 30 * US)
    try:
        with caplog.at_level("INFO", logger="gapless.service"):
            report = gapless.heal(download=False)
    finally:
        gapless.stop()
    result = report.streams[("deribit", "BTC-PERPETUAL", "trade")]
    assert result.error and not report.gapless
    assert result.minutes["missing"] == 10 and report.missing == 10  # nothing may be claimed from a stale series
    logged = [m for m in caplog.messages if m.startswith("rebuilt")]
    assert logged and "1 stream(s) could not be published" in logged[-1] and "gapless" not in logged[-1]


@pytest.mark.slow
def test_a_silent_symbol_is_not_asked_for_its_whole_lookback_every_few_minutes(tmp_path):
    from gapless.service import Gapless
    start = DAY + timedelta(hours=6)
    clock = ManualClock(start)
    market = MarketConfig(book_rate=0.3, trade_rate=0.3, quiet=(("SOL-PERPETUAL", 0, 2 ** 62 // 1000),))
    with FakeTardisMachine(clock=clock, market=market, availability_delay=timedelta(seconds=60),
                           default_symbols=["BTC-PERPETUAL", "SOL-PERPETUAL"]) as tm:
        gapless = Gapless("deribit", ["BTC-PERPETUAL", "SOL-PERPETUAL"], ["trade"], lookback="3h",
                          database_url="sqlite:///%s" % (tmp_path / "g.db"), tardis_url=tm.http_url,
                          tardis_ws_url=tm.ws_url, now=tm.clock.now_us, history_delay="5m")
        try:
            for _ in range(40):  # 40 passes, a minute apart: the window slides 40 minutes
                gapless.heal()
                clock.advance(60)
        finally:
            gapless.stop()
    # SOL never traded: a request that reaches back over its lookback (more than 30 minutes) is made a
    # handful of times with a growing wait, not on every pass
    long_asks = [r for r in tm.requests if "SOL-PERPETUAL" in r.options[0]["symbols"]
                 and (r.to - r.from_) > timedelta(minutes=30)]
    assert 1 <= len(long_asks) <= 6, [(r.received_at, r.from_, r.to) for r in long_asks]
    waits = [(b.received_at - a.received_at).total_seconds() for a, b in zip(long_asks, long_asks[1:])]
    assert waits == sorted(waits), waits


def test_the_very_same_request_is_not_made_again_before_its_backoff():
    from gapless.ingest import ReplayRequest
    from gapless.ledger import RequestMemory
    memory = RequestMemory()
    request = ReplayRequest("deribit", ("BTC-PERPETUAL",), ("trade_bar_10s",), 0, 3 * MINUTE_US)
    other = ReplayRequest("deribit", ("BTC-PERPETUAL",), ("trade_bar_10s",), 0, 4 * MINUTE_US)
    assert memory.admit(request, 0)
    assert not memory.admit(request, 60 * US)  # a minute later: no new evidence, no backoff yet
    assert memory.admit(other, 60 * US)  # reaching further is another request
    assert memory.admit(request, 2 * MINUTE_US)  # after 2 min: the second ask
    assert not memory.admit(request, 5 * MINUTE_US)  # the third needs 4 more minutes
    assert memory.admit(request, 6 * MINUTE_US)


def test_a_restart_makes_no_request_again_before_its_backoff(tmp_path):
    """Harness seeds 1055, 1060, 3028 and 3029: the request memory lived only in the process, so a service
    restarted a minute or two after a pass asked the same quiet range, and the probe the same empty minutes,
    once more (a restart is no new evidence)."""
    from gapless.service import Gapless
    from tests.truth_checks import repeated_requests
    start = DAY + timedelta(hours=6)
    clock = ManualClock(start)
    quiet = (("*", int((start - timedelta(minutes=40)).timestamp() * 1000), 2 ** 62 // 1000),)
    market = MarketConfig(book_rate=0.3, trade_rate=0.3, quiet=quiet)  # nothing trades any more
    with FakeTardisMachine(clock=clock, market=market, availability_delay=timedelta(seconds=60),
                           availability_mode="empty", default_symbols=SYMBOLS) as tm:
        for _ in range(4):  # a pass, then a restart a minute later, four times
            gapless = Gapless("deribit", SYMBOLS, ["trade"], lookback="2h",
                              database_url="sqlite:///%s" % (tmp_path / "g.db"), tardis_url=tm.http_url,
                              tardis_ws_url=tm.ws_url, now=tm.clock.now_us, history_delay="5m")
            try:
                gapless.heal()
            finally:
                gapless.stop()
            clock.advance(60)
        assert len(tm.requests) > 4  # probes and downloads were made
        assert repeated_requests(tm) == []


def test_a_minute_an_earlier_run_found_cached_empty_sends_every_stream_it_cuts_to_a_fresh_filter_set(tmp_path):
    """Harness seed 67016, in small: the silent minute is settled by a trade run; a trade_bar_10s run of the same
    filter set (the trades channel of the same symbols) is cut by that verdict and must get its own
    ``history_cached_empty`` entry, so that the next pass asks it with a fresh filter set and heals it."""
    from gapless import ledger
    from gapless.download import Downloader
    from gapless.silence_memory import CheckAnswers, SettledMinutes
    ten = DAY + timedelta(hours=10)
    clock = ManualClock(ten + timedelta(seconds=30))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=1.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=60), availability_mode="empty") as tm:
        poisoned = ten - timedelta(minutes=1)  # 09:59: another client asks it before it is available
        options = {"exchange": "deribit", "symbols": SYMBOLS, "from": poisoned.isoformat(),
                   "to": ten.isoformat(), "dataTypes": ["trade"]}
        requests.get(tm.http_url + "/replay-normalized", params={"options": json.dumps(options)}, timeout=10)
        minute = int(poisoned.timestamp()) * US
        assert tm.slices.poisoned("deribit", ["trades"], SYMBOLS) == [minute]
        clock.advance(20 * 60)
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        settled, answers = SettledMinutes(), CheckAnswers()
        a, b = minute - 9 * MINUTE_US, minute + 11 * MINUTE_US

        def download(data_type):
            downloader = Downloader(store, tm.http_url, workers=0, progress=False, now=clock.now_us)
            downloader.settled, downloader.check_answers = settled, answers
            return downloader.download("deribit", SYMBOLS, [data_type], a, b)

        def bars_asked_fresh():
            return [any(s.startswith("GAPLESS-FRESH") for s in r.options[0]["symbols"]) for r in tm.requests
                    if r.options and r.options[0].get("dataTypes") == ["trade_bar_10s"]]

        try:
            download("trade")  # finds 09:59 cached empty, settles it, and heals trade fresh
            assert dict(settled.of(SimpleRequest(a, b))).get(minute) == "history_cached_empty"
            download("trade_bar_10s")  # through the poisoned filter set: cut at 09:59 by the settled verdict
            assert bars_asked_fresh() == [False]
            for symbol in SYMBOLS:
                entries = ledger.entries(store, "deribit", symbol, "trade_bar_10s")
                assert any(e["reason"] == "history_cached_empty" and e["start"] < minute + MINUTE_US
                           and e["end"] > minute for e in entries), entries
            download("trade_bar_10s")  # the next pass: a filter set of its own, the minute comes back whole
            assert bars_asked_fresh() == [False, True]
            for symbol in SYMBOLS:
                covered = store.covered("deribit", symbol, "trade_bar_10s", "replay")
                assert any(x <= minute and y >= minute + MINUTE_US for x, y in covered), (symbol, covered)
        finally:
            store.close()


def test_harness_seed_76009_a_minute_cached_empty_just_after_a_history_outage_heals_at_the_next_pass(tmp_path):
    """Harness seed 76009, in small: the history recorder is down 09:40:00-09:52:30 and another client asked
    09:52 before it was available, so the stream's filter set holds it empty. Through that filter set the
    outage seems to last until the first line in 09:53, whose minute can never be claimed whole. It healed only at
    the outage's one retry after its day (a fresh filter set). Since seed 86984 the silent minutes of a history
    outage are checked: 09:52 is found cached empty, the ledger says so, and the next pass asks with a fresh filter
    set: the recorder shows up at 09:52:30 and 09:53 becomes replay."""
    from gapless import ledger
    from gapless.download import Downloader
    ten = DAY + timedelta(hours=10)
    clock = ManualClock(ten - timedelta(minutes=7, seconds=30))
    outage = Outage(ten - timedelta(minutes=20), ten - timedelta(minutes=7, seconds=30))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=1.0, trade_rate=1.0), replay_outages=[outage],
                           availability_delay=timedelta(seconds=60), availability_mode="empty") as tm:
        poisoned = ten - timedelta(minutes=8)  # 09:52, asked by another client before it is available
        options = {"exchange": "deribit", "symbols": SYMBOLS, "from": poisoned.isoformat(),
                   "to": (poisoned + timedelta(minutes=1)).isoformat(), "dataTypes": ["trade"]}
        requests.get(tm.http_url + "/replay-normalized", params={"options": json.dumps(options)}, timeout=10)
        assert tm.slices.poisoned("deribit", ["trades"], SYMBOLS) == [int(poisoned.timestamp()) * US]
        after = int(poisoned.timestamp()) * US + MINUTE_US  # 09:53, wholly after the outage's end
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        a, b = int((ten - timedelta(minutes=30)).timestamp()) * US, int(ten.timestamp()) * US

        def download():
            downloader = Downloader(store, tm.http_url, workers=0, progress=False, now=clock.now_us)
            downloader.download("deribit", SYMBOLS, ["trade"], a, b)
            return [store.covered("deribit", symbol, "trade", "replay") for symbol in SYMBOLS]

        def whole(covered):
            return any(x <= after and y >= after + MINUTE_US for x, y in covered)

        try:
            clock.advance(20 * 60)
            assert not any(whole(c) for c in download())  # the outage seems to end in 09:53
            for symbol in SYMBOLS:
                assert [e["reason"] for e in ledger.entries(store, "deribit", symbol, "trade")] == \
                    ["history_cached_empty"]
            clock.advance(60)  # the next pass, long before the day is over
            assert all(whole(c) for c in download())
            assert any(s.startswith("GAPLESS-FRESH") for s in tm.requests[-1].options[0]["symbols"])
        finally:
            store.close()


def test_harness_seed_86840_an_unproven_start_the_cache_holds_empty_is_asked_again_with_a_fresh_filter_set(tmp_path):
    """Harness seed 86840, in small: the history recorder is down 09:40:00-09:52:10 and the first download ends inside
    the hole, so the next one starts there (no line, no disconnect in its look-behind: an unproven start). Another
    client asked 09:52-09:54 before they were available, so the trades filter set holds them empty: the next run's
    first line is at 09:55, its liquidation claims start there, and the ledger said ``unproven_start``, asked
    again through the same poisoned filter set for good (seven times in the seed; the minutes stayed live). The
    silent minutes of an unproven start are now checked: cached empty, the entry says so, and the next pass asks
    it with a fresh filter set, which heals 09:53 and 09:54."""
    from gapless import ledger
    from gapless.download import Downloader
    ten = DAY + timedelta(hours=10)
    clock = ManualClock(ten - timedelta(minutes=10))
    outage = Outage(ten - timedelta(minutes=20), ten - timedelta(minutes=7, seconds=50))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=1.0, trade_rate=1.0), replay_outages=[outage],
                           availability_delay=timedelta(seconds=60), availability_mode="empty") as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        first, healed = ten - timedelta(minutes=7), ten - timedelta(minutes=5)  # 09:53, and 09:55 (exclusive)

        def download(end):
            downloader = Downloader(store, tm.http_url, workers=0, progress=False, now=clock.now_us)
            downloader.download("deribit", SYMBOLS, ["liquidation"], int((ten - timedelta(minutes=30)).timestamp()) * US,
                                int(end.timestamp()) * US)
            return [store.covered("deribit", symbol, "liquidation", "replay") for symbol in SYMBOLS]

        def whole(covered):
            a, b = int(first.timestamp()) * US, int(healed.timestamp()) * US
            return any(x <= a and y >= b for x, y in covered)

        def reasons():
            return {e["reason"] for symbol in SYMBOLS for e in ledger.entries(store, "deribit", symbol, "liquidation")}

        try:
            download(ten - timedelta(minutes=12))  # 09:30-09:48: ends inside the hole
            assert reasons() == {"history_outage"}
            clock.advance(2 * 60 + 40)  # 09:52:40: another client asks 09:52-09:54 too early
            poisoned = ten - timedelta(minutes=8)
            options = {"exchange": "deribit", "symbols": SYMBOLS, "from": poisoned.isoformat(),
                       "to": (poisoned + timedelta(minutes=3)).isoformat(), "dataTypes": ["trade"]}
            requests.get(tm.http_url + "/replay-normalized", params={"options": json.dumps(options)}, timeout=10)
            assert [int(poisoned.timestamp()) * US + k * MINUTE_US for k in range(3)] == \
                tm.slices.poisoned("deribit", ["trades"], SYMBOLS)
            clock.advance(20 * 60)
            assert not any(whole(c) for c in download(ten + timedelta(minutes=10)))  # 09:48 on, from the hole
            assert "history_cached_empty" in reasons()
            assert all(whole(c) for c in download(ten + timedelta(minutes=10)))
            assert any(s.startswith("GAPLESS-FRESH") for s in tm.requests[-1].options[0]["symbols"])
        finally:
            store.close()


def test_harness_seed_86993_a_quiet_tail_of_an_option_is_never_asked_past_its_expiration(tmp_path):
    """Harness seed 86993, in small: the last run before an option's expiration (08:00) was refused at the history
    edge and left a quiet tail [07:59:18, 08:00). Its retry reached further past the tail, as for a sampled stream
    whose sample comes with the next event, so it asked past the expiration (nothing comes there), met a hole of
    tardis' recording at 08:08:55 and held the option's last minute back as a history outage for the rest of the day:
    07:59 stayed live. A tail is now never asked past the end of an option's life."""
    from gapless import ledger
    from gapless.plan import plan_requests
    option = "BTC-26NOV26-86000-C"
    expiry = int((DAY + timedelta(days=1, hours=8)).timestamp()) * US
    store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
    try:
        ledger.record(store, "deribit", [(option, "option_summary", expiry - 42 * US, expiry, "quiet_tail")],
                      now_us=expiry - 30 * US, asked_end=expiry)
        now = expiry + 10 * MINUTE_US  # the tail is due, and history reaches far past the expiration
        requests_ = plan_requests(store, "deribit", [option], ["option_summary"], expiry - 60 * MINUTE_US,
                                  expiry + 60 * MINUTE_US, now_us=now, limit=expiry + 60 * MINUTE_US)
        assert requests_ and all(r.claim_end <= expiry for r in requests_), [r.describe() for r in requests_]
    finally:
        store.close()


def test_harness_seed_86984_a_book_whose_reconnect_snapshot_the_cache_holds_empty_is_asked_fresh_at_once(tmp_path):
    """Harness seed 86984, in small: the history recorder is down 09:30:00-09:52:10 and another client asked the book
    channel's 09:51-09:53 before they were available, so the reconnect snapshot (09:52:10) is cached empty for the
    quotes' filter set. Through it the book never comes back: the run claims nothing after the disconnect, and the
    ledger said ``history_outage`` for the rest of the day, held back until the day is over (the rest of the day
    stayed live). The outage's silent minutes are now checked: 09:52 is cached empty, the entry says so (to the day's
    end), and the next pass asks the day with a fresh filter set: 09:53 on is replay."""
    from gapless import ledger
    from gapless.download import Downloader
    ten = DAY + timedelta(hours=10)
    clock = ManualClock(ten - timedelta(minutes=7, seconds=20))
    outage = Outage(ten - timedelta(minutes=30), ten - timedelta(minutes=7, seconds=50))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=1.0, trade_rate=1.0), replay_outages=[outage],
                           availability_delay=timedelta(seconds=60), availability_mode="empty") as tm:
        poisoned = ten - timedelta(minutes=9)  # 09:51, 09:52 and 09:53, asked by another client before available
        options = {"exchange": "deribit", "symbols": SYMBOLS, "from": poisoned.isoformat(),
                   "to": (poisoned + timedelta(minutes=3)).isoformat(), "dataTypes": ["book_change"]}
        requests.get(tm.http_url + "/replay-normalized", params={"options": json.dumps(options)}, timeout=10)
        assert int(poisoned.timestamp()) * US + MINUTE_US in tm.slices.poisoned("deribit", ["book"], SYMBOLS)
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        first, last = int((ten - timedelta(minutes=6)).timestamp()) * US, int(ten.timestamp()) * US  # 09:54-10:00

        def download():
            downloader = Downloader(store, tm.http_url, workers=0, progress=False, now=clock.now_us)
            downloader.download("deribit", SYMBOLS, ["quote"], int((ten - timedelta(minutes=40)).timestamp()) * US,
                                last)
            return [store.covered("deribit", symbol, "quote", "replay") for symbol in SYMBOLS]

        def whole(covered):
            return any(x <= first and y >= last for x, y in covered)

        try:
            clock.advance(20 * 60)
            assert not any(whole(c) for c in download())  # no reconnect snapshot through the poisoned filter set
            for symbol in SYMBOLS:
                entries = ledger.entries(store, "deribit", symbol, "quote")
                assert any(e["reason"] == "history_cached_empty" and e["end"] >= int(DAY.timestamp()) * US + 86400 * US
                           for e in entries), entries
            clock.advance(60)  # the next pass, long before the day is over
            assert all(whole(c) for c in download())
            assert any(s.startswith("GAPLESS-FRESH") for s in tm.requests[-1].options[0]["symbols"])
        finally:
            store.close()


def test_a_clean_stop_closes_the_quiet_piece_of_a_trade_bar_stream_that_has_nothing_to_add_at_the_close():
    """Seen in test_faults_process' SIGKILL loop (2 runs in 6): after the last, undisturbed service stopped with exit
    0, a live ``trade_bar_1m`` segment ``<run>:0:q`` was still open. The quiet piece after the pending interval was
    written open; a trade in a later interval just before the stop made it empty at the close, so the closing
    batch did not write it and it stayed open for good."""
    import orjson
    from gapless.ingest import RunParser
    from gapless.runs import ReplayRequest

    def at(second):
        return "2026-11-25T10:%02d:%06.3fZ" % divmod(second, 60)

    head = {"symbol": "BTC-PERPETUAL", "exchange": "deribit"}

    def trade(second):
        return orjson.dumps(dict(head, type="trade", id="T%d" % second, price=100.0, amount=10, side="buy",
                                 timestamp=at(second), localTimestamp=at(second + 0.1)))

    def bar(end, opened, arrival):
        return orjson.dumps(dict(head, type="trade_bar", name="trade_bar_1m", interval=60000, kind="time", open=100.0,
                                 high=100.0, low=100.0, close=100.0, volume=10, buyVolume=10, sellVolume=0, trades=1,
                                 vwap=100.0, openTimestamp=at(opened), closeTimestamp=at(opened), timestamp=at(end),
                                 localTimestamp=at(arrival + 0.1)))

    def ticker(second):
        return orjson.dumps(dict(head, type="derivative_ticker", lastPrice=100.0, timestamp=at(second),
                                 localTimestamp=at(second + 0.1)))

    request = ReplayRequest("deribit", ("BTC-PERPETUAL",), ("trade_bar_1m", "derivative_ticker"), 0, 2 ** 62)
    parser = RunParser(request, source="live", live=True)
    batches = parser.feed([ticker(20), trade(30)]) + [parser.flush()]
    batches += parser.feed([trade(70), bar(60, 30, 70)]) + [parser.flush()]
    batches += parser.feed([ticker(180)]) + [parser.flush()]  # 10:02-10:02:55 provably without a trade: ":q"
    assert any(c.segment.endswith(":q") and c.is_open for c in batches[-1].claims)
    batches += parser.feed([trade(200), bar(120, 70, 200)]) + [parser.close("stop")]  # pending 10:03 at the stop
    last = {}
    for batch in batches:
        for claim in batch.claims:
            last[(claim.segment, claim.symbol, claim.data_type)] = claim
    assert len(last) == 3 and not [c for c in last.values() if c.is_open]
    assert {c.end_reason for c in last.values()} == {"stop"}


class SimpleRequest:
    """What :meth:`gapless.silence_memory.SettledMinutes.of` reads of a request (the trades filter set of SYMBOLS)."""

    def __init__(self, start, end):
        self.start, self.request_end = start, end
        self.data_types, self.symbols = ("trade",), tuple(SYMBOLS)


@pytest.mark.slow
def test_harness_seed_77014_a_check_asked_by_a_download_worker_is_not_asked_again_by_the_next_pass(tmp_path):
    """The whole example (about 40 s): worker processes, a silent symbol near the edge, restarts."""
    from tests.truth_checks import check
    from tests.truth_harness import draw, run
    schedule = draw(77014)
    assert schedule.workers == 1 and "SOL-PERPETUAL" in schedule.symbols
    check(run(schedule, tmp_path))


@pytest.mark.slow
def test_harness_seed_81067_a_silent_stretch_that_hides_a_history_outage_is_not_claimed_quiet(tmp_path):
    """The whole example (about 70 s): another client asked 23:01-23:07 too early, so the trades filter set holds
    those minutes empty, the disconnect of a history outage at 23:05:52 included. A trade_bar_10s run through that
    filter set saw one long silence up to 23:43:13; the silence check's fresh request started inside the hole (no
    disconnect, no lines: "a quiet market"), and 23:07-23:09 and 23:43 were served as replay with no trades. The
    check now looks behind the stretch with disconnect messages on: minutes of a hole are never quiet."""
    from tests.truth_checks import check
    from tests.truth_harness import draw, run
    schedule = draw(81067)
    assert schedule.exchange == "kraken" and "trade_bar_10s" in schedule.data_types and schedule.early_asks
    check(run(schedule, tmp_path))


def test_book_tickers_are_no_evidence_for_a_book_samples_claim():
    """Harness seeds 80101 and 81091: with book_ticker beside quote_1m, every book_ticker row counted as book
    evidence (its table name starts with ``book_``), so a live quote_1m minute was claimed before its sample came and
    served with the previous minute's book. A book ticker comes from the ticker channel: the quote_1m claim is the
    same with and without it."""
    import orjson
    from gapless.ingest import RunParser
    from gapless.runs import ReplayRequest

    def at(second):
        return "2026-11-25T10:%02d:%06.3fZ" % divmod(second, 60)

    head = {"symbol": "BTC-PERPETUAL", "exchange": "deribit"}
    book = [{"price": 100.0, "amount": 1.0}]
    quote = orjson.dumps(dict(head, type="book_snapshot", name="quote_1m", depth=1, interval=60000, bids=book,
                              asks=[{"price": 101.0, "amount": 1.0}], timestamp=at(60), localTimestamp=at(65)))
    tickers = [orjson.dumps(dict(head, type="book_ticker", bidPrice=100.0, bidAmount=1, askPrice=101.0, askAmount=1,
                                 timestamp=at(s), localTimestamp=at(s + 0.1))) for s in range(70, 200, 5)]

    def quote_claim_end(lines):
        request = ReplayRequest("deribit", ("BTC-PERPETUAL",), ("quote_1m", "book_ticker"), 0, 2 ** 62)
        parser = RunParser(request, source="live", live=True)
        batches = parser.feed(lines) + [parser.flush()]
        return max((c.end for b in batches for c in b.claims if c.data_type == "quote_1m"), default=None)

    from gapless.timeutil import parse_timestamp_us
    # the book's own sample (10:01:00, arrived 10:01:05) proves its interval; ticker rows up to 10:03:15 prove
    # nothing about when the book's next sample is due: no quote_1m claim reaches 10:02
    end = quote_claim_end([quote] + tickers)
    assert end is None or end < parse_timestamp_us(at(120))


def test_harness_seed_86045_a_minute_in_a_hole_of_history_is_not_checked_again_after_a_restart(tmp_path):
    """Harness seed 86045: a silent minute of a book-derived run that a fresh request showed inside a hole of
    tardis' own recording (``history_outage``) was not settled, so after each restart the next from-00:00 run
    checked it again through its own filter set: the very same request, sooner than its backoff. The minute is
    now settled with its hole when the hole is closed, and a later run (a new process) cuts its claims at the
    hole without asking."""
    from gapless.download import Downloader
    from gapless.silence_memory import CheckAnswers, SettledMinutes
    from tests.truth_checks import repeated_requests
    ten = DAY + timedelta(hours=10)
    clock = ManualClock(ten)
    hole = Outage(ten - timedelta(minutes=30, seconds=17), ten - timedelta(minutes=20))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=1.0, trade_rate=1.0),
                           replay_outages=[hole], availability_delay=timedelta(seconds=60)) as tm:
        path = tmp_path / "g.db"
        a, b = ten - timedelta(minutes=40), ten - timedelta(minutes=5)

        def run(end):  # one process: the settled minutes restored from the database, no answers in memory
            store = Storage("sqlite:///%s" % path)
            try:
                settled = SettledMinutes.restored(store, "deribit")
                downloader = Downloader(store, tm.http_url, workers=0, progress=False, now=clock.now_us)
                downloader.settled, downloader.check_answers = settled, CheckAnswers()
                downloader.download("deribit", SYMBOLS, ["quote"], int(a.timestamp()) * US, int(end.timestamp()) * US)
                settled.save(store, "deribit")
                return {s: store.covered("deribit", s, "quote", "replay") for s in SYMBOLS}
            finally:
                store.close()

        def checks():  # the silence checks through the run's own filter set
            return [r for r in tm.requests if r.options and r.options[0].get("dataTypes") == ["book_change"]
                    and not any(s.startswith("GAPLESS-") for s in r.options[0]["symbols"])]

        run(b)
        assert len(checks()) == 1
        for minutes in (3, 6):  # restarts: the same day re-read from 00:00 (the 00:00 rule), a little further
            clock.advance(3 * 60)
            covered = run(b + timedelta(minutes=minutes))
            down_from, down_to = int(hole.start.timestamp()) * US, int(hole.end.timestamp()) * US
            for symbol, ranges in covered.items():  # never claimed across the hole
                assert not any(x < down_to and y > down_from for x, y in ranges), (symbol, ranges)
        assert len(checks()) == 1, checks()
        assert repeated_requests(tm) == []


def test_harness_seed_84441_another_clients_early_ask_cut_by_a_replay_fault_does_not_stop_the_example():
    """Harness seed 84441: the schedule's replay faults hit the next requests whoever makes them, and the first
    was the harness's own "another client asks too early": its cut answer raised out of the harness and ended the
    example after 3.8 s, before gapless did anything. That client now shrugs a cut off; the server served it."""
    from tests.truth_harness import _ask_too_early
    ten = DAY + timedelta(hours=10)
    with FakeTardisMachine(clock=ManualClock(ten), market=MarketConfig(book_rate=5.0, trade_rate=5.0)) as tm:
        tm.add_replay_fault("cut", after_lines=3)
        at = int(ten.timestamp() * US) - 5 * MINUTE_US
        _ask_too_early(tm, "deribit", at, "trade", ("BTC-PERPETUAL",), 4)
        assert len(tm.requests) == 1 and tm.requests[0].fault == "cut"


@pytest.mark.slow
def test_harness_seed_86562_a_book_cut_known_from_the_start_reports_every_book_it_cuts(tmp_path):
    """The whole example (about 45 s): another client asked ``book_change`` of all three symbols too early
    (23:39-23:41 held empty for that symbol set). After two restarts, the day-end upgrade asked the day's
    ``book_snapshot_5_1s`` for the same three symbols. Its silence check knew the cut from an earlier run's settled
    minutes, and it cut BTC's claims in every batch. It made the ledger entry only in the batch where the cut was
    first set, and only for books whose claims reached it there; BTC's did so only in the last batch. So nothing
    asked BTC fresh, the same request came again an hour later, and 23:52-23:59 stayed live for good. Each book
    the cut reaches now gets its entry, in whichever batch its claims first reach the cut."""
    from tests.truth_checks import check
    from tests.truth_harness import draw, run
    schedule = draw(86562)
    assert schedule.early_asks and len(schedule.restarts) == 2 and "book_snapshot_5_1s" in schedule.data_types
    check(run(schedule, tmp_path))

