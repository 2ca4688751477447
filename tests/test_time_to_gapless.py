"""Time to gapless (issue 10): today's history at once, the history delay measured, gapless when data allows.

The double's history lags by a few seconds while gapless is configured with a much larger delay: the
delay in use must be measured, and the series must become gapless about the real delay plus two minutes
after a cold start.
"""
import json
import warnings
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from gapless import GapWarning, get_data_without_gap
from gapless.cli import main
from gapless.service import Gapless
from tests.fake_tardis import FakeClock, FakeTardisMachine, ManualClock, MarketConfig
from tests.truth_checks import false_minutes
from tests.truth_harness import advance

UTC = timezone.utc
DAY = datetime(2026, 11, 25, tzinfo=UTC)
SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
TYPES = ["quote_1m", "trade_bar_1m"]
RECORDER = {"backoff_base": 0.01, "backoff_cap": 0.05, "flush_interval": 0.02, "recv_timeout": 0.01,
            "data_silence": 3600.0,
            "dead_after": 3600.0}
S = 1_000_000


def at(hh_mm_ss, day=0):
    h, m, s = (int(p) for p in (hh_mm_ss + ":0").split(":")[:3])
    return int((DAY + timedelta(days=day, hours=h, minutes=m, seconds=s)).timestamp()) * S


def gapless_on(tm, tmp_path, **options):
    options.setdefault("lookback", "3h")
    options.setdefault("history_delay", "15m")
    return Gapless("deribit", SYMBOLS, options.pop("types", TYPES), database_url="sqlite:///%s" % (
        tmp_path / "g.db"), tardis_url=tm.http_url, tardis_ws_url=tm.ws_url, rebuild_interval="3600s",
        now=tm.clock.now_us, recorder_options=RECORDER, **options)


def from_midnight(tm):
    """From-00:00 requests per (day, data types)."""
    return Counter((r.from_.date().isoformat(), tuple(r.options[0]["dataTypes"])) for r in tm.requests
                   if r.from_.strftime("%H:%M") == "00:00")


def passes_until_gapless(gapless, tm, started, until):
    """Passes as the service makes them (every minute, plus the one planned for when history reaches the live
    recording) until the series is gapless: the clock reading then, or None."""
    clock, next_tick = tm.clock, started + 60 * S
    while clock.now_us() < until:
        due = gapless.next_pass_due()
        step = min(next_tick, due if due and due > clock.now_us() else next_tick)
        advance(clock, tm, min(step, clock.now_us() + 10 * S), [gapless.recorder])
        if clock.now_us() >= step:
            gapless.heal()
            if step == next_tick:
                next_tick += 60 * S
            if gapless.is_gapless():
                return clock.now_us()
    return None


def test_a_cold_start_gets_today_at_once_and_is_gapless_about_the_real_delay_plus_two_minutes(tmp_path):
    real_delay = 30 * S
    clock = ManualClock(at("00:40:20"))
    with FakeTardisMachine(clock=clock, availability_delay=timedelta(microseconds=real_delay),
                           market=MarketConfig(book_rate=1.0, trade_rate=1.0)) as tm:
        gapless = gapless_on(tm, tmp_path)
        started = clock.now_us()
        gapless.recorder.start()
        try:
            advance(clock, tm, started, [gapless.recorder])
            gapless.heal()
            # after the first pass: every minute of the window up to the horizon is replay, today's too
            # (up to where the delay says history reaches: in error mode requests reach past it on purpose)
            limit = gapless.horizon.delay_watermark(clock.now_us()) - 60 * S
            frames = gapless.series(end=limit)
            for key, frame in frames.items():
                assert set(frame["source"]) == {"replay"}, (key, frame[frame["source"] != "replay"].index[:3])
            assert gapless.horizon.state()["delay"] < real_delay + 10 * S  # measured, not the configured 15 min
            gapless_at = passes_until_gapless(gapless, tm, started, started + 6 * 60 * S)
            frames = gapless.series()
        finally:
            gapless.stop()
    assert gapless_at is not None, "never gapless"
    assert gapless_at - started <= real_delay + 2 * 60 * S + 10 * S, (gapless_at - started) / S
    assert false_minutes(tm, frames) == []
    counts = from_midnight(tm)
    # today: one from-00:00 request at once and one when history reached the recording; yesterday: one
    assert counts[("2026-11-25", ("quote_1m",))] <= 2 and counts[("2026-11-24", ("quote_1m",))] == 1, counts


@pytest.mark.parametrize("second", [2, 31, 58])
def test_where_unavailable_minutes_are_refused_a_cold_start_is_gapless_within_the_real_delay_plus_80s(second,
                                                                                                    tmp_path):
    # issue 21, item 6: the original design's example (quote_1m, history 180 s behind, cold start) at any second
    # of the minute; requests reach past the proven edge (nothing is cached where minutes are refused)
    real_delay = 180 * S
    clock = ManualClock(at("10:40:%02d" % second))
    with FakeTardisMachine(clock=clock, availability_delay=timedelta(microseconds=real_delay),
                           market=MarketConfig(book_rate=1.0, trade_rate=1.0)) as tm:
        gapless = gapless_on(tm, tmp_path, types=["quote_1m"], lookback="6h")
        started = clock.now_us()
        gapless.recorder.start()
        try:
            gapless.heal()
            assert gapless.horizon.state()["mode"] == "error"
            gapless_at = passes_until_gapless(gapless, tm, started, started + real_delay + 5 * 60 * S)
            frames = gapless.series()
        finally:
            gapless.stop()
    assert gapless_at is not None, "never gapless"
    assert gapless_at - started <= real_delay + 80 * S, (gapless_at - started) / S
    assert false_minutes(tm, frames) == []


@pytest.mark.parametrize("mode", ["error", "empty"])
def test_the_history_delay_is_measured_with_a_few_probes_and_follows_the_server(mode, tmp_path, isolated_cli,
                                                                                  capsys):
    clock = ManualClock(at("00:40:20"))
    with FakeTardisMachine(clock=clock, availability_delay=timedelta(seconds=40), availability_mode=mode,
                           market=MarketConfig(book_rate=1.0, trade_rate=1.0)) as tm:
        gapless = gapless_on(tm, tmp_path, types=["trade", "quote_1m"])
        try:
            result = gapless.measure_history_delay()
            assert result.probes <= 16, result
            # history reaches what the server serves: in empty mode whole minutes only (upstream slices)
            served = clock.now_us() - tm.served_until(clock.now_us())
            assert served <= gapless.horizon.state()["delay"] <= served + 10 * S, gapless.horizon.state()
            # refusals show "error" at once; empty answers only where live has trades (none recorded yet)
            assert gapless.horizon.state()["mode"] == ("error" if mode == "error" else "unknown")
            gapless.heal()
            # the server falls further behind: a refusal (error mode) or the periodic probe (empty mode) notices
            tm.availability_delay = timedelta(minutes=3)
            clock.advance(90)
            gapless.heal()
            if mode == "empty":
                clock.advance(30 * 60)
                gapless.heal()
            served = clock.now_us() - tm.served_until(clock.now_us())
            assert served <= gapless.horizon.state()["delay"] <= served + 20 * S, gapless.horizon.state()
            # and catches up again: the periodic probe notices
            tm.availability_delay = timedelta(seconds=20)
            clock.advance(30 * 60)
            gapless.heal()
            served = clock.now_us() - tm.served_until(clock.now_us())
            assert served <= gapless.horizon.state()["delay"] <= served + 10 * S, gapless.horizon.state()
            # empty answers past the edge never became quiet minutes
            assert false_minutes(tm, gapless.series()) == []
            measured = gapless.horizon.state()["measured_at"]
            report = gapless.status()
        finally:
            gapless.stop()
        assert report["exchanges"][0]["history_delay_measured_at"] is not None
        assert report["exchanges"][0]["history_delay_seconds"] == gapless.horizon.state()["delay"] // S
        # the command line shows the same, from the database
        assert main(["status", "--json", "--exchange", "deribit", "--symbols", ",".join(SYMBOLS), "--data-types",
                     "trade,quote_1m", "--database", "sqlite:///%s" % (tmp_path / "g.db"), "--lookback", "3h"],
                    now=lambda: clock.now()) == 0
        shown = json.loads(capsys.readouterr().out)["exchanges"][0]
        assert shown["history_delay_seconds"] == gapless.horizon.state()["delay"] // S
        assert shown["history_delay_measured_at"] is not None and measured is not None
        assert main(["status", "--exchange", "deribit", "--symbols", ",".join(SYMBOLS), "--data-types",
                     "trade,quote_1m", "--database", "sqlite:///%s" % (tmp_path / "g.db"), "--lookback", "3h"],
                    now=lambda: clock.now()) == 0
        assert "(measured 2026-11-25T" in capsys.readouterr().out


@pytest.mark.slow
def test_get_data_without_gap_with_a_week_and_a_fifteen_minute_warmup_returns_gapless_early(tmp_path,
                                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    clock = FakeClock(start=DAY + timedelta(minutes=20, seconds=30), speed=30.0)
    with FakeTardisMachine(clock=clock, availability_delay=timedelta(seconds=20),
                           market=MarketConfig(book_rate=0.2, trade_rate=0.2)) as tm:
        import time
        began = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("error", GapWarning)
            frames = get_data_without_gap("deribit", ["BTC-PERPETUAL"], ["quote_1m"], lookback=timedelta(weeks=1),
                                          recording_warmup_seconds=15 * 60, database_url="sqlite:///%s" % (
                                              tmp_path / "g.db"), tardis_url=tm.http_url, tardis_ws_url=tm.ws_url,
                                          now=clock.now_us, poll_seconds=0.2)
        waited = time.monotonic() - began
    frame = frames[("BTC-PERPETUAL", "quote_1m")]
    assert len(frame) == 7 * 1440 and not frame["missing"].any()
    assert waited < 15 * 60 / 4, waited  # well before the warm-up's end (a fast clock: 30x)
    assert false_minutes(tm, frames) == []
