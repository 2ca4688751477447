"""The double's ticker channel beyond derivative_ticker: ``book_ticker`` and Deribit options' ``option_summary``.

Real sockets (requests, websocket-client), replay and live; the truth (tests/truth.py) against messages parsed
from a replay; and the bytes of the types the double already had, unchanged (hashes taken before these types
were added: seeded randomized schedules depend on them).
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
import requests
import websocket

from tests.fake_tardis import FakeClock, FakeTardisMachine, ManualClock, MarketConfig, Outage
from tests.fake_tardis.market import KIND_TICKER, Market, option_contract
from tests.fake_tardis.option_model import OPTION_BLOCK_MS, build_option_block, first_trade_ms, ticker_interval_ms
from tests.fake_tardis.options import parse_options
from tests.fake_tardis.render import parse_ts_us
from tests.fake_tardis.slices import filter_key
from tests.support import wait_until
from tests.truth import BOOK_TICKER_COLUMNS, OPTION_SUMMARY_COLUMNS, minute_truth
from tests.truth import option_contract as truth_contract

UTC = timezone.utc
DAY = datetime(2026, 11, 25, tzinfo=UTC)
D0 = int(DAY.timestamp()) * 1_000_000
MIN = 60_000_000
PERPS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
CALL, PUT = "BTC-29JAN27-85000-C", "ETH-8DEC26-3000-P"
DEEP_PUT = "BTC-27NOV26-60000-P"  # far out of the money, two days to go: no bid
FIRST_TRADE = "BTC-27NOV26-152600-C"  # trades for the first time at 00:28:35.119 on DAY
EXPIRING = "BTC-25NOV26-85000-C"  # expires DAY 08:00 (a Wednesday: a synthetic index)
SUMMARY_KEYS = ["type", "symbol", "exchange", "optionType", "strikePrice", "expirationDate", "bestBidPrice",
                "bestBidAmount", "bestBidIV", "bestAskPrice", "bestAskAmount", "bestAskIV", "lastPrice", "openInterest",
                "markPrice", "markIV", "delta", "gamma", "vega", "theta", "rho", "underlyingPrice", "underlyingIndex",
                "timestamp", "localTimestamp"]
BOOK_TICKER_KEYS = ["type", "symbol", "exchange", "askAmount", "askPrice", "bidPrice", "bidAmount", "timestamp",
                    "localTimestamp"]
FIELDS = dict(zip(OPTION_SUMMARY_COLUMNS, ["bestBidPrice", "bestBidAmount", "bestBidIV", "bestAskPrice",
                                           "bestAskAmount", "bestAskIV", "lastPrice", "openInterest", "markPrice",
                                           "markIV", "delta", "gamma", "vega", "theta", "rho", "underlyingPrice"]))
HARNESS = dict(book_rate=0.3, trade_rate=0.3, ticker_interval_s=5.0)  # the truth harness' market


def opts(frm, to, types, symbols, **kw):
    return {"exchange": "deribit", "symbols": symbols, "from": frm, "to": to, "dataTypes": types,
            "withDisconnectMessages": True, **kw}


def replay(tm, options) -> list[dict]:
    r = requests.get(f"{tm.http_url}/replay-normalized", params={"options": json.dumps(options)}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return [json.loads(x) for x in r.text.splitlines()]


def ws_connect(tm, options) -> websocket.WebSocket:
    url = f"{tm.ws_url}/ws-stream-normalized?options={quote(json.dumps(options))}"
    return websocket.create_connection(url, timeout=5, skip_utf8_validation=True)


def drain(ws) -> threading.Thread:
    """Read (and drop) whatever the socket gets, so a long live session never fills it."""
    def run():
        try:
            while True:
                ws.recv()
        except Exception:
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def settle(tm) -> None:
    wait_until(tm.live_caught_up, interval=0.005, message="the double sent what is due")


def ex_ms(m) -> int:
    return parse_ts_us(m["timestamp"]) // 1000


def of(msgs, kind, symbol=None):
    return [m for m in msgs if m["type"] == kind and (symbol is None or m["symbol"] == symbol)]


# -- the existing types: byte for byte what they were -----------------------------------------------------
TYPES = ["trade", "quote", "quote_1m", "book_snapshot_5_1s", "trade_bar_10s", "derivative_ticker", "liquidation"]
# sha256 and line counts of these answers, taken before book_ticker and option_summary existed
BYTES_BEFORE = {
    "default-midnight": ("8441a662da800d3f833f1e7e0219fadf53e93c8c72319576590b18cbe3c788f0", 29570),
    "harness-0910": ("7c4e27e7f00c7f789d2d449f21eee03606df763e6b91c585f5c795762529b110", 4236),
    "skewq-array": ("aad75b7ae4596673f921e2f2c30e9694ad37709ccc1589130a59c29c134dc9c3", 9460),
    "live-harness": ("76ac9b4b42342e3942c8d4c46c356a0ee7eabf25bef232f8227039254d8e53bd", 266),
}
CONFIGS = {"default": MarketConfig(), "harness": MarketConfig(**HARNESS),
           "skewq": MarketConfig(skew_ms=-1500, quiet=(("BTC-PERPETUAL", 1795567800000, 1795568100000),),
                                 ticker_interval_s=2.0)}


def _digest(blob: bytes, lines: int):
    return hashlib.sha256(blob).hexdigest(), lines


def test_existing_types_send_the_same_bytes_as_before():
    outage = [Outage(DAY + timedelta(minutes=10), DAY + timedelta(minutes=11, seconds=7))]
    got = {}
    requests_ = {
        "default-midnight": ("default", opts("2026-11-24T23:30", "2026-11-25T00:30", TYPES + ["book_change"], PERPS)),
        "harness-0910": ("harness", opts("2026-11-25T09:00", "2026-11-25T10:00", TYPES, PERPS)),
        "skewq-array": ("skewq", [opts("2026-11-25T00:00", "2026-11-25T00:20", ["trade", "derivative_ticker"],
                                       ["BTC-PERPETUAL"]),
                                  opts("2026-11-25T00:00", "2026-11-25T00:20", ["quote", "book_change", "trade_bar_1m"],
                                       ["ETH-PERPETUAL", "SOME-THING"])]),
    }
    for name, (config, options) in requests_.items():
        with FakeTardisMachine(clock=FakeClock(DAY + timedelta(days=1)), market=CONFIGS[config],
                               replay_outages=outage) as tm:
            r = requests.get(f"{tm.http_url}/replay-normalized", params={"options": json.dumps(options)}, timeout=60)
            got[name] = _digest(r.content, r.content.count(b"\n"))
    # a live session on a manual clock: an exchange drop, a live outage with its error messages
    clock = ManualClock(DAY + timedelta(minutes=2))
    with FakeTardisMachine(clock=clock, market=CONFIGS["harness"], live_outages=[
            Outage(DAY + timedelta(minutes=2, seconds=40), DAY + timedelta(minutes=2, seconds=44))]) as tm:
        ws = ws_connect(tm, {"exchange": "deribit", "symbols": PERPS, "dataTypes": TYPES + ["book_change"],
                             "withDisconnectMessages": True, "withErrorMessages": True})
        drain(ws)
        settle(tm)
        for i in range(90):
            if i == 20:
                tm.exchange_drop(0.5)
            clock.advance(1)
            settle(tm)
        frames = list(tm.connections[0].sent)
        ws.close()
    got["live-harness"] = _digest("\n".join(frames).encode(), len(frames))
    assert got == BYTES_BEFORE


# -- symbols -----------------------------------------------------------------------------------------------
def test_option_names_are_parsed_like_deribit_writes_them():
    c = option_contract(CALL)
    assert (c.currency, c.strike, c.call, c.underlying, c.underlying_index, c.expiration_text) == (
        "BTC", 85000, True, "BTC-PERPETUAL", "BTC-29JAN27", "2027-01-29T08:00:00.000Z")  # a Friday: a future
    assert option_contract("BTC-8DEC26-90000-P").underlying_index == "SYN.BTC-8DEC26"  # a Tuesday: synthetic
    assert option_contract("XRP_USDC-30JUN23-0D625-C").strike == 0.625  # Deribit's 0d625, upper-cased
    for other in ("BTC-PERPETUAL", "BTC-29JAN27", "BTC-08DEC26-90000-P", "BTC-31FEB27-1000-C", "BTC-29JAN27-085000-C",
                  "BTC-29JAN27-85000-X", "btc-29jan27-85000-c"):
        assert option_contract(other) is None
    assert truth_contract("btc-29jan27-85000-c") == {
        "option_type": "call", "strike_price": 85000.0, "underlying_index": "BTC-29JAN27",
        "expiration_date": pd.Timestamp("2027-01-29T08:00:00Z")}
    assert truth_contract("BTC-PERPETUAL") is None


def test_symbols_are_upper_cased_in_requests_and_answers():
    lower = [s.lower() for s in PERPS + [CALL]]
    spec = parse_options(json.dumps(opts("2026-11-25T00:00", "2026-11-25T00:01", ["trade"], lower)), replay=True,
                         default_symbols=[])[0]
    assert spec.symbols == tuple(PERPS + [CALL])
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(hours=2))) as tm:
        types = ["trade", "quote", "book_ticker", "option_summary"]
        upper = requests.get(f"{tm.http_url}/replay-normalized", timeout=30, params={"options": json.dumps(
            opts("2026-11-25T00:00", "2026-11-25T00:02", types, PERPS + [CALL]))}).content
        asked_lower = requests.get(f"{tm.http_url}/replay-normalized", timeout=30, params={"options": json.dumps(
            opts("2026-11-25T00:00", "2026-11-25T00:02", types, lower))}).content
    assert upper == asked_lower and b'"symbol":"BTC-29JAN27-85000-C"' in upper and b"perpetual" not in upper


# -- book_ticker ---------------------------------------------------------------------------------------------
def _model_ticker_times(market, symbol, lo_ms, hi_ms):
    out = []
    for index in range(lo_ms // 600_000, (hi_ms - 1) // 600_000 + 1):
        seg = market.segment("deribit", symbol, index)
        out += [t for t in seg.ev_ex[seg.ev_kind == KIND_TICKER].tolist() if lo_ms <= t < hi_ms]
    return out


@pytest.mark.parametrize("config", ["default", "harness"])
def test_book_ticker_is_every_ticker_event_without_change_detection(config):
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(hours=1)), market=CONFIGS[config]) as tm:
        msgs = replay(tm, opts("2026-11-25T00:00", "2026-11-25T00:06", ["derivative_ticker", "book_ticker"], PERPS))
        alone = replay(tm, opts("2026-11-25T00:00", "2026-11-25T00:06", ["book_ticker"], PERPS))
        midday = replay(tm, opts("2026-11-25T00:30", "2026-11-25T00:31", ["book_ticker"], PERPS))
    assert alone == of(msgs, "book_ticker")
    per_minute = 60 / CONFIGS[config].ticker_interval_s
    for symbol in PERPS:
        bt = of(msgs, "book_ticker", symbol)
        stamps = [ex_ms(m) for m in bt]
        lo, hi = D0 // 1000 + 60_000, D0 // 1000 + 5 * 60_000  # whole minutes inside the replay
        assert [t for t in stamps if lo <= t < hi] == _model_ticker_times(tm.market, symbol, lo, hi)
        assert len([t for t in stamps if lo <= t < hi]) == 4 * per_minute  # the ticker events' own rate
        assert len(bt) > len(of(msgs, "derivative_ticker", symbol))  # derivative_ticker skips repeats, it does not
        for m in bt:
            assert list(m) == [k for k in BOOK_TICKER_KEYS if k in m]
            assert m["bidPrice"] < m["askPrice"] if "bidPrice" in m else list(m) == [
                "type", "symbol", "exchange", "timestamp", "localTimestamp"]
        # a derivative_ticker and its book_ticker come from one ticker message: the same stamps, that order
        for i, m in enumerate(msgs):
            if m["type"] == "derivative_ticker" and m["symbol"] == symbol:
                nxt = msgs[i + 1]
                assert (nxt["type"], nxt["symbol"], nxt["timestamp"], nxt["localTimestamp"]) == (
                    "book_ticker", symbol, m["timestamp"], m["localTimestamp"])
        # not book-derived: a replay from 00:30 sends them from its first ticker on
        assert of(midday, "book_ticker", symbol)[0]["timestamp"] < "2026-11-25T00:30:06"
    # the top of the book strictly before the ticker: before the day's snapshot (00:00:00.1xx) the book is empty
    for symbol in PERPS:
        snapshot = tm.market.segment("deribit", symbol, D0 // 1000 // 600_000).b_ex[0]
        for m in of(msgs, "book_ticker", symbol)[:3]:
            assert ("bidPrice" in m) == (ex_ms(m) > snapshot) == ("askAmount" in m)
            if "bidPrice" in m:
                bids, asks = tm.market.book_before("deribit", symbol, ex_ms(m))
                tick = {"BTC-PERPETUAL": 0.5, "ETH-PERPETUAL": 0.05}[symbol]
                assert (round(m["bidPrice"] / tick), m["bidAmount"], round(m["askPrice"] / tick), m["askAmount"]) == (
                    *bids[0], *asks[0])


# -- option_summary ------------------------------------------------------------------------------------------
def test_option_summary_format_rates_and_omissions():
    chain = [CALL, PUT, DEEP_PUT, FIRST_TRADE, "BTC-29JAN27-78000-P", "BTC-29JAN27-80000-C"]
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(hours=2))) as tm:
        msgs = replay(tm, opts("2026-11-25T00:00", "2026-11-25T00:40", ["option_summary", "book_ticker",
                                                                          "derivative_ticker", "trade", "quote"],
                               chain + ["BTC-PERPETUAL"]))
        nothing = replay(tm, opts("2026-11-25T00:00", "2026-11-25T00:05", ["option_summary"], ["BTC-PERPETUAL"]))
    assert nothing == []  # option_summary asked for a perpetual
    assert {m["type"] for m in msgs if m["symbol"] in chain} == {"option_summary", "book_ticker"}  # no trades/books
    for symbol in chain:
        c = option_contract(symbol)
        summaries = of(msgs, "option_summary", symbol)
        books = of(msgs, "book_ticker", symbol)
        assert len(summaries) == len(books)
        stamps = np.array([ex_ms(m) for m in summaries])
        every = ticker_interval_ms(tm.market.config, "deribit", symbol)
        assert 1000 <= every < 2000 and np.diff(stamps).min() >= 0.75 * every - 1
        assert abs(np.diff(stamps).mean() - every) < 0.1 * every  # about every 1-2 s, fixed per instrument
        for s, b in zip(summaries, books):
            assert list(s) == [k for k in SUMMARY_KEYS if k in s]
            assert (s["optionType"], s["strikePrice"], s["expirationDate"], s["underlyingIndex"]) == (
                c.option_type, c.strike, c.expiration_text, c.underlying_index)
            assert 20 < s["markIV"] < 120 and s["markPrice"] > 0 and (0 <= s["delta"] <= 1 if c.call else
                                                                        -1 <= s["delta"] <= 0)
            # both sides or none of their fields; the book ticker shows the same quotes
            for side in ("Bid", "Ask"):
                present = [f"best{side}{k}" in s for k in ("Price", "Amount", "IV")]
                assert all(present) or not any(present)
            assert (b.get("bidPrice"), b.get("bidAmount"), b.get("askPrice"), b.get("askAmount")) == (
                s.get("bestBidPrice"), s.get("bestBidAmount"), s.get("bestAskPrice"), s.get("bestAskAmount"))
            assert (b["timestamp"], b["localTimestamp"]) == (s["timestamp"], s["localTimestamp"])
            if "bestBidPrice" in s and "bestAskPrice" in s:
                assert s["bestBidPrice"] < s["bestAskPrice"] and s["bestBidIV"] < s["markIV"] < s["bestAskIV"]
        # underlying: the perpetual's mid strictly before the ticker
        for s in summaries[:5]:
            bids, asks = tm.market.book_before("deribit", c.underlying, ex_ms(s))
            hundredths = 50 if c.currency == "BTC" else 5  # the tick
            assert s["underlyingPrice"] == (bids[0][0] + asks[0][0]) * hundredths / 200
    deep = of(msgs, "option_summary", DEEP_PUT)
    assert deep and not any("bestBidPrice" in m for m in deep) and all("bestAskPrice" in m for m in deep)
    no_ask = of(msgs, "option_summary", "BTC-29JAN27-80000-C")
    assert any("bestAskPrice" not in m for m in no_ask) and any("bestAskPrice" in m for m in no_ask)
    # lastPrice: absent until the instrument's first trade, then in every message; openInterest 0 before it
    first = first_trade_ms(tm.market.config, "deribit", FIRST_TRADE)
    assert D0 // 1000 < first < D0 // 1000 + 40 * 60_000
    traded = of(msgs, "option_summary", FIRST_TRADE)
    assert all(("lastPrice" in m) == (ex_ms(m) > first) for m in traded)
    assert all(m["openInterest"] == 0 for m in traded if ex_ms(m) <= first) and traded[-1]["openInterest"] > 0
    assert sum("lastPrice" in m for m in traded) > 100 and sum("lastPrice" not in m for m in traded) > 100
    assert first_trade_ms(tm.market.config, "deribit", CALL) is None  # some instruments never trade
    assert not any("lastPrice" in m for m in of(msgs, "option_summary", CALL))


def test_option_model_is_fast_and_pure():
    """A day of one instrument: vectorised, well under the 50 ms the benchmarks can afford (generous bound here:
    the machine may be busy); blocks are pure (the same twice, any order) and never touch the perpetual's draws."""
    market = Market(MarketConfig())
    day = D0 // 1000 // OPTION_BLOCK_MS
    for h in range(24):  # the underlying's day first (shared by every option of the currency)
        market.segment("deribit", "BTC-PERPETUAL", (day + h) * 6 + 5)
    c = option_contract("BTC-29JAN27-90000-P")
    best = math.inf
    for _ in range(3):
        start = time.process_time()
        blocks = [build_option_block(market, "deribit", c, day + h) for h in range(24)]
        best = min(best, time.process_time() - start)
    assert 24 * 1700 < sum(len(b.ev_ex) for b in blocks) < 24 * 5000
    assert best < 0.25, f"{best * 1000:.0f} ms CPU for a day of one option"
    again = build_option_block(market, "deribit", c, day + 7)
    assert np.array_equal(again.values, blocks[7].values, equal_nan=True) and np.array_equal(again.ev_loc,
                                                                                             blocks[7].ev_loc)


def test_expiry_stops_an_option_in_replay_and_live():
    deadline = D0 // 1000 + 8 * 3_600_000
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(hours=12)), market=MarketConfig(**HARNESS)) as tm:
        msgs = replay(tm, opts("2026-11-25T07:55", "2026-11-25T08:10", ["option_summary", "book_ticker"],
                               [EXPIRING, CALL]))
        after = replay(tm, opts("2026-11-25T08:00", "2026-11-25T09:00", ["option_summary"], [EXPIRING]))
        truth = minute_truth(tm.market, "deribit", EXPIRING, "option_summary", D0 + 475 * MIN, D0 + 485 * MIN)
        bt_truth = minute_truth(tm.market, "deribit", EXPIRING, "book_ticker", D0 + 475 * MIN, D0 + 485 * MIN)
    expiring = [m for m in msgs if m["symbol"] == EXPIRING]
    assert expiring and max(ex_ms(m) for m in expiring) < deadline and max(ex_ms(m) for m in expiring) > deadline - 3000
    assert expiring[0]["expirationDate"] == "2026-11-25T08:00:00.000Z" and expiring[0]["underlyingIndex"] == \
        "SYN.BTC-25NOV26"
    assert max(ex_ms(m) for m in msgs if m["symbol"] == CALL) > deadline + 9 * 60_000  # the other one goes on
    assert after == []
    assert truth.iloc[:5].notna()["mark_price"].all() and truth.iloc[5:].isna().all().all()  # 08:00 on: NaN
    assert bt_truth.iloc[5:].isna().all().all()
    clock = ManualClock(DAY + timedelta(hours=7, minutes=59, seconds=45))
    with FakeTardisMachine(clock=clock, market=MarketConfig(**HARNESS)) as tm:
        both = ws_connect(tm, {"exchange": "deribit", "symbols": [EXPIRING.lower(), CALL],
                               "dataTypes": ["option_summary", "book_ticker"]})
        alone = ws_connect(tm, {"exchange": "deribit", "symbols": [EXPIRING], "dataTypes": ["option_summary"]})
        drain(both), drain(alone)
        settle(tm)
        for _ in range(12):
            clock.advance(5)
            settle(tm)
        frames = [json.loads(x) for x in tm.connections[0].sent]
        lonely = [json.loads(x) for x in tm.connections[1].sent]
        # a connection with nothing left to send still serves its socket (here: a close from the server)
        assert tm.drop_clients("close", timeout=3) == 2 and tm.wait_for(
            lambda: all(c.close_kind == "server_close" for c in tm.connections), timeout=3)
    for got in (frames, lonely):
        live = [m for m in got if m["symbol"] == EXPIRING]
        assert live and max(ex_ms(m) for m in live) < deadline and max(ex_ms(m) for m in live) > deadline - 3000
    assert max(ex_ms(m) for m in frames if m["symbol"] == CALL) > deadline + 40_000


# -- truth ---------------------------------------------------------------------------------------------------
def book_ticker_minutes(msgs, symbol, index) -> pd.DataFrame:
    """Fold the double's book_ticker messages into minutes (independently of truth.py)."""
    ms = of(msgs, "book_ticker", symbol)
    stamps = np.array([parse_ts_us(m["timestamp"]) for m in ms], dtype=np.int64)
    out = pd.DataFrame(np.nan, index=index, columns=list(BOOK_TICKER_COLUMNS))
    for at in index:
        lo = at.value // 1000
        a, b = np.searchsorted(stamps, [lo, lo + MIN])
        if b == 0:
            continue
        last = ms[b - 1]
        row = [last.get("bidPrice", np.nan), last.get("bidAmount", np.nan), last.get("askPrice", np.nan),
               last.get("askAmount", np.nan)]
        inside = ms[a:b] if b > a else [last]
        every = [(m.get("bidPrice", np.nan) + m.get("askPrice", np.nan)) / 2 for m in inside]
        mids = [x for x in every if x == x]
        # open/high/low over the two-sided messages; the close is the last message's mid (NaN when one-sided)
        out.loc[at] = row + ([mids[0], max(mids), min(mids)] if mids else [np.nan] * 3) + [every[-1]]
    return out


def summary_minutes(msgs, symbol, index) -> pd.DataFrame:
    ms = of(msgs, "option_summary", symbol)
    stamps = np.array([parse_ts_us(m["timestamp"]) for m in ms], dtype=np.int64)
    out = pd.DataFrame(np.nan, index=index, columns=list(OPTION_SUMMARY_COLUMNS))
    for at in index:
        b = int(np.searchsorted(stamps, at.value // 1000 + MIN))
        if b:
            out.loc[at] = [ms[b - 1].get(FIELDS[c], np.nan) for c in OPTION_SUMMARY_COLUMNS]
    return out


TRUTH_SYMBOLS = PERPS + [CALL, PUT, DEEP_PUT, FIRST_TRADE, "BTC-29JAN27-80000-C", "BTC-29JAN27-91000-P"]
QUIET = (("BTC-29JAN27-91000-P", D0 // 1000 + 3 * 60_000, D0 // 1000 + 6 * 60_000),
         ("ETH-PERPETUAL", D0 // 1000 + 4 * 60_000, D0 // 1000 + 7 * 60_000))


@pytest.mark.parametrize("config", [MarketConfig(), MarketConfig(skew_ms=-2000, **HARNESS),
                                    MarketConfig(skew_ms=1500, quiet=QUIET)], ids=["plain", "harness-skew", "quiet"])
def test_truth_equals_the_replayed_messages(config):
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(hours=1)), market=config) as tm:
        msgs = replay(tm, opts("2026-11-25T00:00", "2026-11-25T00:12", ["book_ticker", "option_summary"],
                               TRUTH_SYMBOLS))
        late = replay(tm, opts("2026-11-25T00:25", "2026-11-25T00:33", ["book_ticker", "option_summary"],
                               [FIRST_TRADE]))
    for symbol in TRUTH_SYMBOLS:
        want = minute_truth(tm.market, "deribit", symbol, "book_ticker", D0 + MIN, D0 + 10 * MIN)
        pd.testing.assert_frame_equal(book_ticker_minutes(msgs, symbol, want.index), want, check_exact=True)
        want = minute_truth(tm.market, "deribit", symbol, "option_summary", D0 + MIN, D0 + 10 * MIN)
        pd.testing.assert_frame_equal(summary_minutes(msgs, symbol, want.index), want, check_exact=True)
        assert want.isna().all().all() == (symbol in PERPS)
    # the first trade's minute: lastPrice NaN before, a price from then on
    want = minute_truth(tm.market, "deribit", FIRST_TRADE, "option_summary", D0 + 26 * MIN, D0 + 32 * MIN)
    pd.testing.assert_frame_equal(summary_minutes(late, FIRST_TRADE, want.index), want, check_exact=True)
    assert want["last_price"].isna().tolist() == [True, True, False, False, False, False]
    assert (want.loc[want["last_price"].isna(), "open_interest"] == 0).all()
    if config.quiet:  # a quiet option carries its last message; a quiet perpetual its last book ticker
        quiet = minute_truth(tm.market, "deribit", "BTC-29JAN27-91000-P", "option_summary", D0 + 2 * MIN, D0 + 6 * MIN)
        assert (quiet.iloc[1:] == quiet.iloc[0]).all().all()
        eth = minute_truth(tm.market, "deribit", "ETH-PERPETUAL", "book_ticker", D0 + 3 * MIN, D0 + 7 * MIN)
        silent = eth.iloc[1:]  # 00:04-00:07: no message; the close of 00:03, flat at its mid
        assert (silent == silent.iloc[0]).all().all()
        assert (silent.iloc[0, :4] == eth.iloc[0, :4]).all() and (silent.iloc[0, 4:] == eth.iloc[0, 7]).all()


def test_book_ticker_truth_rules_on_one_sided_minutes():
    """Omitted sides are NaN at the close; mids ignore one-sided messages; a day's first minute opens empty."""
    market = Market(MarketConfig())
    deep = minute_truth(market, "deribit", DEEP_PUT, "book_ticker", D0, D0 + 5 * MIN)
    assert deep[["bid_price", "bid_amount", "mid_open", "mid_close"]].isna().all().all()
    assert deep[["ask_price", "ask_amount"]].notna().all().all()
    first = minute_truth(market, "deribit", "BTC-PERPETUAL", "book_ticker", D0, D0 + MIN).iloc[0]
    assert first.notna().all()  # the empty ticker before the snapshot is ignored by the mids
    with pytest.raises(ValueError):
        minute_truth(market, "deribit", CALL, "option_summary", D0 + 1, D0 + MIN)


# -- connection behaviour ------------------------------------------------------------------------------------
def test_outage_disconnect_and_slice_cache_share_the_ticker_channel():
    outage = Outage(DAY + timedelta(minutes=5), DAY + timedelta(minutes=5, seconds=30))
    symbols = ["BTC-PERPETUAL", CALL, PUT]
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(hours=1)), replay_outages=[outage]) as tm:
        msgs = replay(tm, opts("2026-11-25T00:04", "2026-11-25T00:07", ["book_ticker", "option_summary"], symbols))
    disconnects = [i for i, m in enumerate(msgs) if m["type"] == "disconnect"]
    assert len(disconnects) == 1
    hole = [m for m in msgs if m["type"] != "disconnect" and
            DAY + timedelta(minutes=5) <= datetime.fromtimestamp(ex_ms(m) / 1000, UTC) < DAY + timedelta(minutes=5,
                                                                                                         seconds=30)]
    assert hole == []
    after = msgs[disconnects[0] + 1:]
    assert {m["symbol"] for m in after} == set(symbols) and {m["type"] for m in after} == {"book_ticker",
                                                                                          "option_summary"}
    assert msgs[disconnects[0]]["localTimestamp"] == msgs[disconnects[0] - 1]["localTimestamp"]
    # one filter set for every type of the ticker channel; the slice cache keeps a minute asked too early empty
    specs = [parse_options(json.dumps(opts("2026-11-25T00:00", "2026-11-25T00:01", [t], symbols)), replay=True,
                           default_symbols=[])[0] for t in ("derivative_ticker", "book_ticker", "option_summary")]
    assert len({filter_key(s) for s in specs}) == 1 and filter_key(specs[0])[1] == ("ticker",)
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(minutes=3)), availability_mode="empty") as tm:
        early = replay(tm, opts("2026-11-25T00:01", "2026-11-25T00:05", ["option_summary"], [CALL, PUT]))
        assert early and max(parse_ts_us(m["localTimestamp"]) for m in early) < D0 + 3 * MIN
        tm.clock = FakeClock(DAY + timedelta(hours=1))
        again = replay(tm, opts("2026-11-25T00:01", "2026-11-25T00:05", ["book_ticker"], [CALL, PUT]))
        assert again and max(parse_ts_us(m["localTimestamp"]) for m in again) < D0 + 3 * MIN  # same filter set
        fresh = replay(tm, opts("2026-11-25T00:01", "2026-11-25T00:05", ["book_ticker"], [CALL, PUT, "GAPLESS-X"]))
        assert max(parse_ts_us(m["localTimestamp"]) for m in fresh) > D0 + 4 * MIN  # another one: fetched anew


def test_availability_error_line_cuts_option_summaries():
    with FakeTardisMachine(clock=FakeClock(DAY + timedelta(minutes=30)),
                           availability_delay=timedelta(minutes=25)) as tm:
        r = requests.get(f"{tm.http_url}/replay-normalized", timeout=30, params={"options": json.dumps(
            opts("2026-11-25T00:00", "2026-11-25T00:10", ["option_summary"], [CALL]))})
    lines = r.content.split(b"\n")
    assert r.status_code == 200 and b"historical data is available" in lines[-1]
    stamps = [parse_ts_us(json.loads(x)["localTimestamp"]) for x in lines[:-1]]
    assert len(stamps) > 100 and max(stamps) <= tm.requests[-1].available_until.timestamp() * 1e6


def test_live_options_match_replay_through_drops_and_clock_steps():
    chain = [f"BTC-29JAN27-{k}-{cp}" for k in range(80000, 100000, 1000) for cp in "CP"]  # 40 options
    assert len(chain) == 40
    clock = ManualClock(DAY + timedelta(minutes=2))
    with FakeTardisMachine(clock=clock) as tm:
        ws = ws_connect(tm, {"exchange": "deribit", "symbols": chain + ["BTC-PERPETUAL"],
                             "dataTypes": ["option_summary", "book_ticker"], "withDisconnectMessages": True})
        drain(ws)
        settle(tm)
        for i in range(30):
            if i == 10:
                tm.exchange_drop(2.0)
            if i == 20:
                tm.step_local_clock(3.0)
            clock.advance(1)
            settle(tm)
        frames = [json.loads(x) for x in tm.connections[0].sent]
        ws.close()
        clock.set(DAY + timedelta(hours=1))
        started = time.monotonic()
        replayed = replay(tm, opts("2026-11-25T00:02", "2026-11-25T00:03", ["option_summary", "book_ticker"],
                                   chain + ["BTC-PERPETUAL"]))
        replay_seconds = time.monotonic() - started
    assert replay_seconds < 10 and len(of(replayed, "option_summary")) > 40 * 25
    assert {m["symbol"] for m in of(replayed, "option_summary")} == set(chain)
    drop = [i for i, m in enumerate(frames) if m["type"] == "disconnect"]
    assert len(drop) == 1 and frames[drop[0]]["symbols"] == chain + ["BTC-PERPETUAL"]
    before, after = frames[:drop[0]], frames[drop[0] + 1:]
    resumed = min(ex_ms(m) for m in after)
    assert resumed - max(ex_ms(m) for m in before) >= 2000  # nothing of the 2 s the exchange link was down
    assert {m["symbol"] for m in of(after, "option_summary")} == set(chain)
    assert not of(frames, "book_snapshot")  # no snapshot for options, none asked for the perpetual
    # the same messages as the replay, except the live arrival stamps (ms precision, own latency)
    truth = {(m["type"], m["symbol"], m["timestamp"]): m for m in replayed}
    stepped = 0
    for m in frames:
        if m["type"] == "disconnect":
            continue
        r = truth[(m["type"], m["symbol"], m["timestamp"])]
        assert {k: v for k, v in m.items() if k != "localTimestamp"} == {k: v for k, v in r.items()
                                                                         if k != "localTimestamp"}
        lag = parse_ts_us(m["localTimestamp"]) - parse_ts_us(m["timestamp"])
        assert 0 <= lag <= 6000 or 3_000_000 <= lag <= 3_006_000  # after the host clock's step: 3 s more
        stepped += lag >= 3_000_000
    assert stepped > 100
