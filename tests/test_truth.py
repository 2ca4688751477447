"""The market-model truth (tests/truth.py) against the double's own replay and live output.

Every check here rebuilds minutes from real HTTP/websocket output of the double over clean
ranges (no outages) and compares them with :func:`minute_truth`, which never reads those
lines: two independent paths from one market model must agree.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
import requests
import websocket

from tests.fake_tardis import FakeClock, FakeTardisMachine, ManualClock, MarketConfig
from tests.fake_tardis.render import parse_ts_us
from tests.truth import TRADE_COLUMNS, minute_truth, served_whole_minutes, trades_truth, truth_columns, whole_minutes

UTC = timezone.utc
DAY = datetime(2026, 11, 25, tzinfo=UTC)
D0 = int(DAY.timestamp()) * 1_000_000
MIN = 60_000_000
SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL", "SILENT-PERP"]
TYPES = ["trade", "trade_bar_1m", "trade_bar_10s", "quote", "quote_1m", "quote_10s", "book_snapshot_5_1s",
         "derivative_ticker"]
RATES = dict(book_rate=0.5, trade_rate=0.5)
QUIET = (("BTC-PERPETUAL", D0 // 1000 + 3 * 60_000, D0 // 1000 + 6 * 60_000), ("SILENT-PERP", 0, 2 ** 62))
CONFIGS = {"plain": MarketConfig(**RATES), "skew-2000": MarketConfig(skew_ms=-2000, **RATES),
           "skew+2000": MarketConfig(skew_ms=2000, **RATES), "quiet": MarketConfig(quiet=QUIET, **RATES)}
END = 10  # minutes compared: [00:00, 00:10) from a replay of [00:00, 00:12) (the last interval needs a later event)


def replay(tm, frm, to, types, symbols) -> list[dict]:
    options = {"exchange": "deribit", "symbols": symbols, "from": frm, "to": to, "dataTypes": types}
    r = requests.get(f"{tm.http_url}/replay-normalized", params={"options": json.dumps(options)}, timeout=30)
    assert r.status_code == 200 and r.content.endswith(b"\n")
    return [json.loads(x) for x in r.content.splitlines()]


@pytest.fixture(scope="module", params=list(CONFIGS))
def served(request):
    """(machine, its replay of 00:00-00:12 for every type and symbol) per market config."""
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(minutes=30)), market=CONFIGS[request.param]) as tm:
        yield tm, replay(tm, "2026-11-25T00:00", "2026-11-25T00:12", TYPES, SYMBOLS)


def minutes_index(first: int, end: int) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(np.arange(D0 + first * MIN, D0 + end * MIN, MIN), unit="us", utc=True),
                            name="minute")


def truth(tm, symbol, data_type, first=0, end=END) -> pd.DataFrame:
    return minute_truth(tm.market, "deribit", symbol, data_type, D0 + first * MIN, D0 + end * MIN)


# -- the double's output, folded into minutes (independently of truth.py) ---------------------
def bars_per_minute(msgs, symbol, name, index) -> pd.DataFrame:
    """Bars stamped at interval ends, aggregated into the minute they close in (NaN rows: no bar)."""
    bars = [m for m in msgs if m.get("name") == name and m["symbol"] == symbol and m["type"] == "trade_bar"]
    rows = {}
    for b in bars:
        end = parse_ts_us(b["timestamp"])
        rows.setdefault(-(-end // MIN) * MIN - MIN, []).append(b)
    out = pd.DataFrame(np.nan, index=index, columns=list(TRADE_COLUMNS))
    for label, group in rows.items():
        at = pd.Timestamp(label, unit="us", tz=UTC)
        if at not in out.index:
            continue
        volume = sum(b["volume"] for b in group)
        out.loc[at] = [group[0]["open"], max(b["high"] for b in group), min(b["low"] for b in group),
                       group[-1]["close"], volume, sum(b["buyVolume"] for b in group),
                       sum(b["sellVolume"] for b in group), sum(b["trades"] for b in group),
                       sum(b["vwap"] * b["volume"] for b in group) / volume]
    return out


def _levels(side: list, depth: int) -> list[float]:
    out = []
    for k in range(depth):
        level = side[k] if k < len(side) else {}
        out += [level.get("price", np.nan), level.get("amount", np.nan)]
    return out


def samples_at_close(msgs, symbol, name, depth, index) -> pd.DataFrame:
    """The last sample stamped at (interval samplers) or before (``quote``) each minute's end, carried on."""
    samples = [m for m in msgs if m.get("name") == name and m["symbol"] == symbol]
    stamps = np.array([parse_ts_us(m["timestamp"]) for m in samples], dtype=np.int64)
    realtime = bool(samples) and samples[0]["interval"] == 0
    out = pd.DataFrame(np.nan, index=index, columns=list(truth_columns(name)))
    for at in index:
        end = at.value // 1000 + MIN
        k = int(np.searchsorted(stamps, end, side="left" if realtime else "right")) - 1
        if k < 0:
            continue
        m = samples[k]
        bids, asks = _levels(m["bids"], depth), _levels(m["asks"], depth)
        row = bids[:2] + asks[:2] + [(bids[0] + asks[0]) / 2]
        row += bids[2:] + asks[2:]
        out.loc[at] = row
    return out


def ticker_at_close(msgs, symbol, index) -> pd.DataFrame:
    ticks = [m for m in msgs if m["type"] == "derivative_ticker" and m["symbol"] == symbol]
    stamps = np.array([parse_ts_us(m["timestamp"]) for m in ticks], dtype=np.int64)
    out = pd.DataFrame(np.nan, index=index, columns=list(truth_columns("derivative_ticker")))
    for at in index:
        k = int(np.searchsorted(stamps, at.value // 1000 + MIN, side="left")) - 1
        if k >= 0:
            m = ticks[k]
            out.loc[at] = [m["lastPrice"], m["openInterest"], m["fundingRate"], m["indexPrice"], m["markPrice"]]
    return out


# -- cross-checks ------------------------------------------------------------------------------
def silent(tm, symbol) -> bool:
    """Whether ``symbol`` never trades on this machine's market (SILENT-PERP of the quiet config)."""
    return any(s == symbol and a <= 0 for s, a, _ in tm.market.config.quiet)


def first_trade_minute(tm) -> int:
    # with a negative skew the first |skew| of 00:00 (exchange) arrived before local 00:00: not in the replay
    return 1 if tm.market.config.skew_ms < 0 else 0


@pytest.mark.parametrize("name", ["trade_bar_1m", "trade_bar_10s"])
@pytest.mark.parametrize("symbol", SYMBOLS)
def test_bars_aggregate_to_the_minute_truth(served, name, symbol):
    tm, msgs = served
    first = first_trade_minute(tm)
    want = truth(tm, symbol, name, first)
    got = bars_per_minute(msgs, symbol, name, want.index)
    with_bar = got["trades"].notna()
    assert (want.loc[~with_bar, "trades"] == 0).all()  # a minute without a bar had no trade
    if not silent(tm, symbol):
        assert with_bar.sum() >= END - first - (3 if tm.market.config.quiet else 0)
    exact = [c for c in TRADE_COLUMNS if c != "vwap"]
    pd.testing.assert_frame_equal(got.loc[with_bar, exact], want.loc[with_bar, exact], check_exact=True)
    # vwap: the bar's running average vs sum(price * amount) / volume: equal up to float rounding
    np.testing.assert_allclose(got.loc[with_bar, "vwap"], want.loc[with_bar, "vwap"], rtol=1e-12)


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_trades_equal_truth_trades(served, symbol):
    tm, msgs = served
    lo, hi = D0 + MIN, D0 + END * MIN  # inside the replay whatever the skew
    got = [{"id": m["id"], "price": m["price"], "amount": m["amount"], "side": m["side"],
            "timestamp": parse_ts_us(m["timestamp"]) // 1000}
           for m in msgs if m["type"] == "trade" and m["symbol"] == symbol and lo <= parse_ts_us(m["timestamp"]) < hi]
    want = trades_truth(tm.market, "deribit", symbol, lo, hi).to_dict("records")
    assert got == want and silent(tm, symbol) == (not want)


@pytest.mark.parametrize("name,depth", [("quote", 1), ("quote_1m", 1), ("quote_10s", 1), ("book_snapshot_5_1s", 5)])
@pytest.mark.parametrize("symbol", SYMBOLS)
def test_book_samples_at_close_equal_truth(served, name, depth, symbol):
    tm, msgs = served
    want = truth(tm, symbol, name)
    got = samples_at_close(msgs, symbol, name, depth, want.index)
    assert want.notna().all().all()  # the book of the day exists from its 00:00 snapshot on
    pd.testing.assert_frame_equal(got, want, check_exact=True)


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_tickers_at_close_equal_truth(served, symbol):
    tm, msgs = served
    want = truth(tm, symbol, "derivative_ticker")
    got = ticker_at_close(msgs, symbol, want.index)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert want.isna().all().all() == silent(tm, symbol)


# -- truth on its own ------------------------------------------------------------------------------
def test_quiet_minutes_are_flat():
    tm_market = FakeTardisMachine(clock=FakeClock(DAY), market=CONFIGS["quiet"]).market
    frames = {t: minute_truth(tm_market, "deribit", "BTC-PERPETUAL", t, D0, D0 + 8 * MIN)
              for t in ("trade", "quote_1m", "book_snapshot_5_1s", "derivative_ticker")}
    quiet = minutes_index(3, 6)
    before = pd.Timestamp(DAY + timedelta(minutes=2))
    t = frames["trade"]
    assert (t.loc[quiet, ["volume", "buy_volume", "sell_volume", "trades"]] == 0).all().all()
    assert t.loc[quiet, "vwap"].isna().all()
    for c in ("open", "high", "low", "close"):
        assert (t.loc[quiet, c] == t.loc[before, "close"]).all()
    for name in ("quote_1m", "book_snapshot_5_1s", "derivative_ticker"):
        f = frames[name]
        assert (f.loc[quiet] == f.loc[before]).all().all()
        assert not (f.loc[pd.Timestamp(DAY + timedelta(minutes=6))] == f.loc[before]).all()  # it moves again
    silent = minute_truth(tm_market, "deribit", "SILENT-PERP", "trade_bar_1m", D0, D0 + 3 * MIN)
    assert silent[["open", "close", "vwap"]].isna().all().all() and (silent["trades"] == 0).all()
    book = minute_truth(tm_market, "deribit", "SILENT-PERP", "quote", D0, D0 + 3 * MIN)
    assert book.notna().all().all() and (book.nunique() == 1).all()  # the day's snapshot, forever


def test_flat_minutes_search_back_across_quiet_time_and_days():
    d0_ms = D0 // 1000
    cfg = MarketConfig(book_rate=0.5, trade_rate=0.5, quiet=(("BTC-PERPETUAL", d0_ms - 10 * 60_000, d0_ms + 25 * 60_000),))
    market = FakeTardisMachine(clock=FakeClock(DAY), market=cfg).market
    got = minute_truth(market, "deribit", "BTC-PERPETUAL", "trade", D0 + 20 * MIN, D0 + 22 * MIN)
    last = trades_truth(market, "deribit", "BTC-PERPETUAL", D0 - 15 * MIN, D0 - 10 * MIN).iloc[-1]
    assert (got[["open", "high", "low", "close"]] == last["price"]).all().all() and (got["trades"] == 0).all()
    tick = minute_truth(market, "deribit", "BTC-PERPETUAL", "derivative_ticker", D0 + 20 * MIN, D0 + 21 * MIN)
    assert tick.notna().all().all()


def test_truth_shapes_and_errors():
    market = FakeTardisMachine(clock=FakeClock(DAY), market=CONFIGS["plain"]).market
    df = minute_truth(market, "deribit", "ETH-PERPETUAL", "book_snapshot_3_1m", D0, D0 + 2 * MIN)
    assert list(df.columns) == ["bid_price", "bid_amount", "ask_price", "ask_amount", "mid_close",
                                "bids_1_price", "bids_1_amount", "bids_2_price", "bids_2_amount",
                                "asks_1_price", "asks_1_amount", "asks_2_price", "asks_2_amount"]
    assert df.index.name == "minute" and str(df.index.tz) == "UTC" and df.index[0] == pd.Timestamp(DAY)
    assert (df["bid_price"] < df["ask_price"]).all() and (df["bids_1_price"] < df["bid_price"]).all()
    deep = minute_truth(market, "deribit", "ETH-PERPETUAL", "book_snapshot_30_1m", D0, D0 + MIN)
    assert deep[["bids_24_price", "asks_24_amount"]].notna().all().all()  # the model keeps 25 levels
    assert deep[["bids_25_price", "asks_29_amount"]].isna().all().all()
    # the last minute of a day closes with that day's last book (the next day opens empty)
    eve = minute_truth(market, "deribit", "ETH-PERPETUAL", "quote_1m", D0 - MIN, D0).iloc[0]
    book = market.book("deribit", "ETH-PERPETUAL", DAY - timedelta(milliseconds=1))
    assert (eve["bid_price"], eve["bid_amount"], eve["ask_price"]) == (*book["bids"][0], book["asks"][0][0])
    for bad in ("trade_bar_5m", "trade_bar_10ticks", "book_change"):
        with pytest.raises(ValueError):
            minute_truth(market, "deribit", "ETH-PERPETUAL", bad, D0, D0 + MIN)
    with pytest.raises(ValueError):
        minute_truth(market, "deribit", "ETH-PERPETUAL", "trade", D0 + 1, D0 + MIN)


# -- which minutes a served range could deliver whole ------------------------------------------------
@pytest.mark.parametrize("skew", [0, -2000, 2000])
def test_whole_minutes_of_a_replay(skew):
    cfg = MarketConfig(skew_ms=skew, book_rate=0.5, trade_rate=3)
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(minutes=30)), market=cfg) as tm:
        msgs = replay(tm, "2026-11-25T00:01", "2026-11-25T00:05", ["trade"], ["BTC-PERPETUAL"])
        whole = served_whole_minutes(tm, tm.requests[-1])
        # local [00:01, 00:05) holds exchange minutes m with 00:01 <= m + skew and m + 1 min + skew + 5 ms <= 00:05
        first, end = {0: (1, 4), -2000: (2, 5), 2000: (1, 4)}[skew]
        assert whole == list(range(D0 + first * MIN, D0 + end * MIN, MIN))
        for m in range(D0, D0 + 6 * MIN, MIN):
            have = {x["id"] for x in msgs if m <= parse_ts_us(x["timestamp"]) < m + MIN}
            want = set(trades_truth(tm.market, "deribit", "BTC-PERPETUAL", m, m + MIN)["id"])
            # a minute not known whole may still happen to be (no trade near its edge)
            assert (have == want) if m in whole else (have <= want)
            if m == whole[0] - MIN:
                assert have < want  # the minute the range starts in is partial
        assert whole_minutes(cfg, D0 + MIN, D0 + 5 * MIN) == whole


def test_whole_minutes_of_a_live_connection():
    clock = ManualClock(DAY + timedelta(minutes=2, seconds=30))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=0.5, trade_rate=5)) as tm:
        options = {"exchange": "deribit", "symbols": ["BTC-PERPETUAL"], "dataTypes": ["trade"]}
        ws = websocket.create_connection(f"{tm.ws_url}/ws-stream-normalized?options={quote(json.dumps(options))}",
                                         timeout=5)
        assert tm.wait_for(lambda: tm.connections)
        while clock.now() < DAY + timedelta(minutes=5, seconds=1):
            clock.advance(5)  # small steps: a big jump would send everything at once
        last_ms = parse_ts_us("2026-11-25T00:05:00.006Z") // 1000
        msgs = []
        while not msgs or parse_ts_us(msgs[-1]["localTimestamp"]) // 1000 < last_ms:
            msgs.append(json.loads(ws.recv()))
        ws.close()
        assert tm.wait_for(lambda: tm.connections[0].closed_at is not None)
        whole = served_whole_minutes(tm, tm.connections[0])
        assert whole == [D0 + 3 * MIN, D0 + 4 * MIN]
        for m in whole:  # live trades of a whole minute are exactly the truth's
            got = [(x["id"], x["price"], x["amount"], x["side"], parse_ts_us(x["timestamp"]) // 1000)
                   for x in msgs if m <= parse_ts_us(x["timestamp"]) < m + MIN]
            want = [tuple(r) for r in trades_truth(tm.market, "deribit", "BTC-PERPETUAL", m, m + MIN).itertuples(
                index=False)]
            assert got == want and want
