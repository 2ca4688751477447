"""Issue 19, items 2-5 against the double's market model: book tickers and an option chain's summaries, replayed
and recorded live, equal the true minutes; an option that expires inside the window ends there; a field that
appears only after the instrument's first trade; one service over perpetuals and a chain."""
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from gapless.download import Downloader
from gapless.recorder import Recorder
from gapless.stitch import series
from gapless.storage import Storage
from gapless.timeutil import MINUTE_US, US
from tests.fake_tardis import FakeClock, FakeTardisMachine, ManualClock, MarketConfig
from tests.support import wait_until
from tests.truth import minute_truth

DAY = datetime(2026, 11, 25, tzinfo=timezone.utc)
PERPS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
EXPIRING = "BTC-25NOV26-86000-C"  # expires at 08:00 on DAY
DEEP_PUT = "BTC-27NOV26-60000-P"  # far out of the money: nobody bids
FIRST_TRADE = "BTC-27NOV26-152600-C"  # trades for the first time at 00:28:35.119 on DAY
CHAIN = [EXPIRING, DEEP_PUT, FIRST_TRADE, "BTC-29JAN27-85000-C", "ETH-8DEC26-3000-P", "BTC-27NOV26-84000-P"]
BOOK = ["bid_price", "bid_amount", "ask_price", "ask_amount", "mid_open", "mid_high", "mid_low", "mid_close"]
OPTION = ["best_bid_price", "best_bid_amount", "best_bid_iv", "best_ask_price", "best_ask_amount", "best_ask_iv",
          "last_price", "open_interest", "mark_price", "mark_iv", "delta", "gamma", "vega", "theta", "rho",
          "underlying_price"]


def us(dt):
    return int(dt.timestamp()) * US


def assert_true_minutes(machine, frame, symbol, data_type, columns):
    """Every minute the frame serves equals the market model's, value for value (NaN where the truth is NaN)."""
    served = frame[frame["source"] != "missing"]
    if served.empty:
        return served
    start, end = int(frame.index[0].value // 1000), int(frame.index[-1].value // 1000) + MINUTE_US
    truth = minute_truth(machine.market, "deribit", symbol, data_type, start, end).loc[served.index]
    got, want = served[columns].to_numpy(dtype=float), truth[columns].to_numpy(dtype=float)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert same.all(), (symbol, data_type, served.index[np.flatnonzero(~same.all(axis=1))[:3]].tolist(),
                        [c for c, ok in zip(columns, same.all(axis=0)) if not ok])
    return served


def download(store, tm, symbols, data_types, a, b):
    downloader = Downloader(store, tm.http_url, workers=0, progress=False, now=tm.clock.now_us)
    return downloader.download("deribit", symbols, data_types, a, b)


def test_replayed_book_tickers_and_option_summaries_equal_the_market_model(tmp_path):
    clock = ManualClock(DAY + timedelta(hours=9))
    with FakeTardisMachine(clock=clock, market=MarketConfig(), availability_delay=timedelta(seconds=60)) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        try:
            a, b = us(DAY + timedelta(hours=7, minutes=30)), us(DAY + timedelta(hours=8, minutes=30))
            download(store, tm, PERPS + [DEEP_PUT], ["book_ticker"], a, b)
            download(store, tm, CHAIN, ["option_summary"], a, b)
            frames = series(store, "deribit", PERPS + [DEEP_PUT], ["book_ticker"], a, b)
            for symbol in PERPS + [DEEP_PUT]:
                served = assert_true_minutes(tm, frames[(symbol, "book_ticker")], symbol, "book_ticker", BOOK)
                assert len(served) == 60  # history is whole: every minute replay (not derived from the book)
            assert frames[(DEEP_PUT, "book_ticker")]["bid_price"].isna().all()  # an omitted side is NaN, not 0
            frames = series(store, "deribit", CHAIN, ["option_summary"], a, b)
            for symbol in CHAIN:
                served = assert_true_minutes(tm, frames[(symbol, "option_summary")], symbol, "option_summary", OPTION)
                assert not frames[(symbol, "option_summary")]["missing"].any()
                assert len(served) == (30 if symbol == EXPIRING else 60)  # the expiring one ends at 08:00
            expiring = frames[(EXPIRING, "option_summary")]
            assert expiring.index[-1] == pd.Timestamp("2026-11-25T07:59:00Z")
            assert frames[(DEEP_PUT, "option_summary")]["best_bid_price"].isna().all()
            assert set(frames[("ETH-8DEC26-3000-P", "option_summary")]["option_type"]) == {"put"}
            assert frames[("BTC-29JAN27-85000-C", "option_summary")]["mark_iv"].between(20, 150).all()  # percent
            # nothing was downloaded after the expiration (a request reaches one minute past what it claims; the
            # silence check of the run's last minute asks with a filter set of its own and stores nothing)
            asked = [(r.from_, r.to) for r in tm.requests if EXPIRING in r.options[0]["symbols"]
                     and not any(s.startswith("GAPLESS-") for s in r.options[0]["symbols"])]
            assert max(to for _, to in asked) <= DAY + timedelta(hours=8, minutes=1), asked
            assert store.count_rows("option_summary", symbol=EXPIRING) > 0
        finally:
            store.close()


def test_a_field_that_appears_only_after_the_first_trade(tmp_path):
    clock = ManualClock(DAY + timedelta(hours=1))
    with FakeTardisMachine(clock=clock, market=MarketConfig(), availability_delay=timedelta(seconds=60)) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        try:
            a, b = us(DAY + timedelta(minutes=25)), us(DAY + timedelta(minutes=32))
            download(store, tm, [FIRST_TRADE], ["option_summary"], a, b)
            frame = series(store, "deribit", [FIRST_TRADE], ["option_summary"], a, b)[(FIRST_TRADE, "option_summary")]
            assert_true_minutes(tm, frame, FIRST_TRADE, "option_summary", OPTION)
            # 00:25-00:27 before the first trade (00:28:35): NaN, never a price from elsewhere; 00:28 on: its price
            assert frame["last_price"].isna().tolist() == [True] * 3 + [False] * 4
        finally:
            store.close()


def test_live_book_tickers_and_option_summaries_equal_the_market_model_through_a_drop(tmp_path):
    clock = FakeClock(start=DAY + timedelta(hours=7, minutes=1, seconds=45), speed=20.0)
    with FakeTardisMachine(clock=clock, market=MarketConfig(), availability_delay=timedelta(seconds=60)) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        pairs = [(s, "book_ticker") for s in PERPS] + [(s, "option_summary") for s in CHAIN]
        recorder = Recorder(store, tm.ws_url, "deribit", PERPS + CHAIN, ["book_ticker", "option_summary"],
                            clock=lambda: tm.clock.now_us() / 1e6, backoff_base=0.05, backoff_cap=0.5, pairs=pairs)
        recorder.start()
        try:
            first = us(DAY + timedelta(hours=7, minutes=2))
            wait_until(lambda: tm.clock.now_us() > first + 100 * US, timeout=30, message="100 s recorded")
            tm.exchange_drop(1.5)
            # one disconnect line per product's exchange connection: 2, in one commit or two
            wait_until(lambda: recorder.health()["disconnects"] >= 1, timeout=10, message="the drop")
            last = first + 4 * MINUTE_US
            wait_until(lambda: tm.clock.now_us() > last + 30 * US, timeout=60, message="four minutes recorded")
        finally:
            recorder.stop()
        try:
            (connection,) = tm.connections  # one websocket: a filter per product
            assert sorted(o["dataTypes"] for o in connection.options) == [["book_ticker"], ["option_summary"]]
            frames = series(store, "deribit", PERPS, ["book_ticker"], first, last)
            frames.update(series(store, "deribit", CHAIN, ["option_summary"], first, last))
            live = 0
            for (symbol, data_type), frame in frames.items():
                served = assert_true_minutes(tm, frame, symbol, data_type, BOOK if data_type == "book_ticker" else OPTION)
                live += len(served)
                assert frame["missing"].any()  # the drop: its minute is not served from either side of it
            assert live >= len(frames) * 2
            assert store.count_rows("book_ticker", symbol=CHAIN[0]) == 0  # only the pairs asked for
        finally:
            store.close()
