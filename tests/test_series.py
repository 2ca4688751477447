"""Minute series from stored data: values from the captured lines, forward fill inside coverage only."""
import numpy as np
import pandas as pd
import pytest

from gapless.series import stream_series
from gapless.stitch import series
from gapless.storage import Claim
from gapless.timeutil import MINUTE_US
from tests.support import fixture_messages, ingest_fixture, sqlite_store, us

QUOTES = "replay_btc_eth_quote_trade_bars_2026-11-23T0000_0020.ndjson"
DISCONNECT = "replay_btc_disconnect_2026-11-24T1330_1345.ndjson"
TYPES = ["quote", "quote_1m", "book_snapshot_5_1m", "trade", "trade_bar_1m", "derivative_ticker"]


@pytest.fixture
def filled(store):
    """The 20-minute capture of all common types, ingested (SQLite and PostgreSQL)."""
    ingest_fixture(store, QUOTES, "deribit", ["BTC-PERPETUAL", "ETH-PERPETUAL"], TYPES, "2026-11-23T00:00",
                   "2026-11-23T00:20")
    return store


def test_minute_rows_are_labelled_by_minute_start_in_utc(filled):
    frame = stream_series(filled, "deribit", "BTC-PERPETUAL", "quote_1m", us("2026-11-23T00:00"),
                          us("2026-11-23T00:05"), "replay")
    assert list(frame.index) == list(pd.date_range("2026-11-23 00:00", periods=5, freq="min", tz="UTC"))
    assert str(frame.index.tz) == "UTC" and frame.index.name == "minute"


def test_quote_1m_minute_is_the_snapshot_stamped_at_its_end(filled):
    frame = stream_series(filled, "deribit", "BTC-PERPETUAL", "quote_1m", us("2026-11-23T00:00"),
                          us("2026-11-23T00:20"), "replay")
    snapshots = {m["timestamp"]: m for m in fixture_messages(QUOTES)
                 if m.get("name") == "quote_1m" and m["symbol"] == "BTC-PERPETUAL"}
    for minute in range(0, 19):
        stamp = "2026-11-23T00:%02d:00.000Z" % (minute + 1)
        row = frame.loc[pd.Timestamp("2026-11-23 00:%02d" % minute, tz="UTC")]
        assert row["bid_price"] == snapshots[stamp]["bids"][0]["price"]
        assert row["ask_amount"] == snapshots[stamp]["asks"][0]["amount"]
        assert row["source"] == "replay" and not row["missing"]
    # the minute whose closing snapshot would be stamped at the range's end is not covered
    assert frame["missing"].iloc[19]


def test_trades_give_ohlc_volume_and_vwap_equal_to_the_servers_bars(filled):
    store = filled
    start, end = us("2026-11-23T00:00"), us("2026-11-23T00:19")
    trades = stream_series(store, "deribit", "ETH-PERPETUAL", "trade", start, end, "replay")
    bars = stream_series(store, "deribit", "ETH-PERPETUAL", "trade_bar_1m", start, end, "replay")
    assert not trades["missing"].any() and not bars["missing"].any()
    for column in ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "trades"):
        assert np.allclose(trades[column], bars[column]), column
    assert np.allclose(trades["vwap"], bars["vwap"], rtol=1e-12)


def test_quote_mid_ohlc_and_close_from_every_top_of_book_change(filled):
    frame = stream_series(filled, "deribit", "BTC-PERPETUAL", "quote", us("2026-11-23T00:03"),
                          us("2026-11-23T00:04"), "replay")
    quotes = [m for m in fixture_messages(QUOTES) if m.get("name") == "quote" and m["symbol"] == "BTC-PERPETUAL"
              and m["timestamp"].startswith("2026-11-23T00:03")]
    mids = [(q["bids"][0]["price"] + q["asks"][0]["price"]) / 2 for q in quotes]
    row = frame.iloc[0]
    assert (row["mid_open"], row["mid_high"], row["mid_low"], row["mid_close"]) == (
        mids[0], max(mids), min(mids), mids[-1])
    assert row["bid_price"] == quotes[-1]["bids"][0]["price"]


def test_derivative_ticker_takes_the_last_values(filled):
    frame = stream_series(filled, "deribit", "BTC-PERPETUAL", "derivative_ticker",
                          us("2026-11-23T00:10"), us("2026-11-23T00:11"), "replay")
    tickers = [m for m in fixture_messages(QUOTES) if m["type"] == "derivative_ticker"
               and m["symbol"] == "BTC-PERPETUAL" and m["timestamp"] < "2026-11-23T00:11"]
    assert frame.iloc[0]["mark_price"] == tickers[-1]["markPrice"]
    assert frame.iloc[0]["funding_rate"] == tickers[-1]["fundingRate"]


def test_minutes_outside_coverage_are_missing_and_never_filled(tmp_path):
    store = sqlite_store(tmp_path)
    ingest_fixture(store, DISCONNECT, "deribit", ["BTC-PERPETUAL"], ["quote_1m", "trade_bar_1m", "trade"],
                   "2026-11-24T13:30", "2026-11-24T13:45")
    frames = series(store, "deribit", ["BTC-PERPETUAL"], ["quote_1m", "trade_bar_1m", "trade"],
                    us("2026-11-24T13:30"), us("2026-11-24T13:45"), sources=("replay",))
    trade = frames[("BTC-PERPETUAL", "trade")]
    missing = [t.strftime("%H:%M") for t in trade.index[trade["missing"]]]
    assert missing == ["13:37", "13:44"]  # the outage minute and the unclaimed last one
    assert trade.loc[trade["missing"], ["open", "close", "volume"]].isna().all().all()
    assert set(trade.loc[trade["missing"], "source"]) == {"missing"}
    quote = frames[("BTC-PERPETUAL", "quote_1m")]
    # no book before the fresh snapshot after the outage (mid-day start): missing, not guessed
    assert quote["missing"].iloc[:8].all() and not quote["missing"].iloc[8:14].any()


def test_quiet_covered_minutes_carry_state_but_uncovered_ones_do_not(tmp_path):
    store = sqlite_store(tmp_path)
    t0 = us("2026-11-23T10:00")
    row = ("deribit", "X-PERP", "book_snapshot", "quote_1m", "replay", t0 + 30 * 10**6, t0 + 30 * 10**6 + 5, 0,
           100.0, 1.0, 101.0, 2.0)
    trade = ("deribit", "X-PERP", "trade", "trade", "replay", t0 + 10 * 10**6, t0 + 10 * 10**6 + 5, "t1", 100.5,
             3.0, "buy", None)
    claims = [Claim("deribit", "X-PERP", name, "replay", "s:0", t0, t0 + 5 * MINUTE_US)
              for name in ("quote_1m", "trade")]
    claims += [Claim("deribit", "X-PERP", name, "replay", "s:1", t0 + 7 * MINUTE_US, t0 + 9 * MINUTE_US)
               for name in ("quote_1m", "trade")]
    store.write({"book_snapshot_1": [row], "trade": [trade]}, claims)
    quote = stream_series(store, "deribit", "X-PERP", "quote_1m", t0, t0 + 10 * MINUTE_US, "replay")
    assert list(quote["bid_price"].iloc[:5]) == [100.0] * 5          # unchanged book, carried forward
    assert quote["missing"].iloc[5:7].all()                           # hole: never filled
    assert quote["missing"].iloc[7:9].all()                           # after a hole the state is unknown again
    assert quote["missing"].iloc[9]
    trades = stream_series(store, "deribit", "X-PERP", "trade", t0, t0 + 10 * MINUTE_US, "replay")
    assert list(trades["volume"].iloc[:5]) == [3.0, 0, 0, 0, 0]       # quiet minutes are known: volume 0
    assert list(trades["close"].iloc[:5]) == [100.5] * 5
    assert not trades["missing"].iloc[7:9].any() and trades["close"].iloc[7:9].isna().all()
    assert trades["missing"].iloc[5:7].all() and trades["missing"].iloc[9]
