"""Conversion of tardis messages to rows: every captured line, both code paths, and bad input."""
import orjson
import pytest

from gapless.convert import BatchConverter, Converter, MalformedMessage, normalize, parse_json, table_columns
from gapless.timeutil import parse_timestamp_us
from tests.support import fixture_messages

FIXTURE_FILES = [
    "replay_btc_eth_quote_trade_bars_2026-11-23T0000_0020.ndjson",
    "replay_btc_book_change_2026-11-23T0000_0002.ndjson",
    "replay_btc_disconnect_2026-11-24T1330_1345.ndjson",
    "replay_btc_midday_start_no_snapshot_2026-11-23T1335_1340.ndjson",
    "live_btc_eth_with_exchange_drop.ndjson",
]


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_every_fixture_message_converts_to_the_same_values(name):
    converter = Converter("replay")
    data = [m for m in fixture_messages(name) if m["type"] not in ("disconnect", "error")]
    assert data
    for message in data:
        table, row = converter.convert(message)
        record = dict(zip(table_columns(table), row))
        assert record["dtype"] == message["type"]
        assert record["exchange"] == message["exchange"] and record["symbol"] == message["symbol"]
        assert record["timestamp"] == parse_timestamp_us(message["timestamp"])
        assert record["local_timestamp"] == parse_timestamp_us(message["localTimestamp"])
        if message["type"] == "book_snapshot":
            assert table == "book_snapshot_%d" % message["depth"]
            for side in ("bids", "asks"):
                for i, level in enumerate(message[side]):
                    assert record["%s_%d_price" % (side, i)] == level.get("price")
                    assert record["%s_%d_amount" % (side, i)] == level.get("amount")
        elif message["type"] == "trade":
            assert (record["trade_id"], record["price"], record["amount"], record["side"]) == (
                message["id"], message["price"], message["amount"], message["side"])
        elif message["type"] == "trade_bar":
            assert record["open_timestamp"] == parse_timestamp_us(message["openTimestamp"])
            assert (record["open"], record["close"], record["volume"], record["trades"], record["vwap"]) == (
                message["open"], message["close"], message["volume"], message["trades"], message["vwap"])
        elif message["type"] == "derivative_ticker":
            assert record["mark_price"] == message["markPrice"]
            assert record["open_interest"] == message["openInterest"]
        elif message["type"] == "book_change":
            assert orjson.loads(record["bids"]) == [[lv["price"], lv["amount"]] for lv in message["bids"]]
            assert record["is_snapshot"] == message["isSnapshot"]


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_batch_path_equals_per_message_path(name):
    data = [m for m in fixture_messages(name) if m["type"] not in ("disconnect", "error")]
    single, batch = Converter("live"), BatchConverter("live")
    expected = {}
    for message in data:
        table, row = single.convert(message)
        expected.setdefault(table, []).append(row)
    got = {}
    for i in range(0, len(data), 333):
        rows, malformed = batch.convert_many(data[i:i + 333])
        assert malformed == []
        for table, table_rows in rows.items():
            got.setdefault(table, []).extend(table_rows)
    assert {t: sorted(r) for t, r in got.items()} == {t: sorted(r) for t, r in expected.items()}


def test_normalize_gives_the_documented_record():
    message = fixture_messages("replay_btc_eth_quote_trade_bars_2026-11-23T0000_0020.ndjson")[0]
    record = normalize(message)
    assert record["dtype"] == "book_snapshot" and "type" not in record
    assert record["timestamp"].isoformat() == "2026-11-23T00:00:00.120000+00:00"
    assert record["local_timestamp"].isoformat() == "2026-11-23T00:00:00.122585+00:00"
    assert (record["bids_0_price"], record["bids_0_amount"], record["asks_0_price"]) == (83695, 2360, 83695.5)


def test_timestamps_with_seven_fraction_digits_and_none_are_parsed():
    assert parse_timestamp_us("2026-11-23T00:00:00.1225851Z") == parse_timestamp_us("2026-11-23T00:00:00.122585Z")
    assert parse_timestamp_us("2026-11-23T00:00:01Z") == parse_timestamp_us("2026-11-23T00:00:00.999999Z") + 1


GOOD_TRADE = {"type": "trade", "symbol": "BTC-PERPETUAL", "exchange": "deribit", "id": "1", "price": 100.5,
              "amount": 10, "side": "buy", "timestamp": "2026-11-23T00:00:01.000Z",
              "localTimestamp": "2026-11-23T00:00:01.002Z"}


@pytest.mark.parametrize("change, reason", [
    ({"type": "tradez"}, "unknown message type"),
    ({"price": None}, "missing number"),
    ({"price": "100"}, "bad number"),
    ({"amount": 1e300}, "bad number"),
    ({"side": "long"}, "bad trade side"),
    ({"timestamp": "2026-11-23"}, "bad timestamp"),
    ({"localTimestamp": 5}, "bad timestamp"),
    ({"symbol": ""}, "bad exchange or symbol"),
])
def test_bad_messages_are_rejected_with_a_reason(change, reason):
    message = dict(GOOD_TRADE, **change)
    with pytest.raises(MalformedMessage, match=reason):
        Converter("replay").convert(message)
    rows, malformed = BatchConverter("replay").convert_many([GOOD_TRADE, message])
    assert len(malformed) == 1 and reason in malformed[0][1]
    assert len(rows["trade"]) == 1


def test_missing_field_is_named():
    message = dict(GOOD_TRADE)
    del message["localTimestamp"]
    with pytest.raises(MalformedMessage, match="localTimestamp"):
        Converter("replay").convert(message)


@pytest.mark.parametrize("raw", [b"not json", b'{"a": NaN}', b"[1, 2]", b'{"price": 1e999}'])
def test_unparseable_lines_raise_malformed(raw):
    with pytest.raises(MalformedMessage):
        parse_json(raw)


def test_messages_sharing_both_timestamps_get_distinct_seq():
    quote = fixture_messages("replay_btc_eth_quote_trade_bars_2026-11-23T0000_0020.ndjson")[0]
    other = dict(quote, bids=[{"price": 1, "amount": 2}])
    rows, _ = BatchConverter("replay").convert_many([quote, other])
    assert [r[7] for r in rows["book_snapshot_1"]] == [0, 1]
    single = Converter("replay")
    assert [single.convert(m)[1][7] for m in (quote, other, quote)] == [0, 1, 2]
