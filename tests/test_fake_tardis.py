"""Tests of the tardis-machine double against the real server's captured output.

Real sockets only (requests and websocket-client as clients). Clocks sit just after a
UTC midnight so replays "from 00:00 of the day" are short.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
import requests
import websocket

from tests.fake_tardis import FakeClock, FakeTardisMachine, ManualClock, MarketConfig, Outage
from tests.fake_tardis.market import symbol_params
from tests.fake_tardis.normalize import Normalizer
from tests.fake_tardis.options import parse_options
from tests.fake_tardis.render import js_number, parse_ts_us, render_message
from tests.support import fixture_bytes, fixture_names, wait_until

REPO = Path(__file__).resolve().parents[1]
UTC = timezone.utc
DAY = datetime(2026, 11, 25, tzinfo=UTC)
BOTH = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
SIX_TYPES = ["quote", "quote_1m", "book_snapshot_5_1m", "trade", "trade_bar_1m", "derivative_ticker"]
REPLAY_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
REPLAY_LOCAL = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


# -- helpers ---------------------------------------------------------------------------
def fixture_lines(name: str) -> list[str]:
    return fixture_bytes(name).decode().splitlines()


def machine(minutes: float = 25, **kw) -> FakeTardisMachine:
    """A machine whose clock reads DAY 00:00 + ``minutes``."""
    return FakeTardisMachine(clock=FakeClock(DAY + timedelta(minutes=minutes)), **kw)


def opts(frm="2026-11-25T00:00:00.000Z", to="2026-11-25T00:20:00.000Z", types=SIX_TYPES, symbols=BOTH, **kw):
    return {"exchange": "deribit", "symbols": symbols, "from": frm, "to": to, "dataTypes": types,
            "withDisconnectMessages": True, **kw}


def replay(tm, options, **kw) -> requests.Response:
    kw.setdefault("timeout", 10)
    return requests.get(f"{tm.http_url}/replay-normalized", params={"options": json.dumps(options)}, **kw)


def ws_connect(tm, options, timeout=5.0) -> websocket.WebSocket:
    url = f"{tm.ws_url}/ws-stream-normalized?options={quote(json.dumps(options))}"
    return websocket.create_connection(url, timeout=timeout, skip_utf8_validation=True)


def live_opts(types=("quote", "trade"), symbols=BOTH, **kw):
    return {"exchange": "deribit", "symbols": list(symbols), "dataTypes": list(types),
            "withDisconnectMessages": True, **kw}


def recv_until(ws, predicate, limit=5000) -> list[dict]:
    """Messages up to and including the first one matching ``predicate``."""
    out = []
    for _ in range(limit):
        msg = json.loads(ws.recv())
        out.append(msg)
        if predicate(msg):
            return out
    raise AssertionError("no matching message")


def key_orders(msgs) -> dict:
    return {(m["type"], "live" if "symbols" in m else ""): tuple(m) for m in msgs}


@pytest.fixture(scope="module")
def tm20():
    """One machine for the read-only replay checks, plus its 20-minute replay."""
    with machine(25) as tm:
        r = replay(tm, opts())
        assert r.status_code == 200
        tm.body20 = r.content
        yield tm


# -- rendering: byte-exact against every fixture line -------------------------------------
@pytest.mark.parametrize("name", fixture_names(".ndjson"))
def test_render_reproduces_fixture_lines(name):
    for line in fixture_lines(name):
        assert render_message(json.loads(line)) == line


def test_js_number_formatting():
    values = (83695.0, 83694.5, -0.00000104, 2.767e-05, -8.4e-07, 5e-08, 1e21, -0.0, 7, float("nan"))
    assert [js_number(x) for x in values] == [
        "83695", "83694.5", "-0.00000104", "0.00002767", "-8.4e-7", "5e-8", "1e+21", "0", "7", "null"]


# -- computables: the port reproduces the real server from the fixtures' raw events ----
class FixtureFeeder:
    """Feeds fixture messages to a Normalizer as if they were raw exchange events."""

    def __init__(self, types, symbols, live=False):
        spec = parse_options(opts("2026-11-23", "2026-11-26", types, symbols), replay=True, default_symbols=[])[0]
        self.norm = Normalizer(spec, symbol_params, live=live)
        self.books = {}

    @staticmethod
    def ticks(symbol, price):
        return round(price * 100 / symbol_params(symbol).tick_h)

    @staticmethod
    def times(m):
        return parse_ts_us(m["timestamp"]) // 1000, parse_ts_us(m["localTimestamp"])

    def book_change(self, m):
        sym = m["symbol"]
        bids, asks = self.books.setdefault(sym, ({}, {}))
        before = (sorted(bids.items(), reverse=True), sorted(asks.items()))
        if m["isSnapshot"]:
            bids.clear(), asks.clear()
        cb = [(self.ticks(sym, x["price"]), x["amount"]) for x in m["bids"]]
        ca = [(self.ticks(sym, x["price"]), x["amount"]) for x in m["asks"]]
        for side, changes in ((bids, cb), (asks, ca)):
            for p, a in changes:
                side.pop(p, None) if a == 0 else side.__setitem__(p, a)
        after = (sorted(bids.items(), reverse=True), sorted(asks.items()))
        low = min((next((i for i, (x, y) in enumerate(zip(b + [None] * 99, a + [None] * 99)) if x != y), 10 ** 6)
                   for b, a in zip(before, after)))
        (bb, ba), (ab, aa) = after[0][0], after[1][0]
        view = SimpleNamespace(symbol=sym, b_snap=[m["isSnapshot"]], b_best=[[bb, ba, ab, aa]], b_low=[low],
                               changes=lambda i: (cb, ca))
        self.norm.book(view, 0, *self.times(m))

    def trade(self, m):
        sym = m["symbol"]
        view = SimpleNamespace(symbol=sym, g_off=[0, 1], t_id=[int(m["id"].split("-")[-1])],
                               t_px=[self.ticks(sym, m["price"])], t_amt=[m["amount"]], t_buy=[m["side"] == "buy"])
        self.norm.trades(view, 0, *self.times(m))

    def ticker(self, m):
        v = (self.ticks(m["symbol"], m["lastPrice"]), m["openInterest"], round(m["fundingRate"] * 1e8),
             round(m["indexPrice"] * 100), round(m["markPrice"] * 100))
        self.norm.ticker(SimpleNamespace(symbol=m["symbol"], k=[v]), 0, *self.times(m))

    def lines(self):
        return [line for _, line in self.norm.out]


def test_book_snapshot_computable_matches_fixture():
    changes = [json.loads(x) for x in fixture_lines("replay_btc_book_change_2026-11-23T0000_0002.ndjson")]
    feeder = FixtureFeeder(["quote", "quote_1m", "book_snapshot_5_1m"], ["BTC-PERPETUAL"])
    for m in changes:
        feeder.book_change(m)
    last_local = changes[-1]["localTimestamp"]
    expected = [x for x in fixture_lines("replay_btc_eth_quote_trade_bars_2026-11-23T0000_0020.ndjson")
                if '"book_snapshot","symbol":"BTC-PERPETUAL"' in x and json.loads(x)["localTimestamp"] <= last_local]
    assert len(expected) > 300
    assert feeder.lines() == expected


def test_book_change_rendering_matches_fixture():
    lines = fixture_lines("replay_btc_book_change_2026-11-23T0000_0002.ndjson")
    feeder = FixtureFeeder(["book_change"], ["BTC-PERPETUAL"])
    for x in lines:
        feeder.book_change(json.loads(x))
    assert feeder.lines() == lines


def test_trade_bars_and_tickers_match_fixture():
    lines = fixture_lines("replay_btc_eth_quote_trade_bars_2026-11-23T0000_0020.ndjson")
    feeder = FixtureFeeder(["trade", "trade_bar_1m", "derivative_ticker"], BOTH)
    for x in lines:
        m = json.loads(x)
        if m["type"] == "trade":
            feeder.trade(m)
        elif m["type"] == "derivative_ticker":
            feeder.ticker(m)
    expected = [x for x in lines if re.search(r'"type":"(trade|trade_bar|derivative_ticker)"', x)]
    assert feeder.lines() == expected


@pytest.mark.parametrize("name,live", [("replay_btc_disconnect_2026-11-24T1330_1345.ndjson", False),
                                       ("live_btc_eth_with_exchange_drop.ndjson", True)])
def test_disconnect_discards_bar_in_progress_like_fixture(name, live):
    lines = fixture_lines(name)
    feeder = FixtureFeeder(["trade", "trade_bar_1m"], ["BTC-PERPETUAL", "ETH-PERPETUAL"][: 2 if live else 1],
                           live=live)
    for x in lines:
        m = json.loads(x)
        if m["type"] == "trade":
            feeder.trade(m)
        elif m["type"] == "disconnect":
            feeder.norm.disconnect(parse_ts_us(m["localTimestamp"]))
    assert feeder.lines() == [x for x in lines if re.search(r'"type":"(trade|trade_bar|disconnect)"', x)]


# -- replay over HTTP -------------------------------------------------------------------
def test_replay_20_minutes_structure(tm20):
    msgs = [json.loads(x) for x in tm20.body20.splitlines()]
    fixture = [json.loads(x) for x in fixture_lines("replay_btc_eth_quote_trade_bars_2026-11-23T0000_0020.ndjson")]
    assert key_orders(msgs) == key_orders(fixture)
    for sym in BOTH:
        bars = [m for m in msgs if m["type"] == "trade_bar" and m["symbol"] == sym]
        assert len(bars) == 19 and bars[-1]["timestamp"] == "2026-11-25T00:19:00.000Z"
        for name in ("quote", "quote_1m", "book_snapshot_5_1m"):
            snaps = [m for m in msgs if m.get("name") == name and m["symbol"] == sym]
            assert re.match(r"2026-11-25T00:00:00\.1\d\dZ", snaps[0]["timestamp"])  # unaligned first one
            if name != "quote":
                assert [s["timestamp"] for s in snaps[1:3]] == ["2026-11-25T00:01:00.000Z", "2026-11-25T00:02:00.000Z"]
        assert all(len(m["bids"]) == 5 for m in msgs if m.get("name") == "book_snapshot_5_1m")
    locals_ = [m["localTimestamp"] for m in msgs]
    assert locals_ == sorted(locals_)
    for prev, m in zip(msgs, msgs[1:]):  # a computed sample right after its trigger, same local time
        if m["type"] == "trade_bar":
            assert prev["type"] == "trade" and prev["localTimestamp"] == m["localTimestamp"]
    assert {m["type"] for m in msgs} == {"book_snapshot", "trade", "trade_bar", "derivative_ticker"}


def test_replay_formats_like_fixture(tm20):
    text = tm20.body20.decode()
    assert text.endswith("\n")
    for m in map(json.loads, text.splitlines()):
        assert REPLAY_TS.match(m["timestamp"]) and REPLAY_LOCAL.match(m["localTimestamp"])
        for k in ("openTimestamp", "closeTimestamp"):
            assert k not in m or REPLAY_TS.match(m[k])
    assert not re.search(r"\d\.0[,}\]]", text)  # 83695, never 83695.0
    assert not re.search(r"\de[-+]", text)


def test_replay_is_deterministic_and_matches_expected(tm20):
    assert [json.loads(x) for x in tm20.body20.splitlines()] == tm20.expected_replay(opts())
    with machine(25) as other:  # another machine, no shared response cache
        assert replay(other, opts()).content == tm20.body20
    again = replay(tm20, opts())  # served from the response cache
    assert again.content == tm20.body20 and tm20.requests[-1].cached


def test_replay_headers_and_32_line_chunks_keep_alive(tm20):
    o = quote(json.dumps(opts(to="2026-11-25T00:02:00Z", types=["trade"])))
    with socket.create_connection(("127.0.0.1", int(tm20.http_url.rsplit(":", 1)[1])), timeout=5) as s:
        f = s.makefile("rb")
        for _ in range(2):  # two requests on one keep-alive connection
            s.sendall(f"GET /replay-normalized?options={o} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert f.readline() == b"HTTP/1.1 200 OK\r\n"
            headers = {}
            while (h := f.readline()) != b"\r\n":
                k, v = h.decode().split(":", 1)
                headers[k.lower()] = v.strip()
            assert headers["content-type"] == "application/x-json-stream"
            assert headers["transfer-encoding"] == "chunked" and headers["connection"] == "keep-alive"
            sizes = []
            while (n := int(f.readline(), 16)) > 0:
                sizes.append(f.read(n).count(b"\n"))
                f.readline()
            f.readline()
            assert sizes[:-1] == [32] * (len(sizes) - 1) and 0 < sizes[-1] <= 32


def test_midday_start_has_trades_only(tm20):
    r = replay(tm20, opts("2026-11-24T13:35", "2026-11-24T13:40", ["quote", "trade"], ["BTC-PERPETUAL"]))
    types = {json.loads(x)["type"] for x in r.content.splitlines()}
    assert types == {"trade"}


def test_options_array_is_merged_by_local_timestamp(tm20):
    a = opts(to="2026-11-25T00:03", types=["trade"], symbols=["BTC-PERPETUAL"])
    b = opts(to="2026-11-25T00:03", types=["derivative_ticker"], symbols=["ETH-PERPETUAL"])
    msgs = [json.loads(x) for x in replay(tm20, [a, b]).content.splitlines()]
    assert {(m["type"], m["symbol"]) for m in msgs} == {("trade", "BTC-PERPETUAL"), ("derivative_ticker", "ETH-PERPETUAL")}
    assert [m["localTimestamp"] for m in msgs] == sorted(m["localTimestamp"] for m in msgs)
    assert len(msgs) == len(tm20.expected_replay(a)) + len(tm20.expected_replay(b))


def test_deep_snapshots_and_tick_volume_bars(tm20):
    types = ["book_snapshot_30_1s", "trade_bar_10ticks", "trade_bar_5000vol", "book_change"]
    msgs = [json.loads(x) for x in replay(tm20, opts(to="2026-11-25T00:02", types=types)).content.splitlines()]
    deep = [m for m in msgs if m.get("name") == "book_snapshot_30_1s"]
    assert deep and all(len(m["bids"]) == 30 and m["bids"][25:] == [{}] * 5 for m in deep)
    assert all(m["trades"] == 10 for m in msgs if m.get("name") == "trade_bar_10ticks")
    assert all(m["volume"] >= 5000 for m in msgs if m.get("name") == "trade_bar_5000vol")
    assert msgs[0]["type"] == "book_change" and msgs[0]["isSnapshot"] and len(msgs[0]["bids"]) == 25


def test_replay_outage_mirrors_disconnect_fixture():
    start = datetime(2026, 11, 24, 13, 37, 10, tzinfo=UTC)
    with machine(replay_outages=[Outage(start, start + timedelta(seconds=20))]) as tm:
        o = opts("2026-11-24T13:30", "2026-11-24T13:45", ["quote_1m", "trade_bar_1m", "trade"], ["BTC-PERPETUAL"])
        msgs = [json.loads(x) for x in replay(tm, o).content.splitlines()]
        fixture = [json.loads(x) for x in fixture_lines("replay_btc_disconnect_2026-11-24T1330_1345.ndjson")]
        assert key_orders(msgs) == key_orders(fixture)
        cut = [i for i, m in enumerate(msgs) if m["type"] == "disconnect"]
        assert len(cut) == 1 and msgs[cut[0]] == {"type": "disconnect", "exchange": "deribit",
                                                  "localTimestamp": msgs[cut[0] - 1]["localTimestamp"]}
        before, after = msgs[: cut[0]], msgs[cut[0] + 1:]
        assert not any(m.get("name") == "quote_1m" for m in before)  # mid-day start: no book yet
        assert after[0]["name"] == "quote_1m" and re.match(r".*T13:37:30\.1\d\dZ", after[0]["timestamp"])
        quotes = [m["timestamp"][11:] for m in after if m.get("name") == "quote_1m"]
        assert quotes[1:] == [f"13:{mm}:00.000Z" for mm in range(38, 45)]
        assert not any("13:37:10" <= m["timestamp"][11:19] < "13:37:30" for m in msgs if m["type"] == "trade")
        bars = [m for m in msgs if m["type"] == "trade_bar"]
        assert len(bars) == 14 and bars[7]["timestamp"].endswith("13:38:00.000Z")
        assert bars[7]["openTimestamp"] >= after[0]["timestamp"]  # the bar in progress was discarded
        o["withDisconnectMessages"] = False
        assert [m for m in msgs if m["type"] != "disconnect"] == tm.expected_replay(o)


def test_unknown_exchange_error_like_fixture(tm20):
    r = replay(tm20, dict(opts(), exchange="deribitx"))
    assert r.status_code == 500
    assert r.content == fixture_bytes("replay_error_unknown_exchange.json").strip()
    fixture_headers = dict(line.split(": ", 1) for line in
                           fixture_bytes("replay_error_unknown_exchange.headers").decode().splitlines()[1:] if line)
    for k in ("Content-Type", "Connection", "Keep-Alive", "Content-Length"):
        assert r.headers[k] == fixture_headers[k]


@pytest.mark.parametrize("options,needle", [
    ("{not json", "Invalid options"),
    (json.dumps(opts(types=["trade", "quote_7x"])), "quote_7x"),
    (json.dumps(opts(symbols=["btc perpetual"])), "btc perpetual"),  # upper-cased first: "btc-perpetual" is fine
    (json.dumps(opts(frm="2026-11-25T00:10", to="2026-11-25T00:10")), "'from'"),
    (json.dumps({"exchange": "deribit", "dataTypes": ["trade"]}), "'from'"),
])
def test_bad_options_are_500_with_message(tm20, options, needle):
    r = requests.get(f"{tm20.http_url}/replay-normalized", params={"options": options}, timeout=5)
    assert r.status_code == 500 and needle in r.json()["message"]


def test_health_check_and_404(tm20):
    h = requests.get(f"{tm20.http_url}/health-check", timeout=5)
    assert h.status_code == 200 and h.json()["status"] == "Healthy" and "memoryInfo" in h.json()
    assert requests.get(f"{tm20.http_url}/nope", timeout=5).status_code == 404


def test_availability_delay():
    with machine(5, availability_delay=timedelta(seconds=30)) as tm:
        now = tm.clock.now_us()
        r = replay(tm, opts(to="2026-11-25T00:06", types=["trade"]))
        body = r.content.decode()
        head, _, last = body.rpartition("\n")
        assert r.status_code == 200 and not body.endswith("\n")
        err = json.loads(last)
        assert "message" in err and "type" not in err and tm.requests[-1].error_line
        lines = [json.loads(x) for x in head.splitlines()]
        assert lines and all(parse_ts_us(m["localTimestamp"]) < now - 30_000_000 + 100_000 for m in lines)
        only = replay(tm, opts(frm="2026-11-25T00:05", to="2026-11-25T00:06", types=["trade"])).content.decode()
        assert "\n" not in only and "message" in json.loads(only)
        past = replay(tm, opts(to="2026-11-25T00:04", types=["trade"])).content.decode()
        assert past.endswith("\n") and all("type" in json.loads(x) for x in past.splitlines())


@pytest.mark.parametrize("mode", ["error", "empty"])
def test_availability_modes(mode):
    with machine(5, availability_delay=timedelta(seconds=30), availability_mode=mode) as tm:
        now = tm.clock.now_us()
        r = replay(tm, opts(to="2026-11-25T00:06", types=["trade"]))
        body, rec = r.content.decode(), tm.requests[-1]
        assert r.status_code == 200 and rec.completed and rec.cut_by_availability
        limit = now - 30_000_000
        if mode == "empty":  # upstream slices are whole minutes: one not complete yet comes back empty
            limit -= limit % 60_000_000
        assert limit <= parse_ts_us(rec.available_until.isoformat()) < limit + 1_000_000
        if mode == "error":
            head, _, last = body.rpartition("\n")
            assert rec.error_line and "message" in json.loads(last)
        else:  # ends like a quiet market: every line is data, the stream just ends
            head = body
            assert body.endswith("\n") and not rec.error_line
        lines = [json.loads(x) for x in head.splitlines()]
        assert lines and all(m["type"] == "trade" for m in lines)
        assert all(parse_ts_us(m["localTimestamp"]) < parse_ts_us(rec.available_until.isoformat()) for m in lines)
        only = replay(tm, opts(frm="2026-11-25T00:05", to="2026-11-25T00:06", types=["trade"])).content.decode()
        assert (only == "") if mode == "empty" else ("\n" not in only and "message" in json.loads(only))
        past = replay(tm, opts(to="2026-11-25T00:04", types=["trade"]))
        assert not tm.requests[-1].cut_by_availability and past.content.endswith(b"\n")


def test_availability_changes_at_runtime_and_cut_bodies_are_never_cached():
    clock = ManualClock(DAY + timedelta(minutes=10))
    with FakeTardisMachine(clock=clock, availability_delay=timedelta(minutes=8)) as tm:
        o = opts(to="2026-11-25T00:04", types=["trade"])

        def ask():
            body = replay(tm, o).content
            return body, tm.requests[-1]

        cut, rec = ask()
        assert rec.cut_by_availability and rec.error_line and not cut.endswith(b"\n")
        assert rec.available_until == DAY + timedelta(minutes=2)
        tm.availability_mode = "empty"
        empty, rec = ask()
        assert empty == cut.rpartition(b"\n")[0] + b"\n" and not rec.error_line and not rec.cached
        with pytest.raises(ValueError):
            tm.availability_mode = "sometimes"
        # the minutes asked too early in "empty" mode stay empty in this filter set (the slice cache)
        assert tm.slices.poisoned("deribit", ["trades"], o["symbols"]) == [
            int((DAY + timedelta(minutes=m)).timestamp()) * 1_000_000 for m in (2, 3)]
        tm.availability_delay = timedelta(0)
        moved, rec = ask()
        assert not rec.cut_by_availability and not rec.cached and moved.endswith(b"\n")
        assert [json.loads(x) for x in moved.splitlines()] == tm.expected_replay(o)
        full = "\n".join(json.dumps(m, separators=(",", ":")) for m in tm.expected_replay(
            dict(o, symbols=o["symbols"] + ["GAPLESS-X"]))).encode() + b"\n"
        assert len(moved) < len(full)
        assert ask() == (moved, tm.requests[-1]) and tm.requests[-1].cached
        # a larger delay makes the server fall behind from now on; it never takes history back
        tm.availability_delay = timedelta(minutes=8)
        again, rec = ask()
        assert again == moved and not rec.cut_by_availability and rec.cached
        tm.clear_slice_cache()
        cleared, rec = ask()
        assert [json.loads(x) for x in cleared.splitlines()] == tm.expected_replay(o) and not rec.cached
        assert len(cleared) > len(moved) and not rec.cut_by_availability
        # the clock at request time is "now": a newer range becomes available as the clock moves
        later = opts(frm="2026-11-25T00:11", to="2026-11-25T00:13", types=["trade"])
        assert tm.expected_replay(later) == []
        clock.advance(11 * 60)  # 8 minutes behind: history reaches 00:13 at 00:21
        assert tm.expected_replay(later)


def _timed_replay(tm, options):
    t = time.monotonic()
    body = replay(tm, options).content
    return time.monotonic() - t, body


def test_line_rate_paces_every_response():
    with machine(25) as tm:
        o = opts(to="2026-11-25T00:05", types=["trade", "quote"], symbols=["BTC-PERPETUAL"])
        n = len(tm.expected_replay(o))
        expect = 0.5
        tm.line_rate = n / expect  # lines per second: one request takes about half a second
        took, body = _timed_replay(tm, o)
        assert not tm.requests[-1].cached and tm.requests[-1].line_rate == tm.line_rate
        assert 0.8 * expect <= took <= expect + 0.5 and len(body.splitlines()) == n
        assert tm.wait_for(lambda: tm.requests_in_flight == 0)  # the body is cached once the request ends
        took, cached = _timed_replay(tm, o)  # served from the response cache: paced too
        assert tm.requests[-1].cached and cached == body and 0.8 * expect <= took <= expect + 0.5
        tm.max_concurrent_requests = 0
        barrier, times = threading.Barrier(2), []

        def one(options):
            barrier.wait()
            times.append(_timed_replay(tm, options)[0])

        # two at once (one cached, one generated): each keeps its own pace
        eth = dict(o, symbols=["ETH-PERPETUAL"])
        each = sorted((n / tm.line_rate, len(tm.expected_replay(eth)) / tm.line_rate))
        threads = [threading.Thread(target=one, args=(x,)) for x in (o, eth)]
        t = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join(10)
        total = time.monotonic() - t
        # one after the other would take the sum of both (about 1 s)
        assert len(times) == 2 and min(times) >= 0.8 * each[0] and total < each[1] + 0.25 < sum(each)
        assert tm.wait_for(lambda: tm.requests_in_flight == 0) and tm.max_concurrent_requests == 2
        tm.line_rate = None
        took, _ = _timed_replay(tm, o)
        assert took < 0.8 * expect and tm.requests[-1].line_rate is None
        with pytest.raises(ValueError):
            tm.line_rate = 0


# -- replay faults ------------------------------------------------------------------------
@pytest.fixture
def tm():
    with machine(25) as m:
        yield m


SMALL = opts(to="2026-11-25T00:03", types=["trade", "quote"])


def test_fault_cut(tm):
    tm.add_replay_fault("cut", after_lines=100)
    r = replay(tm, SMALL, stream=True)
    got = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for line in r.iter_lines():
            got.append(line)
    assert len(got) == 100 and tm.requests[-1].fault == "cut" and not tm.requests[-1].completed
    tm.add_replay_fault("cut", after_lines=40, reset=True)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        replay(tm, SMALL).content
    assert replay(tm, SMALL).status_code == 200  # faults are one-shot


def test_fault_error_line_and_malformed(tm):
    full = replay(tm, SMALL).content.splitlines()
    tm.add_replay_fault("error_line", after_lines=50)
    body = replay(tm, SMALL).content.decode()
    *lines, last = body.split("\n")
    assert len(lines) == 50 and "message" in json.loads(last) and not body.endswith("\n")
    tm.add_replay_fault("malformed", after_lines=10, line=b"not json")
    got = replay(tm, SMALL).content.splitlines()
    assert got[10] == b"not json" and got[:10] + got[11:] == full


def test_fault_status_with_retry_after(tm):
    tm.add_replay_fault("status", status=429, body={"message": "Too Many Requests"}, headers={"Retry-After": "1"})
    r = replay(tm, SMALL)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1" and r.json() == {"message": "Too Many Requests"}
    tm.add_replay_fault("status", status=503)
    assert replay(tm, SMALL).status_code == 503


def test_fault_slow_and_match(tm):
    o = opts(to="2026-11-25T00:01", types=["trade"], symbols=["ETH-PERPETUAL"])
    tm.add_replay_fault("slow", delay_s=0.05, match=lambda options: options[0]["symbols"] == ["BTC-PERPETUAL"])
    t = time.monotonic()
    eth = replay(tm, o)
    assert time.monotonic() - t < 0.3 and tm.requests[-1].fault is None  # did not match
    n = len(eth.content.splitlines())
    t = time.monotonic()
    replay(tm, dict(o, symbols=["BTC-PERPETUAL"]))
    chunks = -(-tm.requests[-1].lines_sent // 32)
    assert tm.requests[-1].fault == "slow" and time.monotonic() - t >= 0.05 * chunks * 0.9 and n


def test_fault_hang_triggers_read_timeout(tm):
    tm.add_replay_fault("hang", seconds=5, after_lines=0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        replay(tm, SMALL, timeout=(1, 0.3))
    tm.add_replay_fault("hang", seconds=5, after_lines=40)
    r = replay(tm, SMALL, stream=True, timeout=(1, 0.3))
    got = []
    with pytest.raises(requests.exceptions.ConnectionError):  # requests wraps the read timeout
        for line in r.iter_lines():
            got.append(line)
    assert len(got) == 40


def test_requests_are_recorded(tm):
    replay(tm, SMALL)
    rec = tm.requests[-1]
    assert rec.options == [SMALL] and rec.status == 200 and rec.completed and rec.fault is None
    assert (rec.from_, rec.to) == (DAY, DAY + timedelta(minutes=3)) and rec.lines_sent > 0 and rec.bytes_sent > 0


def test_replay_perturb(tm):
    o = opts(to="2026-11-25T00:03", types=["trade"], symbols=["BTC-PERPETUAL"])
    base = tm.expected_replay(o)
    tm.perturb("replay", "BTC-PERPETUAL", DAY + timedelta(minutes=1), factor=1.001)
    got = [json.loads(x) for x in replay(tm, o).content.splitlines()]
    assert len(got) == len(base)
    for a, b in zip(base, got):
        same_minute = a["timestamp"].startswith("2026-11-25T00:01")
        assert b["price"] == (pytest.approx(a["price"] * 1.001) if same_minute else a["price"])
        assert (a["id"], a["amount"], a["timestamp"]) == (b["id"], b["amount"], b["timestamp"])


def test_http_stop_and_restart_on_same_port(tm):
    url = tm.http_url
    tm.stop_http()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{url}/health-check", timeout=2)
    tm.start_http()
    assert tm.http_url == url and requests.get(f"{url}/health-check", timeout=2).status_code == 200


# -- market shapes: clock skew, quiet periods ----------------------------------------------
def _ms(dt: datetime) -> int:
    return parse_ts_us(dt.isoformat()) // 1000


def _lag_us(m: dict) -> int:
    """localTimestamp - timestamp of a message, in µs."""
    return parse_ts_us(m["localTimestamp"]) - parse_ts_us(m["timestamp"])


@pytest.mark.parametrize("skew", [-2000, 2000])
def test_skew_moves_local_times_and_the_replay_cut(skew):
    rates = dict(book_rate=0.5, trade_rate=3)
    with machine(10, market=MarketConfig(skew_ms=skew, **rates)) as tm:
        types = ["trade", "book_change", "derivative_ticker", "quote_1m"]
        msgs = [json.loads(x) for x in replay(tm, opts(to="2026-11-25T00:03", types=types)).content.splitlines()]
        assert [m["localTimestamp"] for m in msgs] == sorted(m["localTimestamp"] for m in msgs)
        raw = [m for m in msgs if m["type"] != "book_snapshot"]
        assert raw and all(skew * 1000 <= _lag_us(m) <= skew * 1000 + 5000 for m in raw)
        snaps = [m for m in msgs if m["type"] == "book_change" and m["isSnapshot"]]
        assert len(snaps) == 2  # the day's snapshot still arrives just after local 00:00 (+ a positive skew)
        first_ms = _ms(DAY) + 160 + max(0, skew)
        assert all(parse_ts_us(m["localTimestamp"]) // 1000 < first_ms for m in snaps)
        assert {m["name"] for m in msgs if m["type"] == "book_snapshot"} == {"quote_1m"}
        # same exchange-side trades as without skew (a negative skew opens the day's book later,
        # so prices may differ after it)
        plain = MarketConfig(**rates)
        with machine(10, market=plain) as ref:
            ref_trades = [m for m in ref.expected_replay(opts(frm="2026-11-25T00:01", to="2026-11-25T00:02",
                                                                  types=["trade"]))]
        # from/to select by LOCAL time: the replay of 00:01 holds the trades that ARRIVED then
        got = [json.loads(x) for x in replay(tm, opts(frm="2026-11-25T00:01", to="2026-11-25T00:02",
                                                      types=["trade"])).content.splitlines()]
        lo, hi = _ms(DAY + timedelta(minutes=1)) - skew, _ms(DAY + timedelta(minutes=2)) - skew
        assert all(lo - 5 <= parse_ts_us(m["timestamp"]) // 1000 < hi for m in got)
        truth = tm.market.trades("deribit", "BTC-PERPETUAL", DAY + timedelta(minutes=1, milliseconds=-skew),
                                 DAY + timedelta(minutes=2, milliseconds=-skew - 5))
        assert truth and {t["id"] for t in truth} <= {m["id"] for m in got}
        key = (lambda m: (m["id"], m["amount"], m["side"], m["timestamp"])) if skew < 0 else (
            lambda m: {k: v for k, v in m.items() if k != "localTimestamp"})
        shared = {m["id"] for m in got} & {m["id"] for m in ref_trades}
        assert len(shared) > 20
        assert sorted(map(str, (key(m) for m in got if m["id"] in shared))) == sorted(
            map(str, (key(m) for m in ref_trades if m["id"] in shared)))
        if skew < 0:  # the example of the docs: stamped 00:00:01, arrived 23:59:59.x, not in a replay from 00:00
            early = tm.market.trades("deribit", "BTC-PERPETUAL", DAY, DAY + timedelta(seconds=1.99))
            from_midnight = {m.get("id") for m in msgs}
            assert early and not any(t["id"] in from_midnight for t in early)


@pytest.mark.parametrize("skew", [-2000, 2000])
def test_skew_live(skew):
    clock = ManualClock(DAY + timedelta(minutes=3))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=20, trade_rate=5, skew_ms=skew)) as tm:
        ws = ws_connect(tm, live_opts(("quote", "trade"), ["BTC-PERPETUAL"]))
        assert tm.wait_for(lambda: tm.connections)
        for _ in range(10):
            clock.advance(0.2)
        first = json.loads(ws.recv())
        # the subscription snapshot carries the exchange's time at t_c
        assert first["type"] == "book_snapshot" and parse_ts_us(first["timestamp"]) // 1000 == _ms(
            DAY + timedelta(minutes=3)) - skew
        msgs = [json.loads(ws.recv()) for _ in range(20)]
        assert all(REPLAY_TS.match(m["localTimestamp"]) for m in msgs)
        assert all(skew * 1000 <= _lag_us(m) <= skew * 1000 + 5000 for m in msgs)
        assert all(parse_ts_us(m["localTimestamp"]) <= clock.now_us() for m in msgs)


def test_quiet_periods_and_a_silent_symbol():
    q0, q1 = _ms(DAY + timedelta(minutes=2)), _ms(DAY + timedelta(minutes=4))
    cfg = MarketConfig(quiet=[("BTC-PERPETUAL", q0, q1), ("SILENT-PERP", 0, 2 ** 62)])
    assert cfg.quiet == (("BTC-PERPETUAL", q0, q1), ("SILENT-PERP", 0, 2 ** 62))  # normalized: hashable
    assert cfg != MarketConfig() and hash(cfg) != hash(MarketConfig()) and cfg == MarketConfig(quiet=cfg.quiet)
    with pytest.raises(ValueError):
        MarketConfig(quiet=(("X", 5, 5),))
    types = ["trade", "book_change", "derivative_ticker", "quote", "trade_bar_1m"]
    symbols = BOTH + ["SILENT-PERP"]
    with machine(10, market=cfg) as tm:
        msgs = [json.loads(x) for x in replay(tm, opts(to="2026-11-25T00:06", types=types,
                                                       symbols=symbols)).content.splitlines()]
        btc = [m for m in msgs if m["symbol"] == "BTC-PERPETUAL"]
        in_window = [m for m in btc if q0 <= parse_ts_us(m["timestamp"]) // 1000 < q1 and m["type"] != "trade_bar"]
        assert not in_window and any(parse_ts_us(m["timestamp"]) // 1000 >= q1 for m in btc)
        bars = {m["timestamp"][11:16] for m in btc if m["type"] == "trade_bar"}
        assert "00:02" in bars and not {"00:03", "00:04"} & bars  # the quiet minutes have no bar
        # the book stays as it was through the window
        assert tm.market.book("deribit", "BTC-PERPETUAL", DAY + timedelta(minutes=2, milliseconds=-1)) == \
            tm.market.book("deribit", "BTC-PERPETUAL", DAY + timedelta(minutes=4, milliseconds=-1))
        silent = [m for m in msgs if m["symbol"] == "SILENT-PERP"]
        assert [(m["type"], m.get("isSnapshot")) for m in silent] == [("book_change", True), ("book_snapshot", None)]
        assert len(silent[0]["bids"]) == 25 and re.match(r"2026-11-25T00:00:00\.1\d\dZ", silent[0]["timestamp"])
        assert not tm.market.trades("deribit", "SILENT-PERP", DAY, DAY + timedelta(minutes=10))
        # draws do not depend on the windows: before the window and on other symbols nothing changed
        with machine(10) as plain:
            ref = plain.expected_replay(opts(to="2026-11-25T00:06", types=types))
        before = lambda ms: [m for m in ms if m["symbol"] != "SILENT-PERP" and (
            m["symbol"] == "ETH-PERPETUAL" or parse_ts_us(m["localTimestamp"]) // 1000 < q0)]
        assert before(msgs) == before(ref)


# -- live stream --------------------------------------------------------------------------
def test_live_matches_replay():
    with machine(2, market=MarketConfig(book_rate=20, trade_rate=20)) as tm:
        ws = ws_connect(tm, live_opts(("quote", "trade")))
        t_c = parse_ts_us(tm.connections[0].opened_at.isoformat()) // 1000
        first = [json.loads(ws.recv()) for _ in range(2)]
        assert {m["symbol"] for m in first} == set(BOTH)
        for m in first:  # the subscription time, to the millisecond
            assert m["name"] == "quote" and parse_ts_us(m["timestamp"]) // 1000 == t_c
        deadline = time.monotonic() + 1.5
        live = recv_until(ws, lambda m: time.monotonic() > deadline, limit=100_000)
        ws.close()
        frames = [json.loads(x) for x in tm.connections[0].sent]
        assert frames[:2] == first and frames[2:len(live) + 2] == live
        for m in frames:
            assert REPLAY_TS.match(m["timestamp"]) and REPLAY_TS.match(m["localTimestamp"])
        truth = {(m["type"], m["symbol"], m["timestamp"], m.get("id")): m
                 for m in tm.expected_replay(opts("2026-11-25T00:00", "2026-11-25T00:05", ["quote", "trade"]),
                                             ignore_availability=True)}
        trades = [m for m in live if m["type"] == "trade"]
        quotes = [m for m in live if m["type"] == "book_snapshot"]
        assert len(trades) > 20 and len(quotes) > 20
        for m in trades + quotes:
            r = truth[(m["type"], m["symbol"], m["timestamp"], m.get("id"))]
            assert {k: v for k, v in m.items() if k != "localTimestamp"} == {
                k: v for k, v in r.items() if k != "localTimestamp"}
            assert abs(parse_ts_us(m["localTimestamp"]) - parse_ts_us(r["localTimestamp"])) <= 5000


def test_manual_clock_moves_only_when_told():
    clock = ManualClock(DAY)
    assert clock.now() == DAY and clock.wall_seconds_until(clock.now_us()) == 0
    assert clock.wall_seconds_until(clock.now_us() + 1) == float("inf")
    clock.advance(1.5)
    assert clock.now() == DAY + timedelta(seconds=1.5)
    clock.set(DAY + timedelta(seconds=2))
    clock.set(clock.now_us() + 500_000)
    assert clock.now() == DAY + timedelta(seconds=2.5)
    for backwards in (lambda: clock.set(DAY), lambda: clock.advance(-1)):
        with pytest.raises(ValueError):
            backwards()
    target = clock.now_us() + 5_000_000
    done, results = threading.Event(), []
    waiter = threading.Thread(target=lambda: (results.append(clock.wait_until(target)), done.set()))
    waiter.start()
    clock.advance(1)
    assert not done.wait(0.1)  # not there yet
    clock.advance(4)
    assert done.wait(2) and results == [True]
    stop = threading.Event()
    waiter = threading.Thread(target=lambda: results.append(clock.wait_until(target + 1, stop)))
    waiter.start()
    stop.set()
    waiter.join(2)
    assert results == [True, False]


def test_manual_clock_wakes_live_sessions_at_once():
    clock = ManualClock(DAY + timedelta(minutes=2))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=20)) as tm:
        ws = ws_connect(tm, live_opts(("quote",)))
        ws.settimeout(0.3)
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv()  # time stands still: even the first snapshot (due at t_c + latency) waits
        ws.settimeout(5)
        for _ in range(3):
            before = clock.now_us()
            t = time.monotonic()
            clock.advance(0.5)
            while True:  # skip what the previous step sent, up to the first event of this one
                m = json.loads(ws.recv())
                local = parse_ts_us(m["localTimestamp"])
                assert local <= clock.now_us()
                if local > before:
                    break
            # without the clock's wake-up the session would notice within its 1 s poll only
            assert time.monotonic() - t < 0.25
        assert all(parse_ts_us(json.loads(x)["localTimestamp"]) <= clock.now_us() for x in tm.connections[0].sent)


def test_live_perturb_differs_from_replay():
    with machine(2, market=MarketConfig(trade_rate=30)) as tm:
        tm.perturb("live", "BTC-PERPETUAL", DAY + timedelta(minutes=2), factor=1.001)
        ws = ws_connect(tm, live_opts(("trade",), ["BTC-PERPETUAL"]))
        live = [m for m in recv_until(ws, lambda m: m["type"] == "trade" and m["timestamp"] >= "2026-11-25T00:02:00.3")
                if m["type"] == "trade"]
        ws.close()
        truth = {m["id"]: m for m in tm.expected_replay(opts("2026-11-25T00:02", "2026-11-25T00:03", ["trade"],
                                                             ["BTC-PERPETUAL"]), ignore_availability=True)}
        assert live and all(m["price"] == pytest.approx(truth[m["id"]]["price"] * 1.001) for m in live)


def test_live_drop_close_and_reset():
    with machine(2, market=MarketConfig(book_rate=20)) as tm:
        ws = ws_connect(tm, live_opts())
        ws.recv()
        assert tm.drop_clients("close") == 1
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while True:
                assert ws.recv() is not None
        assert tm.connections[0].close_kind == "server_close"
        ws = ws_connect(tm, live_opts())
        ws.recv()
        assert tm.drop_clients("reset") == 1
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            while True:
                ws.recv()
        assert tm.connections[1].close_kind == "reset"


def test_live_refuse_and_restart():
    with machine(2) as tm:
        tm.refuse_connections(2)
        for _ in range(2):
            with pytest.raises((ConnectionError, websocket.WebSocketException)):
                ws_connect(tm, live_opts())
        ws = ws_connect(tm, live_opts())
        assert json.loads(ws.recv())["type"] == "book_snapshot"
        url = tm.ws_url
        tm.stop_ws()
        with pytest.raises(ConnectionRefusedError):
            ws_connect(tm, live_opts())
        tm.start_ws()
        assert tm.ws_url == url
        assert json.loads(ws_connect(tm, live_opts()).recv())["type"] == "book_snapshot"
        assert tm.wait_for(lambda: tm.connections[0].close_kind is not None)
        assert tm.connections[0].close_kind == "stopped"


def test_live_stall():
    # 40 book changes/s on two symbols: a natural 0.5 s silence is practically impossible
    with machine(2, market=MarketConfig(book_rate=20)) as tm:
        ws = ws_connect(tm, live_opts(("quote",)))
        ws.recv()
        tm.stall_clients(0.8)
        ws.settimeout(0.5)
        with pytest.raises(websocket.WebSocketTimeoutException):
            while True:  # what was already in flight, then nothing
                ws.recv()
        ws.settimeout(3)
        assert json.loads(ws.recv())["type"] == "book_snapshot"  # resumes after the stall


def test_live_exchange_drop_like_fixture():
    with machine(2, market=MarketConfig(book_rate=20)) as tm:
        ws = ws_connect(tm, live_opts(("quote", "quote_1m", "trade")))
        ws.recv()
        tm.exchange_drop(0.03)
        before = recv_until(ws, lambda m: m["type"] == "disconnect")
        disc = before[-1]
        assert disc["symbols"] == BOTH and list(disc) == ["type", "exchange", "localTimestamp", "symbols"]
        assert len(before) < 2 or disc["localTimestamp"] == before[-2]["localTimestamp"]
        after = [json.loads(ws.recv()) for _ in range(4)]
        assert {(m["symbol"], m["name"]) for m in after} == {(s, n) for s in BOTH for n in ("quote", "quote_1m")}
        assert len({m["timestamp"] for m in after}) == 1 and after[0]["timestamp"] > disc["localTimestamp"]
        fixture = [json.loads(x) for x in fixture_lines("live_btc_eth_with_exchange_drop.ndjson")]
        assert key_orders([disc]) == key_orders([m for m in fixture if m["type"] == "disconnect"])


def test_live_outage_error_and_inject():
    with machine(2, market=MarketConfig(book_rate=20)) as tm:
        now = tm.clock.now()
        tm.live_outages.append(Outage(now + timedelta(seconds=0.3), now + timedelta(seconds=0.8)))
        ws = ws_connect(tm, live_opts(("quote",), withErrorMessages=True))
        msgs = recv_until(ws, lambda m: m["type"] == "disconnect")
        errors = recv_until(ws, lambda m: m["type"] == "book_snapshot")
        assert errors[0]["type"] == "error" and list(errors[0]) == [
            "type", "exchange", "localTimestamp", "details", "subSequentErrorsCount"]
        assert errors[-1]["timestamp"] >= (now + timedelta(seconds=0.8)).isoformat()[11:23]
        assert msgs[-1]["symbols"] == BOTH
        tm.send_error_message()
        tm.inject_frame("not json {")
        texts = []
        while "not json {" not in texts:
            texts.append(ws.recv())
        assert any('"type":"error"' in t for t in texts)
        assert tm.wait_for(lambda: "not json {" in tm.connections[0].sent)


def test_live_bad_options_send_error_then_close():
    with machine(2) as tm:
        ws = ws_connect(tm, dict(live_opts(), exchange="deribitx", withErrorMessages=True))
        err = json.loads(ws.recv())
        assert err["type"] == "error" and "deribitx not supported" in err["details"]
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while True:
                assert ws.recv() is not None
        assert tm.connections[0].close_kind == "options_error"


def test_ping_timeout_drops_silent_client():
    with machine(2, ping_interval_s=0.2) as tm:
        ws = ws_connect(tm, live_opts(("quote",)))  # websocket-client answers pings while it reads
        t = time.monotonic()
        while time.monotonic() - t < 0.7:
            ws.recv()
        assert tm.connections[0].close_kind is None  # survived 3 ping windows while reading
        ws.close()
        host, port = tm.ws_url[5:].split(":")
        s = socket.create_connection((host, int(port)))  # a client that never answers
        s.sendall(b"GET /ws-stream-normalized?options=%7B%22exchange%22%3A%22deribit%22%2C%22dataTypes%22%3A"
                  b"%5B%22trade%22%5D%7D HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert tm.wait_for(lambda: len(tm.connections) == 2 and tm.connections[1].close_kind == "ping_timeout", 3)
        s.close()


def test_firehose():
    with machine(2) as tm:
        tm.firehose(seconds=0.5)
        ws = ws_connect(tm, live_opts(("quote",), ["BTC-PERPETUAL"]))
        ws.settimeout(1.0)
        frames = []
        t = time.monotonic()
        with pytest.raises(websocket.WebSocketTimeoutException):
            while True:
                frames.append(ws.recv())
        rate = len(frames) / (time.monotonic() - t - 1.0)
        rec = tm.connections[0]
        assert rec.firehose and rec.sent_count == len(frames) > 10_000 and rate > 10_000
        stamps = [json.loads(f)["timestamp"] for f in frames[:2000:7]] + [json.loads(frames[-1])["timestamp"]]
        assert stamps == sorted(set(stamps))
        assert list(json.loads(frames[0])) == list(json.loads(fixture_lines(
            "live_btc_eth_with_exchange_drop.ndjson")[0]))


# -- process and lifecycle ---------------------------------------------------------------
def test_shutdown_is_fast_with_open_connections():
    others = set(threading.enumerate())  # e.g. the module's tm20 machine
    tm = machine(2).start()
    ws = ws_connect(tm, live_opts())
    ws.recv()
    session = requests.Session()
    session.get(f"{tm.http_url}/health-check", timeout=5)  # an idle keep-alive connection
    tm.add_replay_fault("hang", seconds=30, after_lines=0)

    def hanging_request():
        try:
            replay(tm, SMALL, timeout=10)
        except requests.RequestException:
            pass  # the shutdown cuts it

    threading.Thread(target=hanging_request, daemon=True).start()
    assert tm.wait_for(lambda: len(tm.requests) == 1)
    names = [t.name for t in set(threading.enumerate()) - others]
    for prefix in ("fake-tardis-http-accept", "fake-tardis-ws-accept", "fake-tardis-http-", "fake-tardis-ws-1"):
        assert any(n.startswith(prefix) for n in names)
    t = time.monotonic()
    tm.stop()
    assert time.monotonic() - t < 2.0
    assert not [t for t in set(threading.enumerate()) - others if t.name.startswith("fake-tardis-")]
    ws.close()


def test_standalone_process():
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_tardis", "--http-port", "0", "--ws-port", "0",
                             "--clock-offset", "-3600", "--seed", "3"], stdout=subprocess.PIPE, cwd=REPO)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["pid"] == proc.pid
        assert requests.get(f"{info['http_url']}/health-check", timeout=5).json()["status"] == "Healthy"
        ws = websocket.create_connection(f"{info['ws_url']}/ws-stream-normalized?options="
                                         + quote(json.dumps(live_opts())), timeout=5)
        assert json.loads(ws.recv())["type"] == "book_snapshot"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        proc.kill()
        proc.wait()


def test_exchange_without_trade_ids_live_and_replay():
    """kraken's trades carry no ``id`` (replay and live), identical trades occur in one packet and across
    packets, and with ``live_arrival_spread_ms`` two live connections stamp the same trade differently."""
    clock = ManualClock(DAY + timedelta(minutes=2))
    config = MarketConfig(trade_rate=5, live_arrival_spread_ms=1)
    with FakeTardisMachine(clock=clock, market=config) as tm:
        sockets = [ws_connect(tm, {**live_opts(("trade",), ["BTC-PERPETUAL"]), "exchange": "kraken"})
                   for _ in range(2)]
        wait_until(tm.live_caught_up, interval=0.005, message="the double sent what is due")
        for _ in range(4):
            clock.advance(30)
            wait_until(tm.live_caught_up, interval=0.005, message="the double sent what is due")
        frames = [[json.loads(x) for x in c.sent] for c in tm.connections[:2]]
        for ws in sockets:
            ws.close()
        clock.advance(3600)  # history of those minutes is available now
        body = replay(tm, {**opts("2026-11-25T00:02", "2026-11-25T00:05", ["trade"], ["BTC-PERPETUAL"]),
                           "exchange": "kraken"})
    assert body.status_code == 200
    replayed = [json.loads(line) for line in body.text.splitlines()]
    deribit = tm.market.trades("deribit", "BTC-PERPETUAL", DAY, DAY + timedelta(minutes=5))
    assert all(t["id"] for t in deribit)  # exchanges with ids are unchanged
    for messages in frames + [replayed]:
        trades = [m for m in messages if m["type"] == "trade"]
        assert len(trades) > 300 and not any("id" in m for m in trades)
    content = lambda m: (m["timestamp"], m["price"], m["amount"], m["side"])  # noqa: E731
    live_a, live_b = ([m for m in f if m["type"] == "trade"] for f in frames)
    # the same trades, each stamped 1 ms apart by the two connections (their own exchange connections)
    common = min(len(live_a), len(live_b))
    assert [content(m) for m in live_a[-common:]] == [content(m) for m in live_b[-common:]]
    gaps = {parse_ts_us(a["localTimestamp"]) - parse_ts_us(b["localTimestamp"])
            for a, b in zip(live_a[-common:], live_b[-common:])}
    assert gaps == {1000} or gaps == {-1000}
    # identical trades: within one packet (same localTimestamp), and across two packets
    packets = {}
    for m in replayed:
        packets.setdefault(content(m), []).append(m["localTimestamp"])
    repeated = [stamps for stamps in packets.values() if len(stamps) > 1]
    assert any(len(set(s)) < len(s) for s in repeated) and any(len(set(s)) > 1 for s in repeated)
    # and the market model knows them all: the replay's trades are the model's, as a multiset
    truth = tm.market.trades("kraken", "BTC-PERPETUAL", DAY + timedelta(minutes=2), DAY + timedelta(minutes=5))
    as_model = sorted((parse_ts_us(m["timestamp"]) // 1000, m["price"], m["amount"], m["side"]) for m in replayed)
    assert as_model == sorted((t["timestamp"], t["price"], t["amount"], t["side"]) for t in truth)
    assert all(t["id"] is None for t in truth)


# -- liquidations (issue 19: the double first) -----------------------------------------------------------
def _liquidation_side(trade):
    """tardis-machine.md: the trade's direction when the taker was liquidated ("T"), else the opposite."""
    from tests.fake_tardis.market import liquidation_kind
    kind = liquidation_kind(trade["symbol"], trade["id"])
    if kind is None:
        return None
    return trade["side"] if kind == "T" else {"buy": "sell", "sell": "buy"}[trade["side"]]


def test_a_liquidation_follows_its_trade_with_the_same_fill_timestamps_and_tardis_side_rule():
    with machine(70, market=MarketConfig(book_rate=2.0, trade_rate=2.0)) as tm:
        both = [json.loads(x) for x in replay(tm, opts("2026-11-25T00:00", "2026-11-25T01:00",
                                                         ["trade", "liquidation"])).text.splitlines()]
        alone = [json.loads(x) for x in replay(tm, opts("2026-11-25T00:00", "2026-11-25T01:00",
                                                          ["liquidation"])).text.splitlines()]
    liquidations = [m for m in both if m["type"] == "liquidation"]
    trades = [m for m in both if m["type"] == "trade"]
    assert trades and 0 < len(liquidations) < len(trades) / 20  # rare
    assert {m["side"] for m in liquidations} == {"buy", "sell"}
    for i, m in enumerate(both):
        if m["type"] != "liquidation":
            continue
        trade = both[i - 1]  # right after its trade
        assert trade["type"] == "trade" and trade["id"] == m["id"]
        assert {k: trade[k] for k in ("symbol", "exchange", "price", "amount", "timestamp", "localTimestamp")} == \
            {k: m[k] for k in ("symbol", "exchange", "price", "amount", "timestamp", "localTimestamp")}
        assert m["side"] == _liquidation_side(trade)
        assert list(m) == ["type", "symbol", "exchange", "id", "price", "amount", "side", "timestamp",
                           "localTimestamp"]
    # every flagged trade has its liquidation, and asking liquidations alone gives exactly those lines
    assert [t["id"] for t in trades if _liquidation_side(t)] == [m["id"] for m in liquidations]
    assert [m for m in alone if m["type"] != "disconnect"] == [m for m in liquidations]


def test_live_liquidations_are_the_replays():
    with machine(2, market=MarketConfig(book_rate=5, trade_rate=40)) as tm:
        ws = ws_connect(tm, live_opts(("liquidation",)))
        deadline = time.monotonic() + 2.0
        live = recv_until(ws, lambda m: time.monotonic() > deadline, limit=100_000)[:-1]
        ws.close()
        truth = {(m["symbol"], m["id"]): m
                 for m in tm.expected_replay(opts("2026-11-25T00:00", "2026-11-25T00:05", ["liquidation"]),
                                             ignore_availability=True) if m["type"] == "liquidation"}
    got = [m for m in live if m["type"] == "liquidation"]
    assert got and {m["type"] for m in live} <= {"liquidation", "disconnect"}
    for m in got:
        r = truth[(m["symbol"], m["id"])]
        assert {k: v for k, v in m.items() if k != "localTimestamp"} == \
            {k: v for k, v in r.items() if k != "localTimestamp"}


def test_liquidations_share_the_trade_streams_filter_set_in_the_cache():
    from tests.fake_tardis.slices import filter_key
    trade, liquidation, both = (parse_options(json.dumps(opts(types=types)), replay=True, default_symbols=BOTH)[0]
                                for types in (["trade"], ["liquidation"], ["trade", "liquidation"]))
    assert filter_key(trade) == filter_key(liquidation) == filter_key(both)
    assert liquidation.needs_trades and not liquidation.trade


def test_harness_seed_81131_after_a_drop_seen_late_no_trade_from_before_the_reconnect_follows_its_disconnect():
    """Seed 81131 (a false live trade_bar_1m minute): two exchange drops 21 s apart, the second seen by the session
    only after the clock moved on a minute. The market event the feed had already taken out when the drop came was
    still sent after the disconnect line, and the next ones were not: the client saw a trade from before the
    reconnect and then a silent hole, which no real server sends. After each disconnect line, the trades received
    must be every trade of the market between the first and the last of them (the last 5 s aside)."""
    from tests.truth import trades_truth
    start = int(datetime(2026, 11, 25, 22, 50, tzinfo=timezone.utc).timestamp()) * 1_000_000
    clock = ManualClock(start)
    with FakeTardisMachine(clock=clock, market=MarketConfig()) as tm:
        options = {"exchange": "deribit", "symbols": ["BTC-PERPETUAL"], "dataTypes": ["trade", "trade_bar_1m"],
                   "withDisconnectMessages": True}
        ws = websocket.create_connection(tm.ws_url + "/ws-stream-normalized?options=" + quote(json.dumps(options)))
        received = []

        def read():
            while True:
                try:
                    received.append(json.loads(ws.recv()))
                except (websocket.WebSocketException, OSError, ValueError):
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_until(lambda: tm.connections, message="the subscription")

        def move(to_us):
            clock.set(to_us)
            wait_until(lambda: tm.live_caught_up(), message="the double caught up")

        for second in (60, 120, 135):
            move(start + second * 1_000_000)
        tm.exchange_drop(2.0)
        move(start + 156 * 1_000_000)  # the first drop is seen here
        tm.exchange_drop(2.0)
        move(start + 216 * 1_000_000)  # the second one only once the clock jumped a minute
        move(start + 300 * 1_000_000)
        # every frame the double wrote (caught up: its buffer is empty) has been read (a reader thread starved on a
        # loaded machine was still behind: seen once, running beside truth batches with the suite on both cores)
        (connection,) = tm.connections
        wait_until(lambda: tm.live_caught_up() and len(received) >= len(connection.sent), message="everything read")
        ws.close()
    kinds = [m["type"] for m in received]
    assert kinds.count("disconnect") == 2
    truth = trades_truth(tm.market, "deribit", "BTC-PERPETUAL", start, start + 300 * 1_000_000)
    cut = [i for i, kind in enumerate(kinds) if kind == "disconnect"] + [len(received)]
    for a, b in zip(cut, cut[1:]):
        ids = [m["id"] for m in received[a + 1:b] if m["type"] == "trade"]
        if not ids:
            continue
        stamps = [parse_ts_us(m["timestamp"]) // 1000 for m in received[a + 1:b] if m["type"] == "trade"]
        # (a trade stamped shortly before the last one received may arrive after it: lost in the next drop, or not
        # sent yet when the clock stopped; the hole of this seed was 55 s long)
        between = truth[(truth["timestamp"] >= min(stamps)) & (truth["timestamp"] <= max(stamps) - 5_000)]
        missing = sorted(set(between["id"]) - set(ids))
        assert not missing, "a silent hole after disconnect %d: %s" % (cut.index(a), between[between["id"].isin(missing)])
