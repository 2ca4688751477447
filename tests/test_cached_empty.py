"""Issue 21, item 5: tardis-machine keeps a minute asked before it was available EMPTY, for good, per filter set.

The double caches slices like the real server (tests/fake_tardis/slices.py). Any client can poison a stream's
filter set: here another client asks minutes too early, then a new service downloads them. Checked against
the double's market model, never against gapless code.
"""
import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pandas as pd
import requests

from gapless.service import Gapless
from tests.fake_tardis import FakeTardisMachine, ManualClock, MarketConfig
from tests.truth import minute_truth
from tests.truth_checks import false_minutes

UTC = timezone.utc
DAY = datetime(2026, 11, 25, tzinfo=UTC)
SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
S = 1_000_000
MINUTE = 60 * S
RECORDER = {"backoff_base": 0.01, "backoff_cap": 0.05, "flush_interval": 0.02, "recv_timeout": 0.01,
            "data_silence": 3600.0, "dead_after": 3600.0}


def at(hh_mm):
    h, m = (int(p) for p in hh_mm.split(":"))
    return int((DAY + timedelta(hours=h, minutes=m)).timestamp()) * S


def ask_too_early(tm, minute_us, types):
    """Another client of the server (an older gapless' probe, a notebook) asks a minute before it is available."""
    start = datetime.fromtimestamp(minute_us / S, UTC)
    options = {"exchange": "deribit", "symbols": SYMBOLS, "from": start.isoformat(),
               "to": (start + timedelta(minutes=1)).isoformat(), "dataTypes": types}
    body = requests.get(tm.http_url + "/replay-normalized", params={"options": json.dumps(options)}, timeout=10)
    assert body.status_code == 200 and not body.content  # empty: not available yet


def service(tm, tmp_path, types, lookback="30m"):
    return Gapless("deribit", SYMBOLS, types, database_url="sqlite:///%s" % (tmp_path / "g.db"),
                   tardis_url=tm.http_url, tardis_ws_url=tm.ws_url, rebuild_interval="3600s", lookback=lookback,
                   history_delay="15m", now=tm.clock.now_us, recorder_options=RECORDER)


def after_early_asks(tmp_path, asks, types, quiet=()):
    """Another client asks ``asks`` ([(minute, data types)]) while history is 15 minutes behind; later, with history 3
    minutes behind, a new service with a 30-minute lookback makes two passes. The machine (stopped), the series
    after each pass, the status after the first and the claim limit at the end."""
    clock = ManualClock(DAY + timedelta(hours=10, minutes=0, seconds=20))
    with FakeTardisMachine(clock=clock, availability_delay=timedelta(minutes=15), availability_mode="empty",
                           market=MarketConfig(book_rate=1.0, trade_rate=1.0, quiet=quiet)) as tm:
        for minute, data_types in asks:
            ask_too_early(tm, minute, data_types)
        poisoned = {channels: tm.slices.poisoned("deribit", [channels], SYMBOLS) for channels in ("trades", "book")}
        tm.availability_delay = timedelta(minutes=3)
        clock.set(DAY + timedelta(hours=10, minutes=16, seconds=20))
        gapless = service(tm, tmp_path, types)
        try:
            gapless.heal()
            first, status = gapless.series(), gapless.status()
            gapless.heal()  # the next pass asks the cached-empty minutes with a filter set of their own
            healed, limit = gapless.series(), gapless.horizon.claim_limit(clock.now_us())
        finally:
            gapless.stop()
    return SimpleNamespace(tm=tm, poisoned=poisoned, first=first, status=status, healed=healed, limit=limit)


def test_minutes_another_client_asked_too_early_are_never_served_as_quiet_replay_and_are_healed_fresh(tmp_path):
    poisoned = [at("09:47"), at("09:50"), at("09:51"), at("09:55")]
    # the trades channel of both symbols: the filter set of trade and trade_bar_1m
    run = after_early_asks(tmp_path, [(minute, ["trade"]) for minute in poisoned], ["trade", "trade_bar_1m"])
    assert run.poisoned["trades"] == poisoned
    tm, first, status, healed = run.tm, run.first, run.status, run.healed
    for frames in (first, healed):
        assert false_minutes(tm, frames) == []
    for minute in poisoned:
        label = pd.Timestamp(minute, unit="us", tz="UTC")
        for key in (("BTC-PERPETUAL", "trade"), ("ETH-PERPETUAL", "trade_bar_1m")):
            assert first[key].loc[label, "source"] == "missing", (key, label)
            truth = minute_truth(tm.market, "deribit", key[0], key[1], minute, minute + MINUTE)
            assert truth["trades"].iloc[0] > 0  # a busy minute: the cached answer had none of its trades
            assert healed[key].loc[label, "source"] == "replay", (key, label)
            assert healed[key].loc[label, "trades"] == truth["trades"].iloc[0]
    gaps = [g for s in status["streams"] for g in s["gaps"] if s["symbol"] == "BTC-PERPETUAL"]
    reasons = {g["reason"] for g in gaps if at("09:46") <= pd.Timestamp(g["start"]).value // 1000 <= at("09:56")}
    assert reasons == {"history_cached_empty"}, gaps
    # the fresh requests named a symbol no exchange lists; no stream request named one
    fresh = [r for r in tm.requests if any(s.startswith("GAPLESS-FRESH-") for s in r.options[0]["symbols"])]
    assert fresh and all(r.options[0]["dataTypes"] in (["trade"], ["trade_bar_1m"], ["trade", "trade_bar_1m"])
                         for r in fresh)


def test_gapless_itself_never_fills_a_streams_cache_with_a_minute_not_available_yet(tmp_path):
    clock = ManualClock(DAY + timedelta(hours=10, seconds=20))
    with FakeTardisMachine(clock=clock, availability_delay=timedelta(minutes=3), availability_mode="empty",
                           market=MarketConfig(book_rate=1.0, trade_rate=1.0)) as tm:
        gapless = service(tm, tmp_path, ["trade", "trade_bar_1m", "quote_1m"], lookback="40m")
        gapless.recorder.start()
        try:
            for _ in range(12):  # passes a minute apart while history moves on and live records
                from tests.truth_harness import advance
                advance(clock, tm, clock.now_us() + MINUTE, [gapless.recorder])
                gapless.heal()
            frames = gapless.series()
            mode = gapless.horizon.state().get("mode")
            shown = gapless.status()["exchanges"][0]["history_not_yet_available"]
        finally:
            gapless.stop()
        # the probes asked minutes not available yet through filter sets of their own; the streams never did
        for channels in (["trades"], ["book"]):
            assert tm.slices.poisoned("deribit", channels, SYMBOLS) == [], channels
        assert mode == shown == "empty"  # live had trades where history answered empty: detected, and shown
    assert false_minutes(tm, frames) == []


def test_a_book_rebuilt_across_a_cached_empty_minute_is_never_served_and_the_day_is_healed_fresh(tmp_path):
    poisoned = at("09:50")
    # the book channel: the filter set of quote and quote_1m
    run = after_early_asks(tmp_path, [(poisoned, ["book_change"])], ["quote", "quote_1m"])
    assert run.poisoned["book"] == [poisoned]
    tm, first, healed, limit = run.tm, run.first, run.healed, run.limit
    for frames in (first, healed):
        assert false_minutes(tm, frames) == []
    for key in (("BTC-PERPETUAL", "quote"), ("ETH-PERPETUAL", "quote_1m")):
        after = first[key].loc[pd.Timestamp(poisoned, unit="us", tz="UTC"):]
        assert set(after["source"]) == {"missing"}, key  # nothing from the poisoned minute on
        upto = healed[key].loc[:pd.Timestamp(limit - MINUTE, unit="us", tz="UTC")]
        assert set(upto["source"]) == {"replay"}, key  # the day asked again with a fresh filter set


def test_a_quiet_stretch_whose_next_event_fell_in_a_cached_empty_minute_is_not_claimed_from_it(tmp_path):
    # harness seed 50019: BTC's book was quiet for a while and its next change came in a minute the cache held
    # empty; the sample closing the last interval before the quiet stretch comes with that next change, so it was
    # lost too, and the run claimed the quiet minutes from a sample it never stored
    quiet = (("BTC-PERPETUAL", at("09:47") // 1000 + 30_500, at("09:50") // 1000 + 20_500),)
    run = after_early_asks(tmp_path, [(at("09:50"), ["book_change"])], ["quote_10s", "quote"], quiet=quiet)
    tm, first, healed = run.tm, run.first, run.healed
    assert false_minutes(tm, first) == [] and false_minutes(tm, healed) == []
    btc = first[("BTC-PERPETUAL", "quote_10s")]["source"]
    assert btc.loc[pd.Timestamp(at("09:47"), unit="us", tz="UTC")] == "missing"
    assert set(healed[("BTC-PERPETUAL", "quote_10s")]["source"].loc[:pd.Timestamp(at("10:10"), unit="us", tz="UTC")]) \
        == {"replay"}
