"""Issue 19, item 5: an exchange in several groups of ``GAPLESS_STREAMS`` (different data types for different
symbols) merges into one recorder and one history horizon that keep exactly the (symbol, data type) pairs given:
one websocket with one filter per product, replay requests, storage, status and the series of exactly those."""
from datetime import datetime, timedelta, timezone

import pytest

from gapless.config import load_settings
from gapless.exceptions import ConfigurationError
from gapless.service import Gapless
from gapless.streams import StreamGroup, parse_streams
from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig
from tests.support import wait_until
from tests.truth_checks import false_minutes

STREAMS = "deribit:BTC-PERPETUAL:trade,liquidation;deribit:ETH-PERPETUAL:quote_1m"
PAIRS = {("BTC-PERPETUAL", "trade"), ("BTC-PERPETUAL", "liquidation"), ("ETH-PERPETUAL", "quote_1m")}


def test_groups_of_one_exchange_merge_into_exactly_their_pairs():
    text = ("deribit:BTC-PERPETUAL,ETH-PERPETUAL:quote_1m,liquidation;binance-futures:BTCUSDT:trade;"
            "deribit:BTC-29JAN27-85000-C,btc-29jan27-85000-p:book_ticker;deribit:BTC-PERPETUAL:trade,quote_1m")
    deribit, binance = parse_streams(text)
    assert deribit.exchange == "deribit" and binance == StreamGroup("binance-futures", ("BTCUSDT",), ("trade",))
    assert deribit.stream_pairs == [  # a pair given twice is kept once, symbols are upper-cased
        ("BTC-PERPETUAL", "quote_1m"), ("BTC-PERPETUAL", "liquidation"), ("BTC-PERPETUAL", "trade"),
        ("ETH-PERPETUAL", "quote_1m"), ("ETH-PERPETUAL", "liquidation"), ("BTC-29JAN27-85000-C", "book_ticker"),
        ("BTC-29JAN27-85000-P", "book_ticker")]
    assert deribit.filters == [(("BTC-PERPETUAL",), ("quote_1m", "liquidation", "trade")),
                               (("ETH-PERPETUAL",), ("quote_1m", "liquidation")),
                               (("BTC-29JAN27-85000-C", "BTC-29JAN27-85000-P"), ("book_ticker",))]
    (again,) = parse_streams(str(deribit))  # the text form says the same streams
    assert len(deribit.streams) == 7 and set(again.streams) == set(deribit.streams)
    assert parse_streams((deribit, binance)) == (deribit, binance)
    # groups that add up to every symbol x data type are one plain group
    assert parse_streams("deribit:A:trade;deribit:B:trade") == (StreamGroup("deribit", ("A", "B"), ("trade",)),)
    settings = load_settings(environ={"GAPLESS_STREAMS": STREAMS}, config_dir="/nonexistent", dotenv_path=None)
    assert [set(g.stream_pairs) for g in settings.streams] == [PAIRS]
    with pytest.raises(ConfigurationError, match=r"GAPLESS_STREAMS \(deribit\).*'quotes'"):
        load_settings(environ={"GAPLESS_STREAMS": STREAMS + ";deribit:SOL-PERPETUAL:quotes"},
                      config_dir="/nonexistent", dotenv_path=None)


def test_one_recorder_and_one_horizon_keep_exactly_the_pairs_given(tmp_path):
    clock = FakeClock(start=datetime(2026, 11, 25, 0, 20, tzinfo=timezone.utc), speed=30.0)
    database_url = "sqlite:///%s" % (tmp_path / "gapless.db")
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=2.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=5)) as tm:
        gapless = Gapless(streams=STREAMS, lookback="8m", history_delay="10s", rebuild_interval="0.5s", workers=0,
                          database_url=database_url, tardis_url=tm.http_url, tardis_ws_url=tm.ws_url,
                          now=tm.clock.now_us, recorder_options={"backoff_base": 0.05, "backoff_cap": 0.5})
        assert len(gapless.feeds) == 1
        with gapless:
            wait_until(lambda: gapless.last_rebuild is not None and gapless.is_gapless(), timeout=60,
                       message="gapless")
            frames = gapless.series()
            status = gapless.status()
            rows = {table: gapless.storage.db.execute_sql(
                'SELECT DISTINCT "symbol", "name" FROM "%s"' % table).fetchall()
                for table in ("trade", "liquidation", "book_snapshot_1")}
    assert set(frames) == PAIRS and false_minutes(tm, frames) == []
    assert [e["exchange"] for e in status["exchanges"]] == ["deribit"]
    assert {(s["symbol"], s["data_type"]) for s in status["streams"]} == PAIRS
    # one websocket, one filter object per product
    (connection,) = tm.connections
    assert sorted((o["symbols"], sorted(o["dataTypes"])) for o in connection.options) == [
        (["BTC-PERPETUAL"], ["liquidation", "trade"]), (["ETH-PERPETUAL"], ["quote_1m"])]
    # nothing else downloaded or stored: no ETH trades, no BTC quotes (the history probes and checks ask with filter
    # sets of their own, and store nothing)
    downloads = [r for r in tm.requests if not any(s.startswith("GAPLESS-") for o in r.options for s in o["symbols"])]
    asked = {(s, d) for r in downloads for o in r.options for s in o["symbols"] for d in o["dataTypes"]}
    assert asked <= PAIRS and ("ETH-PERPETUAL", "trade") not in asked
    assert rows == {"trade": [("BTC-PERPETUAL", "trade")], "liquidation": [("BTC-PERPETUAL", "liquidation")],
                    "book_snapshot_1": [("ETH-PERPETUAL", "quote_1m")]}


def test_a_chain_of_hundreds_of_symbols_is_asked_in_requests_of_at_most_a_hundred(tmp_path):
    from gapless.plan import MAX_SYMBOLS, plan_requests
    from gapless.storage import Storage
    from gapless.timeutil import MINUTE_US, parse_timestamp_us
    symbols = ["BTC-29JAN27-%d-C" % (50000 + 500 * i) for i in range(250)]
    store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
    try:
        start = parse_timestamp_us("2026-11-25T10:00:00Z")
        requests = plan_requests(store, "deribit", symbols, ["option_summary"], start, start + 30 * MINUTE_US,
                                 now_us=start + 60 * MINUTE_US)
    finally:
        store.close()
    assert [len(r.symbols) for r in requests] == [MAX_SYMBOLS, MAX_SYMBOLS, 50]
    assert sorted(s for r in requests for s in r.symbols) == sorted(symbols)
    assert {(r.start, r.claim_end, r.data_types) for r in requests} == {
        (requests[0].start, start + 30 * MINUTE_US, ("option_summary",))}
