"""The columnar parse of book snapshot lines (gapless.convert_arrow) gives exactly the dict path's batches.

Both paths run over the same lines in the same chunks (RunParser(columnar=False) sends every list the dict
way); batches, rows, claims and counts must be equal. Lines are captured ones and randomized ones (numbers in
every JSON shape, levels missing or beyond the depth, null prices, repeated timestamps, several symbols);
every way a line can differ from a plain snapshot must send the list to the dict path, which alone judges it.
"""
import random

import orjson
import pytest

from gapless.convert import BatchConverter
from gapless.convert_arrow import parse_snapshot_lines
from gapless.ingest import RunParser
from gapless.runs import ReplayRequest
from gapless.timeutil import MINUTE_US, iso
from tests.support import fixture_lines, us

QUOTES = "replay_btc_eth_quote_trade_bars_2026-11-23T0000_0020.ndjson"
DAY = us("2026-11-23T00:00")


def _batches(lines, chunks, data_types, symbols, columnar, batch_rows):
    request = ReplayRequest("deribit", tuple(symbols), tuple(data_types), DAY, DAY + 30 * MINUTE_US)
    parser = RunParser(request, batch_rows=batch_rows, columnar=columnar)
    parser.run_id = "run"
    out = []
    at = 0
    for size in chunks:
        out.extend(parser.feed(lines[at:at + size]))
        at += size
    out.append(parser.finish(True))
    return [(sorted((table, list(block)) for table, block in b.rows.items()),
             sorted(repr(c) for c in b.claims), b.lines, b.messages, b.malformed, b.progress_us, b.silent)
            for b in out]


def _chunks(rng, n):
    sizes = []
    while sum(sizes) < n:
        sizes.append(rng.choice([1, 2, 7, 50, 333, 1000, 5000]))
    return sizes


def _number(rng):
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randrange(0, 10 ** rng.randrange(1, 12))
    if kind == 1:
        return round(rng.uniform(0, 100000), rng.randrange(0, 5))
    if kind == 2:
        return rng.uniform(1e-9, 1e-4)  # printed with an exponent
    if kind == 3:
        return -round(rng.uniform(0, 10), 3)
    if kind == 4:
        return 0
    if kind == 5:
        return rng.uniform(1e12, 9.9e17)
    return rng.random()


def _stamp(t, digits):
    seconds = iso(t - t % 1_000_000)[:19]
    return seconds + ("" if digits == 0 else ".%06d" % (t % 1_000_000))[:1 + digits] + "Z"


def _random_lines(rng, n, name, depth, symbols):
    lines = []
    t = DAY
    digits = rng.choice([0, 3, 6])
    for _ in range(n):
        t += rng.choice([0, 0, 1000, 137, 250_000])  # repeated timestamps: seq numbering
        sides = []
        for _side in range(2):
            levels = []
            for _level in range(rng.choice([0, 1, depth, depth, depth + 2])):
                level = {"price": _number(rng), "amount": _number(rng)}
                if rng.random() < 0.03:
                    level["price"] = None
                if rng.random() < 0.03:
                    del level["amount"]
                levels.append(level)
            sides.append(levels)
        lts = t + rng.choice([0, 1, 2000])
        lines.append(orjson.dumps({
            "type": "book_snapshot", "symbol": rng.choice(symbols), "exchange": "deribit", "name": name,
            "depth": depth, "interval": 0, "bids": sides[0], "asks": sides[1],
            "timestamp": _stamp(t, digits), "localTimestamp": _stamp(max(lts, t), digits)}))
    # arrival order (the ingest checks it); repeated arrivals keep their order
    return sorted(lines, key=lambda line: orjson.loads(line)["localTimestamp"])


def _same_both_ways(lines, chunks, data_types, symbols, batch_rows=500):
    columnar = _batches(lines, chunks, data_types, symbols, True, batch_rows)
    by_dicts = _batches(lines, chunks, data_types, symbols, False, batch_rows)
    assert columnar == by_dicts
    return columnar


def test_captured_quotes_give_the_same_batches_both_ways():
    lines = [line for line in fixture_lines(QUOTES) if b'"name":"quote"' in line]
    assert parse_snapshot_lines(lines, BatchConverter("replay").snapshot_depth) is not None  # not vacuous
    batches = _same_both_ways(lines, _chunks(random.Random(1), len(lines)), ["quote"],
                              ["BTC-PERPETUAL", "ETH-PERPETUAL"])
    assert sum(b[3] for b in batches) == len(lines)


@pytest.mark.parametrize("seed", range(12))
def test_random_snapshots_give_the_same_batches_both_ways(seed):
    rng = random.Random(seed)
    name, depth = rng.choice([("quote", 1), ("book_snapshot_5_1s", 5), ("book_snapshot_2_100ms", 2)])
    symbols = rng.choice([["BTC-PERPETUAL"], ["BTC-PERPETUAL", "ETH-PERPETUAL"]])
    lines = _random_lines(rng, rng.randrange(200, 3000), name, depth, symbols)
    assert parse_snapshot_lines(lines, BatchConverter("replay").snapshot_depth) is not None
    _same_both_ways(lines, _chunks(rng, len(lines)), [name], symbols, batch_rows=rng.choice([50, 500, 5000]))


PLAIN = (b'{"type":"book_snapshot","symbol":"BTC-PERPETUAL","exchange":"deribit","name":"quote","depth":1,'
         b'"interval":0,"bids":[{"price":86461.5,"amount":1190}],"asks":[{"price":86462,"amount":8160}],'
         b'"timestamp":"2026-11-23T00:00:01.369Z","localTimestamp":"2026-11-23T00:00:01.371Z"}')
ODD = {
    "NaN price": PLAIN.replace(b"86461.5", b"NaN"),
    "price as text": PLAIN.replace(b"86461.5", b'"86461.5"'),
    "boolean amount": PLAIN.replace(b"1190", b"true"),
    "price past the sanity bound": PLAIN.replace(b"86461.5", b"1e19"),
    "price past a double": PLAIN.replace(b"86461.5", b"1e400"),
    "a field more": PLAIN.replace(b'"interval":0,', b'"interval":0,"extra":1,'),
    "a field more in a level": PLAIN.replace(b'"amount":1190}', b'"amount":1190,"count":3}'),
    "a repeated field": PLAIN.replace(b'"depth":1,', b'"depth":1,"symbol":"ETH-PERPETUAL",'),
    "two objects on a line": PLAIN + PLAIN,
    "a level that is null": PLAIN.replace(b'[{"price":86461.5,"amount":1190}]', b"[null]"),
    "bids null": PLAIN.replace(b'[{"price":86461.5,"amount":1190}]', b"null"),
    "a level that is a number": PLAIN.replace(b'[{"price":86461.5,"amount":1190}]', b"[1]"),
    "nanoseconds": PLAIN.replace(b'01.371Z"', b'01.371000001Z"'),
    "a zone offset": PLAIN.replace(b'01.371Z"', b'01.371+00:00"'),
    "a date without a time": PLAIN.replace(b'"2026-11-23T00:00:01.369Z"', b'"2026-11-23"'),
    "no type": PLAIN.replace(b'"type":"book_snapshot",', b""),
    "a trade": PLAIN.replace(b'"type":"book_snapshot"', b'"type":"trade"'),
    "an empty symbol": PLAIN.replace(b'"BTC-PERPETUAL"', b'""'),
    "an unknown name": PLAIN.replace(b'"name":"quote"', b'"name":"quotes"'),
    "a trade bar name": PLAIN.replace(b'"name":"quote"', b'"name":"trade_bar_1m"'),
    "a blank line": b"",
    "not JSON": b"{oops}",
    "a disconnect": b'{"type":"disconnect","exchange":"deribit","localTimestamp":"2026-11-23T00:00:01.371Z"}',
}


@pytest.mark.parametrize("odd", sorted(ODD))
def test_any_line_off_the_plain_snapshot_shape_sends_the_list_the_dict_way(odd):
    lines = [PLAIN.replace(b"00:00:01.", b"00:00:00."), ODD[odd], PLAIN.replace(b"00:00:01.", b"00:00:02.")]
    assert parse_snapshot_lines(lines, BatchConverter("replay").snapshot_depth) is None
    # and the dict path's judgment stands (stored, or counted malformed): the same batches both ways
    _same_both_ways(lines, [3], ["quote"], ["BTC-PERPETUAL", "ETH-PERPETUAL"])


def test_a_block_is_never_numbered_before_dicts_that_arrived_earlier():
    # a list that goes the dict path leaves dicts pending; the next plain list must not be converted (and
    # seq-numbered) before them: both packets share their timestamps, so seq tells them apart
    first = [PLAIN, ODD["a field more in a level"].replace(b"86461.5", b"86461")]
    second = [PLAIN.replace(b"8160", b"8161"), PLAIN.replace(b"8160", b"8162")]
    _same_both_ways(first + second, [2, 2], ["quote"], ["BTC-PERPETUAL"], batch_rows=5000)
