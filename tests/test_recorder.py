"""The live recorder against the fake tardis-machine's websocket stream (SQLite and PostgreSQL)."""
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone

import orjson
import pytest

from gapless.claims import START_MARGIN_US
from gapless.ingest import LATENCY_MARGIN_US
from gapless.recorder import Recorder
from gapless.storage import Storage
from gapless.timeutil import parse_timestamp_us
from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig
from tests.support import live_rows_by_table, sent_rows_by_table, wait_until

SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
TYPES = ["quote", "book_snapshot_5_100ms", "trade", "trade_bar_1s", "derivative_ticker"]


@pytest.fixture
def busy_tardis(clock):
    """A fake tardis-machine with a busy market: hundreds of live messages per second."""
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=150.0, trade_rate=60.0)) as machine:
        yield machine


@pytest.fixture
def fast_busy_tardis(clock):
    """A busy market on a clock five times faster than real time (margins of seconds pass quickly)."""
    fast = FakeClock(start=datetime.fromtimestamp(clock.now_us() / 1e6, timezone.utc), speed=5.0)
    with FakeTardisMachine(clock=fast, market=MarketConfig(book_rate=30.0, trade_rate=12.0)) as machine:
        yield machine


def make_recorder(store, tardis, types=TYPES, **options):
    options.setdefault("backoff_base", 0.05)
    options.setdefault("backoff_cap", 0.5)
    return Recorder(store, tardis.ws_url, "deribit", SYMBOLS, types, clock=lambda: tardis.clock.now_us() / 1e6,
                    **options)


def frames_of(connection):
    return [orjson.loads(text) for text in connection.sent]


def _prefix(connection, n):
    """The connection record cut to its first ``n`` frames."""
    from types import SimpleNamespace
    return SimpleNamespace(sent=connection.sent[:n])


def as_counter(rows_by_table):
    return {t: Counter(rows) for t, rows in rows_by_table.items()}


@pytest.mark.slow
def test_every_received_frame_is_stored_across_types(busy_tardis, store):
    recorder = make_recorder(store, busy_tardis)
    with recorder:
        wait_until(lambda: recorder.health()["rows_stored"] >= 3000, timeout=30, message="3000 stored rows")
    health = recorder.health()
    assert recorder.error is None and not recorder.is_alive()
    stored = live_rows_by_table(store)
    assert set(stored) == {"book_snapshot_1", "book_snapshot_5", "trade", "trade_bar", "derivative_ticker"}
    assert health["frames_received"] == health["rows_stored"] == sum(len(rows) for rows in stored.values())
    assert health["malformed"] == 0 and health["duplicates"] == 0
    # what was stored is exactly the first frames the double sent: the recorder stopped after receiving
    # that many; the few it had not read yet were still in flight when it closed the connection
    (connection,) = busy_tardis.connections
    received = _prefix(connection, health["frames_received"])
    assert as_counter(stored) == as_counter(sent_rows_by_table([received]))
    assert len(connection.sent) - health["frames_received"] < 50


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["close", "reset"])
def test_a_dropped_connection_is_reconnected_and_the_gap_matches_the_outage(fast_busy_tardis, store, mode):
    busy_tardis = fast_busy_tardis
    recorder = make_recorder(store, busy_tardis, types=["quote", "trade"])
    with recorder:
        wait_until(lambda: recorder.health()["rows_stored"] > 300, message="first rows")
        # raw types claim up to the last message minus the latency margin: wait past it
        wait_until(lambda: len(store.coverage_rows(source="live")) >= 2, timeout=15, message="coverage")
        busy_tardis.drop_clients(mode)
        wait_until(lambda: recorder.health()["connections"] >= 2, message="reconnect")
        wait_until(lambda: len({r["segment"] for r in store.coverage_rows(source="live")
                                if r["data_type"] == "quote"}) >= 2, timeout=20, message="second segment")
    first, second = busy_tardis.connections[0], busy_tardis.connections[1]
    assert recorder.health()["reconnects"] >= 1
    stored = as_counter(live_rows_by_table(store))
    sent_first = sent_rows_by_table([first])
    sent_second = sent_rows_by_table([second])
    stored_first_lts = max(r[6] for rows in live_rows_by_table(store).values() for r in rows
                           if r[6] <= max(x[6] for v in sent_first.values() for x in v))
    for table, rows in sent_first.items():
        for row in rows:
            # nothing sent before the outage is missing; with an RST the frames in flight are the outage
            if mode == "close" or row[6] <= stored_first_lts:
                assert stored[table][row] >= 1, (table, row)
    received_second = recorder.health()["frames_received"] - sum(
        1 for rows in live_rows_by_table(store).values() for r in rows if r[6] <= stored_first_lts)
    for table, rows in sent_rows_by_table([_prefix(second, received_second)]).items():
        assert all(stored[table][row] >= 1 for row in rows)
    del sent_second
    segments = sorted((r for r in store.coverage_rows(source="live") if r["symbol"] == "BTC-PERPETUAL"
                       and r["data_type"] == "quote"), key=lambda r: r["start"])
    assert len(segments) >= 2
    before, after = segments[0], segments[1]
    last_before = max(parse_timestamp_us(m["localTimestamp"]) for m in frames_of(first)
                      if parse_timestamp_us(m["localTimestamp"]) <= stored_first_lts)
    # a live book is known from the snapshot the new connection starts with: at its own (exchange) time
    first_after = min(parse_timestamp_us(m["timestamp"]) for m in frames_of(second)
                      if m["symbol"] == "BTC-PERPETUAL" and m.get("name") == "quote")
    # raw types end at the last arrival minus the latency margin, but never past the newest exchange stamp minus it
    newest_before = max(parse_timestamp_us(m["timestamp"]) for m in frames_of(first)
                        if "timestamp" in m and parse_timestamp_us(m["localTimestamp"]) <= stored_first_lts)
    assert before["end_reason"] == "drop"
    assert min(last_before, newest_before) - LATENCY_MARGIN_US <= before["end"] <= last_before
    assert after["start"] == first_after


@pytest.mark.slow
def test_a_disconnect_message_closes_the_segment_at_its_timestamp(fast_busy_tardis, store):
    busy_tardis = fast_busy_tardis
    recorder = make_recorder(store, busy_tardis, types=["quote", "trade_bar_1s"])
    with recorder:
        # raw types are claimed up to the last message minus the latency margin, bars from the first whole
        # bar after the start margin: let the first segment grow
        wait_until(lambda: {"quote", "trade_bar_1s"} <= {r["data_type"] for r in store.coverage_rows(source="live")},
                   timeout=30, message="first segments")
        busy_tardis.exchange_drop(0.2)
        wait_until(lambda: recorder.health()["disconnects"] == 1, message="disconnect message")
        # BTC's own second segments (the ones checked below; ETH's may come first on a loaded machine)
        wait_until(lambda: {"quote", "trade_bar_1s"} <= {r["data_type"] for r in store.coverage_rows(source="live")
                                                         if r["segment"].split(":")[1] == "1"
                                                         and r["symbol"] == "BTC-PERPETUAL"},
                   timeout=30, message="BTC's second segments")
    disconnect = [m for m in frames_of(busy_tardis.connections[0]) if m["type"] == "disconnect"]
    assert len(disconnect) == 1 and set(disconnect[0]["symbols"]) == set(SYMBOLS)
    at = parse_timestamp_us(disconnect[0]["localTimestamp"])
    after = [m for m in frames_of(busy_tardis.connections[0]) if parse_timestamp_us(m["localTimestamp"]) > at
             and m["symbol"] == "BTC-PERPETUAL"]
    # the next segment: a book from its fresh snapshot; bars from the first whole bar after their first trade
    snapshot = min(parse_timestamp_us(m["timestamp"]) for m in after if m.get("name") == "quote")
    first_trade = min(parse_timestamp_us(m["openTimestamp"]) for m in after if m.get("name") == "trade_bar_1s")
    expected = {"quote": snapshot, "trade_bar_1s": -(-(first_trade + START_MARGIN_US) // 10 ** 6) * 10 ** 6}
    for data_type in ("quote", "trade_bar_1s"):
        rows = [r for r in store.coverage_rows(source="live") if r["symbol"] == "BTC-PERPETUAL"
                and r["data_type"] == data_type]
        first = [r for r in rows if r["segment"].split(":")[1] == "0"]
        second = [r for r in rows if r["segment"].split(":")[1] == "1"]
        assert first and all(r["end_reason"] == "disconnect" and r["end"] <= at for r in first)
        assert min(r["start"] for r in second) == expected[data_type], data_type
    assert recorder.health()["connections"] == 1  # the websocket itself stayed up


def test_tardis_machine_unreachable_at_start_is_retried_until_it_comes_up(busy_tardis, store, caplog):
    busy_tardis.stop_ws()
    recorder = make_recorder(store, busy_tardis)
    with caplog.at_level(logging.WARNING, logger="gapless.recorder"), recorder:
        wait_until(lambda: recorder.health()["reconnects"] >= 3, message="retries")
        assert recorder.is_alive() and recorder.health()["rows_stored"] == 0
        busy_tardis.start_ws()
        wait_until(lambda: recorder.health()["rows_stored"] > 100, timeout=15, message="recording")
    assert any("cannot connect to tardis-machine at %s" % busy_tardis.ws_url in r.getMessage()
               for r in caplog.records)


def test_a_silent_connection_is_noticed_and_reconnected(busy_tardis, store):
    recorder = make_recorder(store, busy_tardis, data_silence=1.0, dead_after=2.0)
    with recorder:
        wait_until(lambda: recorder.health()["rows_stored"] > 100, message="rows")
        busy_tardis.stall_clients(3.0)
        wait_until(lambda: recorder.health()["connections"] >= 2, timeout=10, message="watchdog reconnect")
    assert any(r["end_reason"] == "stale" for r in store.coverage_rows(source="live"))


def test_malformed_frames_are_counted_logged_and_not_stored(busy_tardis, store, caplog):
    recorder = make_recorder(store, busy_tardis, types=["trade"])
    bad = ["not json", '{"type":"wat","exchange":"deribit","localTimestamp":"2026-11-25T00:20:01.000Z"}',
           '{"type":"trade","symbol":"BTC-PERPETUAL","exchange":"deribit","localTimestamp":"2026-11-25T00:20:01.000Z"}']
    with caplog.at_level(logging.WARNING, logger="gapless.recorder"), recorder:
        wait_until(lambda: recorder.health()["rows_stored"] > 20, message="rows")
        for text in bad:
            busy_tardis.inject_frame(text)
        wait_until(lambda: recorder.health()["malformed"] == 3, message="malformed counted")
        wait_until(lambda: recorder.health()["rows_stored"] > 60, message="rows after")
    assert recorder.error is None
    assert any("malformed frame" in r.getMessage() for r in caplog.records)
    stored = live_rows_by_table(store)
    assert set(stored) == {"trade"}


def test_stop_under_load_stores_every_received_frame(clock, store):
    with FakeTardisMachine(clock=clock, firehose=True, firehose_seconds=20) as tardis:
        recorder = make_recorder(store, tardis, types=["quote"])
        recorder.start()
        wait_until(lambda: recorder.health()["rows_stored"] > 20000, timeout=30, message="load")
        assert recorder.stop(timeout=5.0)
    health = recorder.health()
    assert health["frames_received"] == health["rows_stored"] > 20000
    assert store.count_rows("book_snapshot_1", source="live") == health["rows_stored"]
    assert [r["is_open"] for r in store.coverage_rows(source="live")] == [False] * len(store.coverage_rows(source="live"))


RECORD_SCRIPT = """
import sys, time
sys.path.insert(0, %r)
from gapless.recorder import Recorder
from gapless.storage import Storage
store = Storage(sys.argv[1])
recorder = Recorder(store, sys.argv[2], "deribit", ["BTC-PERPETUAL", "ETH-PERPETUAL"], ["quote", "trade"],
                    clock=lambda: float(sys.argv[3]) + time.time())
recorder.start()
while True:
    time.sleep(0.05)
    print(recorder.health()["rows_stored"], flush=True)
"""


@pytest.mark.slow
def test_a_killed_recorder_leaves_a_database_the_next_start_repairs(busy_tardis, database_url, tmp_path):
    script = tmp_path / "record.py"
    script.write_text(RECORD_SCRIPT % os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    offset = busy_tardis.clock.now_us() / 1e6 - time.time()
    process = subprocess.Popen([sys.executable, str(script), database_url, busy_tardis.ws_url, str(offset)],
                               stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if int(line) > 2000:
                break
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(10)
    store = Storage(database_url)
    try:
        open_before = store.open_segments("live")
        assert open_before, "a killed recorder leaves its segments open"
        rows_before = live_rows_by_table(store)
        assert sum(len(v) for v in rows_before.values()) > 2000
        # every committed row is intact: exactly frames the double sent
        sent = as_counter(sent_rows_by_table(busy_tardis.connections))
        for table, rows in rows_before.items():
            assert all(sent[table][row] >= 1 for row in rows)
        ends = {(r["segment"], r["symbol"], r["data_type"]): r["end"] for r in open_before}
        # a segment is stale once its recorder stopped refreshing it (here after 1 s instead of 30 s)
        recorder = make_recorder(store, busy_tardis, types=["quote", "trade"], stale_segment=1.0)
        wait_until(lambda: time.time() * 1e6 - max(r["updated_at"] for r in open_before) > 1.2e6,
                   message="segments stale")
        assert recorder.repair_open_segments() == len(open_before)
        assert store.open_segments("live") == []
        repaired = {(r["segment"], r["symbol"], r["data_type"]): r for r in store.coverage_rows(source="live")}
        for key, end in ends.items():
            assert repaired[key]["end"] == end and repaired[key]["end_reason"] == "crash"
        assert live_rows_by_table(store) == rows_before
    finally:
        store.close()


def test_a_recorder_whose_database_fails_dies_visibly(busy_tardis, tmp_path, caplog):
    store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
    recorder = make_recorder(store, busy_tardis, types=["trade"], max_write_failures=2)
    with caplog.at_level(logging.ERROR, logger="gapless.recorder"):
        recorder.start()
        wait_until(lambda: recorder.health()["rows_stored"] > 10, message="rows")
        # the table disappears under the recorder: every write fails from now on
        other = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        other.db.execute_sql('DROP TABLE "trade"')
        other.close()
        wait_until(lambda: not recorder.is_alive(), timeout=20, message="recorder thread death")
    assert recorder.error is not None and "trade" in str(recorder.error)
    assert recorder.health()["alive"] is False and recorder.health()["error"]
    assert any("recorder deribit died" in r.getMessage() for r in caplog.records)


def test_a_subscription_too_long_for_the_server_says_so_and_what_to_do(store, caplog):
    """tardis-machine is a Node server: a request head over 16 KiB is refused with 431, and every symbol of the
    subscription is in its URL (about 29 bytes an option). The recorder keeps retrying (the server may be
    restarted with a larger limit) and its warning says why it cannot connect and what to do."""
    from gapless.subscription import stream_url
    chain = ["BTC-%dDEC26-%d-%s" % (day, 60000 + 500 * k, side) for day in (4, 11, 18, 25) for k in range(80)
             for side in "CP"]
    with FakeTardisMachine(clock=FakeClock(), market=MarketConfig()) as tardis:
        assert len(stream_url(tardis.ws_url, "deribit", chain, ["option_summary"])) > 16 * 1024
        recorder = Recorder(store, tardis.ws_url, "deribit", chain, ["option_summary"], backoff_base=0.05,
                            backoff_cap=0.2, clock=lambda: tardis.clock.now_us() / 1e6)
        with caplog.at_level(logging.WARNING, logger="gapless.recorder"):
            recorder.start()
            try:
                wait_until(lambda: sum("cannot connect" in r.getMessage() for r in caplog.records) >= 2,
                           message="two refused attempts")
                assert recorder.is_alive() and not tardis.connections
            finally:
                recorder.stop()
    warning = next(r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage())
    assert "431" in warning and "bytes, more than the server takes" in warning, warning
    assert "--max-http-header-size" in warning
