"""Issue 21, items 1 and 2: the wall clock of tardis-machine's host steps (NTP) while gapless records.

Every value is checked against the double's market model (:func:`tests.truth_checks.false_minutes`), never
against gapless' own output. The double steps its host's clock with ``FakeTardisMachine.step_local_clock``:
live localTimestamps move, exchange time does not.

* a step back (60 s): the frames after it carry localTimestamps a minute older than those before. They were
  thrown away as malformed while the segment stayed open, so the minutes they belonged to were served as
  live with trades missing (seen: a ``trade`` minute with 28 of 63 trades, a ``trade_bar_1m`` minute with
  volume 0). Now the segment ends there (``clock_step``, healed later from history) and nothing is lost;
* a step forward (90 s): raw types were claimed up to the arrival minus 5 s, in the exchange's future, so
  the minute in progress was served as live with only its trades so far. Now a live claim never reaches
  past the exchange timestamps seen;
* replay: the same line-by-line check. Whether tardis' own history recorder files lines across a step of
  its host's clock, and in what order tardis-machine then serves them, cannot be observed from here (it
  serves minute slices in localTimestamp order, the slicing is upstream), so the double does not model it:
  tested at the parser level.
"""
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from gapless.ingest import ReplayRequest, RunParser
from gapless.service import Gapless
from gapless.timeutil import MINUTE_US, US, iso, parse_timestamp_us
from tests.fake_tardis import FakeTardisMachine, ManualClock, MarketConfig
from tests.truth_checks import false_minutes
from tests.truth_harness import advance

DAY = datetime(2026, 11, 25, tzinfo=timezone.utc)
SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
TYPES = ["trade", "trade_bar_1m", "quote"]
RECORDER = {"backoff_base": 0.01, "backoff_cap": 0.05, "flush_interval": 0.02, "recv_timeout": 0.01,
            "data_silence": 3600.0, "dead_after": 3600.0}


def at(hh_mm_ss):
    """µs of ``hh:mm[:ss]`` on the test day."""
    parts = [int(p) for p in hh_mm_ss.split(":")] + [0]
    return int((DAY + timedelta(hours=parts[0], minutes=parts[1], seconds=parts[2])).timestamp()) * US


def live_minutes(frame):
    return [t.strftime("%H:%M") for t, s in frame["source"].items() if s == "live"]


def data_frames_sent(tm):
    """Data frames (not disconnect/error) the double wrote on every connection."""
    return [m for c in tm.connections for m in map(orjson.loads, c.sent) if m["type"] not in ("disconnect", "error")]


def recording(tmp_path, tm, types, now=None):
    """A service that records live only (history lags by half an hour), on the double's or another clock."""
    return Gapless("deribit", SYMBOLS, types, lookback="12m", database_url="sqlite:///%s" % (tmp_path / "g.db"),
                   tardis_url=tm.http_url, tardis_ws_url=tm.ws_url, history_delay="31m",
                   now=now or tm.clock.now_us, recorder_options=dict(RECORDER))


# -- the double's switch ------------------------------------------------------------------------
def test_the_double_steps_its_hosts_wall_clock_for_live_frames_only():
    clock = ManualClock(at("00:20"))
    with FakeTardisMachine(clock=clock, market=MarketConfig(trade_rate=2.0)) as tm:
        import websocket
        from gapless.subscription import stream_url
        ws = websocket.create_connection(stream_url(tm.ws_url, "deribit", ["BTC-PERPETUAL"], ["trade"]), timeout=5)
        try:
            assert tm.wait_for(lambda: tm.connections)
            clock.advance(10)
            tm.step_local_clock(-60)  # at 00:20:10
            clock.advance(10)
            assert tm.wait_for(lambda: tm.live_caught_up(), timeout=5)
            frames = []
            ws.settimeout(1.0)
            while len(frames) < tm.connections[0].sent_count:
                frames.append(orjson.loads(ws.recv()))
        finally:
            ws.close()
    assert tm.local_offset_us(at("00:20:09")) == 0 and tm.local_offset_us(at("00:20:10")) == -60 * US
    before = [m for m in frames if parse_timestamp_us(m["timestamp"]) < at("00:20:09")]
    after = [m for m in frames if parse_timestamp_us(m["timestamp"]) > at("00:20:11")]
    assert before and after
    # exchange time goes on; only the host's stamps moved back a minute
    assert all(0 <= parse_timestamp_us(m["localTimestamp"]) - parse_timestamp_us(m["timestamp"]) < US for m in before)
    assert all(0 <= parse_timestamp_us(m["localTimestamp"]) + 60 * US - parse_timestamp_us(m["timestamp"]) < US
               for m in after)
    assert max(parse_timestamp_us(m["timestamp"]) for m in frames) <= at("00:20:20")  # nothing sent early


# -- item 1: a step back --------------------------------------------------------------------------
def test_a_clock_step_back_loses_no_frame_ends_the_segment_and_serves_no_partial_minute(tmp_path):
    clock = ManualClock(at("00:20"))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=1.0, trade_rate=1.0),
                           availability_delay=timedelta(minutes=30)) as tm:
        gapless = recording(tmp_path, tm, TYPES)
        gapless.recorder.start()
        try:
            advance(clock, tm, at("00:24:25"), [gapless.recorder])
            tm.step_local_clock(-60)  # mid-minute, while recording
            advance(clock, tm, at("00:31:15"), [gapless.recorder])
            health = gapless.recorder.health()
            gapless.heal()
            frames, gaps = gapless.series(), gapless.gaps()
            coverage = gapless.storage.coverage_rows(source="live")
            stored = {t: gapless.storage.count_rows(t) for t in ("trade", "trade_bar", "book_snapshot_1")}
        finally:
            gapless.stop()
    assert false_minutes(tm, frames) == []
    sent = data_frames_sent(tm)
    assert health["malformed"] == 0 and health["reconnects"] == 0, health
    # every frame received is stored: nothing thrown away
    assert stored["trade"] == sum(m["type"] == "trade" for m in sent)
    assert stored["trade_bar"] == sum(m["type"] == "trade_bar" for m in sent)
    assert stored["book_snapshot_1"] == sum(m["type"] == "book_snapshot" for m in sent)
    for key, frame in frames.items():
        live = live_minutes(frame)
        assert "00:24" not in live, key  # the step's minute is not served from either segment
        assert "00:22" in live and "00:29" in live, (key, live)  # recording goes on before and after it
    # the segment ended at the step, with its own reason, and the gap says so (healable from history)
    assert {r["end_reason"] for r in coverage if r["segment"].endswith(":0") or r["segment"].endswith(":0:q")} \
        == {"clock_step"}, coverage
    step_gaps = [g for g in gaps if g["start"] <= iso(at("00:24")) < g["end"]]
    assert len(step_gaps) == len(frames) and all(g["reason"] == "clock_step" for g in step_gaps), gaps


# -- item 2: a step forward -----------------------------------------------------------------------
def test_a_clock_step_forward_never_claims_past_the_exchange_timestamps_seen(tmp_path):
    clock = ManualClock(at("00:20"))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=1.0, trade_rate=1.0),
                           availability_delay=timedelta(minutes=30)) as tm:
        # the service runs on tardis-machine's host: its "now" steps with it
        host_now = lambda: clock.now_us() + tm.local_offset_us(clock.now_us())  # noqa: E731
        gapless = recording(tmp_path, tm, TYPES, now=host_now)
        gapless.recorder.start()
        wrong, served, future = [], [], []
        try:
            advance(clock, tm, at("00:23:20"), [gapless.recorder])
            tm.step_local_clock(90)
            for stop in ("00:23:40", "00:24:05", "00:24:30", "00:25:50", "00:27:15"):
                advance(clock, tm, at(stop), [gapless.recorder])
                gapless.heal()
                frames = gapless.series()
                wrong += [(stop,) + w for w in false_minutes(tm, frames)]
                served.append((stop, {k: live_minutes(f) for k, f in frames.items()}))
                exchange_now = clock.now_us()
                for key, frame in frames.items():
                    newest = max((t for t, s in frame["source"].items() if s == "live"), default=None)
                    if newest is not None and int(newest.value // 1000) + MINUTE_US > exchange_now:
                        future.append((stop, key, newest))
        finally:
            gapless.stop()
    assert wrong == [], wrong[:5]
    assert future == [], future[:5]  # no minute served live before the exchange's clock has finished it
    # live minutes still come: the minutes before the step, and those proven after it
    final = dict(served[-1][1])
    assert all("00:22" in m and "00:25" in m for m in final.values()), served


# -- replay: the same check, at the parser level -----------------------------------------------------
def _trade(ts_us, lts_us, trade_id):
    return orjson.dumps({"type": "trade", "symbol": "BTC-PERPETUAL", "exchange": "deribit", "id": trade_id,
                         "price": 100.0, "amount": 1.0, "side": "buy", "timestamp": iso(ts_us),
                         "localTimestamp": iso(lts_us)})


@pytest.mark.parametrize("one_by_one", [False, True])
def test_a_replay_clock_step_back_keeps_every_line_and_ends_the_segment_there(one_by_one):
    start = at("13:35")
    step_at = start + 150 * US  # the history recorder's clock steps back 60 s at 13:37:30
    lines, ids = [], []
    for i in range(300):  # one trade a second for five minutes, stamped 3 ms after it happened
        ts = start + i * US
        lts = ts + 3000 - (60 * US if ts >= step_at else 0)
        lines.append(_trade(ts, lts, "t%d" % i))
        ids.append("t%d" % i)
    request = ReplayRequest("deribit", ("BTC-PERPETUAL",), ("trade",), start, start + 4 * MINUTE_US)
    parser = RunParser(request, batch_rows=50)
    batches = [b for line in lines for b in parser.feed([line])] if one_by_one else parser.feed(lines)
    batches.append(parser.finish(True))
    stored = [r[7] for b in batches for r in b.rows.get("trade", [])]
    assert sorted(stored) == sorted(ids) and sum(b.malformed for b in batches) == 0
    assert sum(b.clock_steps for b in batches) == 1
    claims = {}
    for b in batches:
        for c in b.claims:
            claims[c.segment] = c  # the last word on each segment
    segments = sorted(claims.values(), key=lambda c: c.start)
    assert len(segments) == 2 and segments[0].end_reason == "clock_step", segments
    # the first segment: up to what arrived before the step, minus the margin; the second from the first line
    # after it by the exchange's clock (its own is a minute behind) less the skew bound, plus the replay start
    # margin (the skew bound: claims.REPLAY_START_MARGIN_US), never by the stepped-back local clock
    assert segments[0].end <= step_at - 5 * US
    assert step_at <= segments[1].start < step_at + 3 * US
