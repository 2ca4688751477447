"""Issue 19, items 3 and 4: option summaries and an option's expiration, on lines shaped as tardis sends them.

(The double's option chain and the truth against its market model: tests/test_options_truth.py.)
"""
import orjson
import numpy as np
import pandas as pd
import pytest

from gapless.contract import clip_to_life, life_end, option_contract
from gapless.follower import CaughtUp, follow
from gapless.healing import HealingPlanner
from gapless.ingest import RunParser
from gapless.publish import publish
from gapless.runs import ReplayRequest
from gapless.stitch import series
from gapless.status import format_status, status_report
from gapless.storage import Storage
from gapless.timeutil import MINUTE_US, parse_timestamp_us

SYMBOL = "BTC-25NOV26-85000-C"  # expires 2026-11-25T08:00Z
EXPIRY = parse_timestamp_us("2026-11-25T08:00:00Z")


def at(second):
    """07:MM:SS.fff on 2026-11-25 (second 3600 is the expiration, 08:00)."""
    minutes, seconds = divmod(second, 60)
    return "2026-11-25T%02d:%02d:%06.3fZ" % (7 + int(minutes) // 60, int(minutes) % 60, seconds)


def summary(second, bid=True, last_price=None, symbol=SYMBOL, **extra):
    message = {"type": "option_summary", "symbol": symbol, "exchange": "deribit", "optionType": "call",
               "strikePrice": 85000, "expirationDate": "2026-11-25T08:00:00.000Z", "bestAskPrice": 0.0125,
               "bestAskAmount": 3, "bestAskIV": 61.5, "openInterest": 120.5, "markPrice": 0.012 + second / 1e6,
               "markIV": 60.25, "delta": 0.41, "gamma": 0.00012, "vega": 8.5, "theta": -45.2, "rho": 0.9,
               "underlyingPrice": 84500.5, "underlyingIndex": "SYN.BTC-25NOV26", "timestamp": at(second),
               "localTimestamp": at(second + 0.05)}
    if bid:
        message.update(bestBidPrice=0.0115, bestBidAmount=2, bestBidIV=58.75)
    if last_price is not None:
        message["lastPrice"] = last_price
    message.update(extra)
    return orjson.dumps(message)


def store_run(store, lines, start, end):
    request = ReplayRequest("deribit", (SYMBOL,), ("option_summary",), start, end, anchored=True)
    parser = RunParser(request)
    batches = parser.feed(lines) + [parser.finish(complete=True)]
    for batch in batches:
        store.write(batch.rows, batch.claims)
    return batches


@pytest.fixture
def store(tmp_path):
    storage = Storage("sqlite:///%s" % (tmp_path / "g.db"))
    yield storage
    storage.close()


def test_option_contracts_are_read_from_deribit_symbols():
    contract = option_contract("deribit", "BTC-29JAN27-85000-C")
    assert (contract.underlying, contract.option_type, contract.strike_price) == ("BTC", "call", 85000.0)
    assert contract.expiration == parse_timestamp_us("2027-01-29T08:00:00Z")
    decimal = option_contract("deribit", "xrp_usdc-30jun23-0d625-p")  # Deribit keeps a 'd' for the point
    assert (decimal.option_type, decimal.strike_price) == ("put", 0.625)
    assert option_contract("deribit", "BTC-8DEC26-90000-P").expiration == parse_timestamp_us("2026-12-08T08:00:00Z")
    for not_an_option in ("BTC-PERPETUAL", "BTC-27DEC26", "BTC-31FEB27-1000-C", "BTC-29JAN27-85000-X"):
        assert option_contract("deribit", not_an_option) is None and life_end("deribit", not_an_option) is None
    assert option_contract("binance-futures", "BTC-29JAN27-85000-C") is None  # Deribit's naming only
    assert clip_to_life("deribit", SYMBOL, EXPIRY - 10 * MINUTE_US, EXPIRY + MINUTE_US) == (EXPIRY - 10 * MINUTE_US,
                                                                                        EXPIRY)
    assert clip_to_life("deribit", SYMBOL, EXPIRY + MINUTE_US, EXPIRY + 5 * MINUTE_US) == (EXPIRY, EXPIRY)


def test_a_minute_of_option_summaries_is_its_last_message_as_sent(store):
    start = parse_timestamp_us(at(0))
    lines = [summary(s, bid=s != 118, last_price=0.0118 if s >= 70 else None) for s in range(0, 180, 2)
             if not 120 <= s < 178]
    store_run(store, lines, start, start + 3 * MINUTE_US)
    frame = series(store, "deribit", [SYMBOL], ["option_summary"], start, start + 3 * MINUTE_US)[
        (SYMBOL, "option_summary")]
    assert list(frame["source"]) == ["replay"] * 3
    # 07:00: no trade yet (last_price NaN, never taken from elsewhere); 07:01: its last message had no bid (NaN,
    # not the bid of an earlier message); 07:02: one message at :58, the state at the close
    assert np.isnan(frame["last_price"].iloc[0]) and frame["last_price"].iloc[1] == 0.0118
    assert np.isnan(frame["best_bid_price"].iloc[1]) and np.isnan(frame["best_bid_iv"].iloc[1])
    assert frame["best_bid_price"].iloc[0] == 0.0115 and frame["best_bid_iv"].iloc[2] == 58.75
    assert frame["mark_price"].iloc[1] == 0.012 + 118 / 1e6 and frame["mark_iv"].iloc[0] == 60.25  # percent
    assert list(frame["option_type"]) == ["call"] * 3 and list(frame["strike_price"]) == [85000.0] * 3
    assert set(frame["underlying_index"]) == {"SYN.BTC-25NOV26"}
    assert set(frame["expiration_date"]) == {pd.Timestamp("2026-11-25T08:00:00Z")}
    stored = store.db.execute_sql('SELECT "option_type", "strike_price", "expiration_date", "underlying_index", '
                                  '"best_bid_price" FROM "option_summary" ORDER BY "timestamp" DESC LIMIT 1').fetchone()
    assert stored == ("call", 85000.0, EXPIRY, "SYN.BTC-25NOV26", 0.0115)


def test_a_malformed_option_summary_is_counted_and_not_stored(store):
    start = parse_timestamp_us(at(0))
    batches = store_run(store, [summary(1), summary(2, optionType="future"), summary(3, strikePrice="x")], start,
                        start + MINUTE_US)
    assert sum(b.malformed for b in batches) == 2 and store.count_rows("option_summary") == 1
    # strike 1 and strike True are equal as dict keys: the batch converter checks each distinct contract once,
    # and must still refuse True (alone with a good message in its batch, so the batch path meets it)
    batches = store_run(store, [summary(4, strikePrice=1), summary(5, strikePrice=True)], start, start + MINUTE_US)
    assert sum(b.malformed for b in batches) == 1 and store.count_rows("option_summary") == 2


def test_an_option_ends_at_its_expiration_outside_the_stream_not_missing(store):
    start = parse_timestamp_us(at(0))
    # the last hour of the option: it sends until 08:00 and nothing after
    store_run(store, [summary(s) for s in range(0, 3600, 5)], start, EXPIRY + 30 * MINUTE_US)
    window = (start, EXPIRY + 30 * MINUTE_US)
    frame = series(store, "deribit", [SYMBOL], ["option_summary"], *window)[(SYMBOL, "option_summary")]
    assert frame.index[-1] == pd.Timestamp("2026-11-25T07:59:00Z") and not frame["missing"].any()
    # (the status window ends a minute before now: the latest minute settles first)
    report = status_report(store, [("deribit", (SYMBOL,), ("option_summary",))], window[1] - window[0] - MINUTE_US,
                           {"deribit": {"delay": MINUTE_US}}, window[1])
    (stream,) = report["streams"]
    assert stream["expired"] and stream["expires"] == "2026-11-25T08:00:00Z"
    assert stream["gaps"] == [] and stream["minutes"]["missing"] == 0 and stream["gapless"]
    assert "EXPIRED at 2026-11-25T08:00:00Z" in format_status(report)
    result = publish(store, [("deribit", SYMBOL, "option_summary")], *window, now_us=window[1])
    assert result.missing == 0
    last = store.db.execute_sql('SELECT MAX("minute") FROM "minute_series"').fetchone()[0]
    assert last == EXPIRY - MINUTE_US
    # a follower gets the option's minutes up to its expiration, with its contract's fields
    events = []
    for event in follow("deribit:%s:option_summary" % SYMBOL, database_url=store.url, since=start, timeout=0.2):
        if isinstance(event, CaughtUp):
            break
        events.append(event)
    assert len(events) == 60 and events[-1].minute == pd.Timestamp("2026-11-25T07:59:00Z")
    assert events[0].values["option_type"] == "call" and events[0].values["strike_price"] == 85000.0
    assert events[0].values["expiration_date"] == "2026-11-25T08:00:00Z" and events[0].values["mark_iv"] == 60.25
    # nothing after the expiration is ever asked for
    wanted = HealingPlanner().wanted(lambda *a: None, "deribit", [SYMBOL, "BTC-PERPETUAL"], ["option_summary"],
                                     EXPIRY - 5 * MINUTE_US, EXPIRY + 20 * MINUTE_US, window[1])
    assert {key[0]: ranges for key, ranges in wanted.items()} == {
        SYMBOL: [(EXPIRY - 5 * MINUTE_US, EXPIRY)], "BTC-PERPETUAL": [(EXPIRY - 5 * MINUTE_US, EXPIRY + 20 * MINUTE_US)]}
