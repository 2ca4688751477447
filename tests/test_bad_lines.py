"""Issue 6, bad input from the server: lines that are not JSON, have unknown types, miss fields, carry NaN or
huge numbers, or arrive out of order. Each is counted and logged, never stored, and never fatal: the rest
of the stream is stored exactly as sent.
"""
import json
import logging

import orjson
import pytest

from gapless.cli import main
from gapless.convert import Converter
from gapless.ingest import LATENCY_MARGIN_US
from gapless.recorder import Recorder
from gapless.timeutil import US, parse_timestamp_us
from tests.fake_tardis import FakeTardisMachine, MarketConfig
from tests.invariants import assert_live_is_a_prefix_per_connection, stored_rows
from tests.support import wait_until

SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
# what `download --from 00:05 --to 00:10` asks: two minutes of look-behind, one minute past the end
OPTIONS = {"exchange": "deribit", "symbols": SYMBOLS, "dataTypes": ["trade"], "from": "2026-11-25T00:03:00Z",
           "to": "2026-11-25T00:11:00Z", "withDisconnectMessages": True}
AFTER = 300  # the bad line comes after this many good ones


pytestmark = pytest.mark.usefixtures("isolated_cli")


def bad_lines(neighbour, earlier):
    """Bad lines shaped like the trade ``neighbour`` (same arrival time, so only the defect matters)."""
    good = dict(neighbour, id="BAD-1")

    def variant(**changes):
        line = dict(good)
        for key, value in changes.items():
            if value is None:
                line.pop(key, None)
            else:
                line[key] = value
        return json.dumps(line, separators=(",", ":"))  # allow_nan: NaN and Infinity as JavaScript prints them

    return {
        "not JSON": "this is not JSON {",
        "truncated JSON": variant()[:40],
        "a JSON list": "[1, 2, 3]",
        "unknown type": variant(type="wat"),
        "missing price": variant(price=None),
        "missing timestamp": variant(timestamp=None),
        "missing localTimestamp": variant(localTimestamp=None),
        "bad timestamp": variant(timestamp="yesterday"),
        "NaN": variant(price=float("nan")),
        "NaN as text": variant(price="NaN"),
        "Infinity": variant(amount=float("inf")),
        "overflowing number": variant(amount=1).replace('"amount":1', '"amount":1e400'),
        "huge number": variant(price=1e300),
        "huge integer": variant(amount=10 ** 30),
        "boolean price": variant(price=True),
        "bad side": variant(side="sideways"),
        "error object mid-stream": json.dumps({"message": "boom"}),
        # a well-formed trade that arrives after later ones (its localTimestamp is two minutes old)
        "out of order": json.dumps(dict(earlier, id="BAD-1"), separators=(",", ":")),
    }


def _sample(tardis):
    lines = tardis.expected_replay(OPTIONS)
    return lines[AFTER - 1], lines[AFTER - 120]


KINDS = sorted(bad_lines({"type": "trade", "price": 1.5, "amount": 2, "timestamp": "x", "localTimestamp": "y"},
                         {"localTimestamp": "z"}))


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_replay_line_is_counted_logged_not_stored_and_not_fatal(tardis, tmp_path, capfd, kind):
    neighbour, earlier = _sample(tardis)
    line = bad_lines(neighbour, earlier)[kind]
    tardis.add_replay_fault("malformed", after_lines=AFTER, line=line)
    db = tmp_path / "g.db"
    code = main(["download", "--exchange", "deribit", "--symbols", ",".join(SYMBOLS), "--data-types", "trade",
                 "--from", "2026-11-25T00:05", "--to", "2026-11-25T00:10", "--tardis-url", tardis.http_url,
                 "--database", "sqlite:///%s" % db, "--history-delay", "10s", "--no-progress"], now=tardis.clock.now)
    out, err = capfd.readouterr()  # (capfd: parsing runs in a download worker process)
    assert code == 0, err
    assert tardis.requests[0].fault == "malformed"
    assert tardis.requests[0].options[0]["from"] == OPTIONS["from"]
    from gapless.storage import Storage
    store = Storage("sqlite:///%s" % db, create=False)
    try:
        stored = stored_rows(store, "replay")
        coverage = store.covered("deribit", "BTC-PERPETUAL", "trade", "replay")
    finally:
        store.close()
    # not stored: the table holds exactly the good lines, each once, and coverage is whole
    converter = Converter("replay")
    expected = {converter.convert(m)[1] for m in tardis.expected_replay(OPTIONS) if m["type"] == "trade"}
    assert not [r for r in stored.get("trade", []) if r[7] == "BAD-1"], "the bad line was stored"
    assert set(stored["trade"]) == expected and len(stored["trade"]) == len(expected)
    assert coverage and coverage[0][0] <= 1795565100000000 and coverage[0][1] >= 1795565400000000  # 00:05-00:10
    # counted and logged
    assert "1 malformed line(s)" in out or "1 line(s) arrived out of localTimestamp order" in err, (out, err)
    assert "malformed" in err or "out of localTimestamp order" in err, err


def first_trade(tm):
    """Seconds since the epoch of the first trade frame the double sent (inf before any)."""
    for text in tm.connections[0].sent if tm.connections else ():
        message = orjson.loads(text)
        if message.get("type") == "trade":
            return parse_timestamp_us(message["localTimestamp"]) / 1e6
    return float("inf")


@pytest.mark.slow
def test_bad_live_frames_are_counted_logged_not_stored_and_not_fatal(clock, store, caplog):
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=30.0, trade_rate=20.0)) as tm:
        recorder = Recorder(store, tm.ws_url, "deribit", SYMBOLS, ["trade"], clock=lambda: tm.clock.now_us() / 1e6)
        with caplog.at_level(logging.WARNING, logger="gapless"), recorder:
            # the out-of-order frame must be older than the parser's latency margin: a smaller reordering
            # is legitimate (it is stored; see test_ingest)
            age = (LATENCY_MARGIN_US + US) / 1e6
            wait_until(lambda: recorder.health()["rows_stored"] > 100 and tm.clock.now_us() / 1e6 - first_trade(tm) > age,
                       timeout=30, message="recording for longer than the latency margin")
            sent = [orjson.loads(t) for t in tm.connections[0].sent]
            trades = [m for m in sent if m["type"] == "trade"]
            lines = bad_lines(trades[-1], trades[0])
            for line in lines.values():
                tm.inject_frame(line)
            wait_until(lambda: recorder.health()["malformed"] >= len(lines) - 1, timeout=10,
                       message="bad frames counted")
            rows = recorder.health()["rows_stored"]
            wait_until(lambda: recorder.health()["rows_stored"] > rows + 100, timeout=20, message="still recording")
            health = recorder.health()
        assert recorder.error is None and health["connections"] == 1
        logged = [r.getMessage() for r in caplog.records if "malformed frame" in r.getMessage()]
        assert len(logged) >= 5
        stored = stored_rows(store, "live")
        # every good frame stored once, in order: the bad ones did not disturb the rest
        assert_live_is_a_prefix_per_connection(store, tm.connections, exclude=lambda m: m.get("id") == "BAD-1")
        assert not [r for r in stored["trade"] if r[7] == "BAD-1"], ("a bad frame was stored", [
            r for r in stored["trade"] if r[7] == "BAD-1"])
        # counted: every bad frame, the out-of-order one included
        assert health["malformed"] == len(lines), health
