"""Bulk replay chunks decoded into typed records (gapless.typed_lines) store exactly what the per-message path does.

The reference is the per-message converter on orjson's dicts, line by line: the path every line took before
records existed, and the one any chunk the records do not take still takes.
"""
import orjson

from gapless.convert import Converter, MalformedMessage
from gapless.ingest import RunParser
from gapless.runs import ReplayRequest
from gapless.typed_lines import decode_lines
from tests.support import DATA, us

TRADES = "replay_btc_disconnect_2026-11-24T1330_1345.ndjson"  # real trades, a disconnect at line 595
LIVE = "live_btc_eth_with_exchange_drop.ndjson"  # real raw quotes among other types


def _lines(name, kind=None, prefix=None):
    lines = (DATA / name).read_bytes().splitlines()
    if kind is not None:
        lines = [line for line in lines if orjson.loads(line).get("type") == kind]
    if prefix is not None:
        lines = [line for line in lines if line.startswith(prefix)]
    return lines


def _parsed(lines, data_types, symbols, start, end):
    """Rows per table and malformed lines, through RunParser (whole chunks, as the fetchers feed it)."""
    parser = RunParser(ReplayRequest("deribit", tuple(symbols), tuple(data_types), us(start), us(end)))
    batches = parser.feed(lines) + [parser.finish(True)]
    rows = {}
    for batch in batches:
        for table, block in batch.rows.items():
            rows.setdefault(table, []).extend(tuple(row) for row in block)
    return rows, sum(batch.malformed for batch in batches)


def _reference(lines):
    """Rows per table and malformed lines, one message at a time from orjson's dicts."""
    converter = Converter("replay")
    rows, malformed = {}, 0
    for line in lines:
        try:
            message = orjson.loads(line)
            if message.get("type") in ("disconnect", "error"):
                continue
            table, row = converter.convert(message)
        except (orjson.JSONDecodeError, MalformedMessage):
            malformed += 1
            continue
        rows.setdefault(table, []).append(row)
    return rows, malformed


def _quote_lines():
    """Real raw quotes of one symbol, made a longer run by stepping their times (decode needs a bulk chunk)."""
    quotes = _lines(LIVE, prefix=b'{"type":"book_snapshot","symbol":"BTC-PERPETUAL","exchange":"deribit","name":"quote"')
    assert len(quotes) >= 20
    out = []
    for k in range(6):  # the same prices again 6 times, an hour apart each time
        for line in quotes:
            message = orjson.loads(line)
            for field in ("timestamp", "localTimestamp"):
                message[field] = message[field].replace("T16:", "T%02d:" % (17 + k))
            out.append(orjson.dumps(message))
    return out


def test_real_trades_decode_as_records_and_store_what_the_per_message_path_stores():
    trades = _lines(TRADES, kind="trade")[:500]
    assert decode_lines(trades) is not None  # the records path is the one under test
    rows, malformed = _parsed(trades, ["trade"], ["BTC-PERPETUAL"], "2026-11-24T13:30", "2026-11-24T13:45")
    expected, expected_malformed = _reference(trades)
    assert rows == expected and malformed == expected_malformed == 0
    assert len(rows["trade"]) == 500


def test_real_raw_quotes_decode_as_records_and_store_what_the_per_message_path_stores():
    quotes = _quote_lines()
    assert decode_lines(quotes) is not None
    rows, malformed = _parsed(quotes, ["quote"], ["BTC-PERPETUAL"], "2026-11-25T00:00", "2026-11-26T00:00")
    expected, _ = _reference(quotes)
    assert malformed == 0 and rows == expected and len(rows["book_snapshot_1"]) == len(quotes)


def test_a_chunk_with_a_line_the_records_do_not_take_is_parsed_line_by_line_and_loses_nothing():
    trades = _lines(TRADES)  # trades, the disconnect line, quote_1m and trade_bar_1m lines
    assert decode_lines(trades) is None
    quotes = _quote_lines()
    broken = quotes[:100] + [b'{"type":"book_snapshot","symbol":"BTC-PERPETUAL",'] + quotes[100:]
    assert decode_lines(broken) is None
    rows, malformed = _parsed(broken, ["quote"], ["BTC-PERPETUAL"], "2026-11-25T00:00", "2026-11-26T00:00")
    assert malformed == 1 and rows == _reference(quotes)[0]


def test_values_the_records_take_but_storage_refuses_go_the_per_message_way_and_are_reported():
    quotes = _quote_lines()
    out_of_bounds = orjson.loads(quotes[50])
    out_of_bounds["bids"][0]["amount"] = 1e300  # a type-correct number beyond the sanity bound
    empty_side = orjson.loads(quotes[60])
    empty_side["asks"] = []  # a side without levels: stored as NULLs, not a shorter row
    idless = _lines(TRADES, kind="trade")[:200]
    no_id = orjson.loads(idless[7])
    del no_id["id"]
    lines = quotes[:50] + [orjson.dumps(out_of_bounds)] + quotes[51:60] + [orjson.dumps(empty_side)] + quotes[61:]
    assert decode_lines(lines) is not None  # every line has the record's types
    rows, malformed = _parsed(lines, ["quote"], ["BTC-PERPETUAL"], "2026-11-25T00:00", "2026-11-26T00:00")
    expected, expected_malformed = _reference(lines)
    assert malformed == expected_malformed == 1 and rows == expected
    assert any(row[-2:] == (None, None) for row in rows["book_snapshot_1"])
    trades = idless[:7] + [orjson.dumps(no_id)] + idless[8:]
    assert decode_lines(trades) is not None
    rows, malformed = _parsed(trades, ["trade"], ["BTC-PERPETUAL"], "2026-11-24T13:30", "2026-11-24T13:45")
    assert malformed == 0 and rows == _reference(trades)[0]


def test_a_mistyped_field_is_not_decoded_as_a_record():
    quotes = _quote_lines()
    text_price = orjson.loads(quotes[10])
    text_price["bids"][0]["price"] = "86461.5"  # a number as a string: orjson's dict keeps it, the check refuses it
    lines = quotes[:10] + [orjson.dumps(text_price)] + quotes[11:]
    assert decode_lines(lines) is None
    rows, malformed = _parsed(lines, ["quote"], ["BTC-PERPETUAL"], "2026-11-25T00:00", "2026-11-26T00:00")
    expected, expected_malformed = _reference(lines)
    assert malformed == expected_malformed == 1 and rows == expected
