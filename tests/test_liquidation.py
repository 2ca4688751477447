"""Issue 19, item 1: Deribit's liquidations, end to end against the double's market model.

A liquidation minute is claimed exactly where the same run's trades channel is (the run asks ``trade`` along,
stored or not), never from liquidation messages alone: they are rare, so their silence proves nothing. A
liquidation is also a trade, and neither series counts it twice.
"""
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import requests

from gapless.download import Downloader
from gapless.ingest import RunParser
from gapless.recorder import Recorder
from gapless.runs import ReplayRequest
from gapless.stitch import series
from gapless.storage import Storage
from gapless.timeutil import MINUTE_US, US
from tests.fake_tardis import FakeClock, FakeTardisMachine, ManualClock, MarketConfig
from tests.support import undo_schema_5, wait_until
from tests.truth import minute_truth, trades_truth

DAY = datetime(2026, 11, 25, tzinfo=timezone.utc)
SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
COLUMNS = ["liquidations", "volume", "buy_volume", "sell_volume"]


def us(dt):
    return int(dt.timestamp()) * US


def assert_equals_truth(machine, frame, symbol, data_type, columns):
    served = frame[frame["source"] != "missing"]
    start, end = int(frame.index[0].value // 1000), int(frame.index[-1].value // 1000) + MINUTE_US
    truth = minute_truth(machine.market, "deribit", symbol, data_type, start, end).loc[served.index]
    pd.testing.assert_frame_equal(served[columns].astype(float), truth[columns], check_names=False)
    got, want = served["vwap"].to_numpy(dtype=float), truth["vwap"].to_numpy(dtype=float)
    assert np.allclose(got, want, rtol=1e-9, atol=0, equal_nan=True)
    return served, truth


def download(store, tm, data_types, a, b):
    downloader = Downloader(store, tm.http_url, workers=0, progress=False, now=tm.clock.now_us)
    return downloader.download("deribit", SYMBOLS, data_types, a, b)


def test_replayed_liquidation_minutes_equal_the_market_model_and_no_trade_row_is_stored(tmp_path):
    clock = ManualClock(DAY + timedelta(hours=12))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=1.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=60)) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        try:
            a, b = us(DAY + timedelta(hours=10)), us(DAY + timedelta(hours=11))
            download(store, tm, ["liquidation"], a, b)
            # the trades channel is asked along (the evidence), its rows are not kept
            assert tm.requests and all(sorted(r.options[0]["dataTypes"]) == ["liquidation", "trade"]
                                       for r in tm.requests)
            assert store.count_rows("trade") == 0 and store.count_rows("liquidation") > 0
            frames = series(store, "deribit", SYMBOLS, ["liquidation"], a, b)
            for symbol in SYMBOLS:
                served, truth = assert_equals_truth(tm, frames[(symbol, "liquidation")], symbol, "liquidation",
                                                    COLUMNS)
                assert len(served) == 60  # history is whole here: every minute is replay, quiet ones included
                # the window holds what the issue names: quiet minutes (a true 0) and a minute with several
                # liquidations on both sides
                assert (truth["liquidations"] == 0).sum() > 5
                assert ((truth["liquidations"] >= 2) & (truth["buy_volume"] > 0) & (truth["sell_volume"] > 0)).any()
                assert served.loc[truth["liquidations"] == 0, "vwap"].isna().all()
        finally:
            store.close()


def test_trades_and_liquidations_together_count_every_fill_once(tmp_path):
    clock = ManualClock(DAY + timedelta(hours=12))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=1.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=60)) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        try:
            a, b = us(DAY + timedelta(hours=10)), us(DAY + timedelta(hours=10, minutes=30))
            download(store, tm, ["trade", "liquidation"], a, b)
            frames = series(store, "deribit", SYMBOLS, ["trade", "liquidation"], a, b)
            for symbol in SYMBOLS:
                trades = trades_truth(tm.market, "deribit", symbol, a, b)
                _, stored = store.read_rows("trade", "deribit", symbol, "trade", "replay", a, b)
                assert len(stored) == len(trades)  # a liquidation is not a second trade
                assert_equals_truth(tm, frames[(symbol, "trade")], symbol, "trade",
                                    ["open", "high", "low", "close", "volume", "trades"])
                served, truth = assert_equals_truth(tm, frames[(symbol, "liquidation")], symbol, "liquidation",
                                                    COLUMNS)
                assert len(served) == 30 and truth["liquidations"].sum() > 0
        finally:
            store.close()


def _replay_lines(tm, start, end):
    options = {"exchange": "deribit", "symbols": SYMBOLS, "from": start.isoformat(), "to": end.isoformat(),
               "dataTypes": ["trade", "liquidation"], "withDisconnectMessages": True}
    answer = requests.get(tm.http_url + "/replay-normalized", params={"options": json.dumps(options)}, timeout=30)
    return [line for line in answer.content.split(b"\n") if line]


def test_liquidation_messages_alone_never_claim_a_minute():
    """Without the trades channel's own lines a run proves nothing about the minutes between liquidations."""
    clock = ManualClock(DAY + timedelta(hours=12))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=1.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=60)) as tm:
        start, end = DAY + timedelta(hours=10), DAY + timedelta(hours=10, minutes=20)
        lines = _replay_lines(tm, start, end + timedelta(minutes=1))
    liquidations = [line for line in lines if b'"type":"liquidation"' in line]
    assert 3 < len(liquidations) < len(lines) / 10

    def parse(fed, data_type="liquidation"):
        request = ReplayRequest("deribit", tuple(SYMBOLS), (data_type,), us(start), us(end))
        parser = RunParser(request)
        batches = parser.feed(fed) + [parser.finish(complete=True)]
        claims = [c for batch in batches for c in batch.claims]
        rows = sum(len(batch.rows.get("liquidation", ())) for batch in batches)
        return claims, rows, batches[-1].unclaimed, batches

    claims, rows, unclaimed, _ = parse(liquidations)
    assert rows == len(liquidations)  # stored ...
    assert claims == []  # ... but never claimed on their own
    assert sorted((u[0], u[4]) for u in unclaimed) == [(s, "no_data") for s in SYMBOLS]
    claims, rows, unclaimed, batches = parse(lines)
    assert {(c.symbol, c.data_type) for c in claims} == {(s, "liquidation") for s in SYMBOLS}
    assert all("trade" not in batch.rows or not batch.rows["trade"] for batch in batches)  # evidence only
    trade_claims, _, _, _ = parse(lines, "trade")  # exactly where the same run claims the trades channel
    assert [(c.symbol, c.start, c.end) for c in claims] == [(c.symbol, c.start, c.end) for c in trade_claims]
    assert claims[-1].end == us(end)


def test_live_liquidations_equal_the_market_model_and_a_disconnect_in_a_burst_leaves_a_gap(tmp_path):
    clock = FakeClock(start=DAY + timedelta(hours=10, minutes=1, seconds=40), speed=20.0)
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=1.0, trade_rate=3.0),
                           availability_delay=timedelta(seconds=60)) as tm:
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        recorder = Recorder(store, tm.ws_url, "deribit", SYMBOLS, ["liquidation"],
                            clock=lambda: tm.clock.now_us() / 1e6, backoff_base=0.05, backoff_cap=0.5)
        recorder.start()
        try:
            first = us(DAY + timedelta(hours=10, minutes=2))
            wait_until(lambda: tm.clock.now_us() > first + 90 * US, timeout=30, message="90 s recorded")
            assert recorder.health()["disconnects"] == 0
            dropped_at = tm.clock.now_us()
            tm.exchange_drop(2.0)  # mid-stream: liquidations in that stretch are lost, and so are the trades
            wait_until(lambda: recorder.health()["disconnects"] == 1, timeout=10, message="the drop")
            last = first + 4 * MINUTE_US
            wait_until(lambda: tm.clock.now_us() > last + 30 * US, timeout=60, message="four minutes recorded")
        finally:
            recorder.stop()
        try:
            frames = series(store, "deribit", SYMBOLS, ["liquidation"], first, last)
            assert store.count_rows("trade") == 0
            dropped = (dropped_at - dropped_at % MINUTE_US)
            total = 0
            for symbol in SYMBOLS:
                frame = frames[(symbol, "liquidation")]
                served, truth = assert_equals_truth(tm, frame, symbol, "liquidation", COLUMNS)
                assert set(served["source"]) == {"live"}
                total += truth["liquidations"].sum()
                # the minute of the drop is not served as a quiet one: the channel was down in it
                assert frame.loc[pd.Timestamp(dropped, unit="us", tz="UTC"), "source"] == "missing"
            assert total > 0
        finally:
            store.close()


def test_a_schema_4_database_is_upgraded_with_the_liquidation_columns_and_keeps_its_rows(tmp_path):
    import sqlite3

    from gapless.schema import SCHEMA_VERSION
    path = tmp_path / "old.db"
    store = Storage("sqlite:///%s" % path)
    store.put_meta("gapless_probe_row", "kept")
    store.close()
    with sqlite3.connect(path) as db:  # what a schema 4 database looks like: no liquidations column
        undo_schema_5(db)
        db.execute("""UPDATE gapless_meta SET value = '4' WHERE key = 'schema_version'""")
    store = Storage("sqlite:///%s" % path)
    try:
        assert SCHEMA_VERSION == 5 and store.meta_value("schema_version") == "5"
        assert store.meta_value("gapless_probe_row") == "kept"
        for table in ("minute_agg", "minute_series"):
            columns = [c.name for c in store.db.get_columns(table)]
            assert {"liquidations", "best_bid_iv", "delta", "underlying_price"} <= set(columns), (table, columns)
        assert store.has_table("liquidation") and store.has_table("book_ticker") and store.has_table("option_summary")
    finally:
        store.close()
