"""PostgreSQL as the shared database of several gapless processes (the local server, a schema per test)."""
import json
import multiprocessing
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from gapless.recorder import Recorder
from gapless.series import stream_series
from gapless.storage import Storage
from tests.conftest import pg_schema_url
from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig
from tests.service_process import ROOT, service_env, start_service, stop_service
from tests.support import live_rows_by_table, sent_rows_by_table, wait_until

SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL", "SOL-PERPETUAL"]
START = datetime(2026, 11, 25, 0, 20, tzinfo=timezone.utc)


@pytest.fixture
def pg_url(pg_database):
    return pg_schema_url(pg_database)[1]


def _open(url, barrier, results):
    barrier.wait()
    try:
        Storage(url).close()
        results.put("ok")
    except Exception as exc:  # the test reports what went wrong in the child
        results.put(repr(exc))


def test_several_services_creating_the_schema_at_once_do_not_collide(pg_url):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(6), context.Queue()
    processes = [context.Process(target=_open, args=(pg_url, barrier, results)) for _ in range(6)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
    assert outcomes == ["ok"] * 6
    store = Storage(pg_url, create=False)
    try:
        assert {"trade", "trade_bar", "coverage", "gapless_meta"} <= set(store.db.get_tables())
        meta = store.models["meta"]
        assert meta.select().where(meta.key == "schema_version").count() == 1
    finally:
        store.close()


def _publish(url, barrier, results):
    from gapless.publish import rebuild
    try:
        store = Storage(url)
        barrier.wait(30)
        # the same stream at once: the passes take turns (each one reads a snapshot of its own)
        report = rebuild(store, [("deribit", "BTC-PERPETUAL", "trade")], 0, 60_000_000)
        store.close()
        errors = [r.error for r in report.streams.values() if r.error]
        results.put("ok" if not errors else repr(errors))
    except Exception as exc:  # reported to the test, which shows it
        results.put(repr(exc))


def test_several_services_publishing_their_first_series_at_once_do_not_collide(pg_database):
    # services starting together publish their first pass at about the same moment: schema creation must not
    # fail on another's (found by the 3-service test), nor may one pass fail on another's rows of the same stream
    context = multiprocessing.get_context("spawn")
    for _ in range(3):
        url = pg_schema_url(pg_database)[1]
        Storage(url).close()  # the base schema exists, as after the services' start
        barrier, results = context.Barrier(6), context.Queue()
        processes = [context.Process(target=_publish, args=(url, barrier, results)) for _ in range(6)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(30)
        assert outcomes == ["ok"] * 6


def _status(tardis, url, cwd, symbol):
    env = service_env(tardis, url, symbols=[symbol], data_types=["trade", "quote_1m"], GAPLESS_LOOKBACK="5m")
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "status", "--json"], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=60)
    return json.loads(result.stdout) if result.returncode == 0 else None


READER = """
import sys, time, json
sys.path.insert(0, %r)
from gapless.storage import Storage
from gapless.stitch import series
store = Storage(sys.argv[1], create=False)
deadline, reads, errors = time.time() + float(sys.argv[2]), 0, []
from gapless.timeutil import MINUTE_US
import gapless.config
now = gapless.config.make_clock(sys.argv[3])
while time.time() < deadline:
    try:
        end = now() // MINUTE_US * MINUTE_US
        frames = series(store, "deribit", sys.argv[4].split(","), ["trade", "quote_1m"], end - 5 * MINUTE_US, end)
        reads += 1
    except Exception as exc:
        errors.append(repr(exc))
print(json.dumps({"reads": reads, "errors": errors[:3]}))
"""


def test_three_services_and_a_reader_share_one_database(pg_url, tmp_path):
    clock = FakeClock(start=START, speed=30.0)
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=3.0, trade_rate=2.0),
                           availability_delay=timedelta(seconds=5), default_symbols=SYMBOLS) as tardis:
        services = [start_service(tardis, pg_url, tmp_path, symbols=[symbol], data_types=["trade", "quote_1m"],
                                  GAPLESS_LOOKBACK="5m") for symbol in SYMBOLS]
        script = tmp_path / "reader.py"
        script.write_text(READER % str(ROOT))
        spec = service_env(tardis, pg_url)["GAPLESS_TEST_CLOCK"]
        try:
            wait_until(lambda: all(
                (lambda s: s is not None and all(x["gapless"] for x in s["streams"]))(
                    _status(tardis, pg_url, tmp_path, symbol)) for symbol in SYMBOLS),
                timeout=90, message="all three streams gapless")
            reader = subprocess.run([sys.executable, str(script), pg_url, "5", spec, ",".join(SYMBOLS)],
                                    capture_output=True, text=True, timeout=60)
        finally:
            codes = [stop_service(service)[0] for service in services]
        assert codes == [0, 0, 0]
        assert reader.returncode == 0, reader.stderr
        report = json.loads(reader.stdout)
        assert report["errors"] == [] and report["reads"] >= 3
        store = Storage(pg_url)
        try:
            stored = {t: Counter(rows) for t, rows in live_rows_by_table(store).items()}
            assert len(tardis.connections) == 3
            for connection in tardis.connections:
                # each service stored exactly the frames it received from its own connection, once
                received = sum(1 for text in connection.sent if '"type":"disconnect"' not in text)
                sent = sent_rows_by_table([connection])
                symbol = next(iter(sent["trade"]))[1]
                in_db = sum(c for t in stored for row, c in stored[t].items() if row[1] == symbol)
                assert received - 50 < in_db <= received
                prefix = sent_rows_by_table([SimpleNamespace(sent=connection.sent[:in_db])])
                for table, rows in prefix.items():
                    assert all(stored[table][row] == 1 for row in rows), table
            end = clock.now_us() // 60_000_000 * 60_000_000 - 60_000_000
            for symbol in SYMBOLS:
                for data_type in ("trade", "quote_1m"):
                    frame = stream_series(store, "deribit", symbol, data_type, end - 4 * 60_000_000, end, "replay")
                    live = stream_series(store, "deribit", symbol, data_type, end - 4 * 60_000_000, end, "live")
                    combined = ~(frame["missing"].to_numpy() & live["missing"].to_numpy())
                    assert combined.all(), (symbol, data_type)
                    # coverage is exact: every live segment lies inside what its rows show
                    for row in store.coverage_rows("deribit", symbol, data_type, "live"):
                        assert not row["is_open"] and row["end"] > row["start"]
        finally:
            store.close()


def test_two_recorders_of_the_same_stream_store_each_trade_once(pg_url):
    """Documented behaviour: both record; trades deduplicate on their id, coverage stays exact."""
    clock = FakeClock(start=START)
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=5.0, trade_rate=40.0)) as tardis:
        stores = [Storage(pg_url), Storage(pg_url)]
        recorders = [Recorder(store, tardis.ws_url, "deribit", ["BTC-PERPETUAL"], ["trade"],
                              clock=lambda: clock.now_us() / 1e6) for store in stores]
        for recorder in recorders:
            recorder.start()
        wait_until(lambda: all(r.health()["rows_stored"] + r.health()["duplicates"] > 400 for r in recorders),
                   timeout=30, message="both recording")
        for recorder in recorders:
            recorder.stop()
        trades_sent = {}
        for connection in tardis.connections:
            for text in connection.sent:
                message = json.loads(text)
                if message["type"] == "trade":
                    trades_sent[message["id"]] = message
        rows = stores[0].db.execute_sql("SELECT trade_id, COUNT(*) FROM trade WHERE source = 'live' "
                                        "GROUP BY trade_id").fetchall()
        assert rows and all(count == 1 for _, count in rows)
        assert {trade_id for trade_id, _ in rows} <= set(trades_sent)
        # every trade received by either recorder is stored once: duplicates were recognised as such
        total = sum(r.health()["rows_stored"] for r in recorders)
        assert total == len(rows)
        assert sum(r.health()["duplicates"] for r in recorders) > 0
        for store in stores:
            store.close()


def test_bulk_insert_copies_new_rows_and_falls_back_to_on_conflict_for_existing_keys(pg_url):
    """COPY goes straight into the table; a batch meeting stored keys is redone through the staging table,
    later batches of that table take the staging way, and every way inserts each row exactly once."""
    from gapless.pgstore import CopyInserter
    base = 1795564800000000

    def trades(first, count):
        return [("deribit", "BTC-PERPETUAL", "trade", "trade", "replay", base + i * 1000, base + i * 1000 + 7,
                 "t%d" % i, 100.0 + i, 1.0, "buy", None) for i in range(first, first + count)]

    store = Storage(pg_url)
    try:
        assert store.write({"trade": trades(0, 100)}) == 100  # direct COPY
        inserter = store._copy_inserter
        assert inserter._staging_left.get("trade", 0) == 0
        assert store.write({"trade": trades(50, 100)}) == 50  # half already stored: staging + ON CONFLICT
        assert inserter._staging_left["trade"] == CopyInserter.STAGING_BATCHES_AFTER_CONFLICT
        assert store.write({"trade": trades(150, 10)}) == 10  # the staging way, all new
        assert store.write({"trade": trades(0, 160)}) == 0  # everything again: nothing new
        _, rows = store.read_rows("trade", "deribit", "BTC-PERPETUAL", "trade", "replay", base, base + 10 ** 9)
        assert sorted(r[7] for r in rows) == sorted("t%d" % i for i in range(160))
    finally:
        store.close()
