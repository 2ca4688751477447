"""Exchanges whose normalized trades carry no ``id`` (issue 21, item 3).

The stored key of such a trade must not depend on the connection or request that received it: two
recorders of one stream on one database (which the README allows) once stored every trade twice, because
the key fell back to the receiving connection's localTimestamp (418 rows for 209 trades). Values are
checked against the double's market model (:mod:`tests.truth`), where kraken prints no trade ids and
identical trades (same exchange time, price, amount and side) in one packet and across packets.
"""
from collections import Counter
from datetime import datetime, timedelta, timezone

import orjson

from gapless.convert import BatchConverter, Converter
from gapless.download import Downloader
from gapless.ingest import ReplayRequest, RunParser
from gapless.recorder import Recorder
from gapless.schema import SCHEMA_VERSION
from gapless.stitch import series
from gapless.storage import Storage
from gapless.timeutil import iso, parse_timestamp_us
from tests.fake_tardis import ManualClock, FakeTardisMachine, MarketConfig
from tests.support import undo_schema_5
from tests.truth import trades_truth
from tests.truth_checks import false_minutes
from tests.truth_harness import advance

UTC = timezone.utc
DAY = datetime(2026, 11, 25, tzinfo=UTC)
EXCHANGE = "kraken"
SYMBOL = "BTC-PERPETUAL"
TYPES = ["trade", "trade_bar_1m"]
RECORDER = {"backoff_base": 0.01, "backoff_cap": 0.05, "flush_interval": 0.02, "recv_timeout": 0.01,
            "data_silence": 3600.0, "dead_after": 3600.0}
# every live connection stamps its own localTimestamps, as on the real server
MARKET = MarketConfig(trade_rate=1.0, live_arrival_spread_ms=1)


def at(hh_mm):
    """µs of ``hh:mm[:ss]`` on the test day."""
    parts = [int(p) for p in hh_mm.split(":")] + [0]
    return int((DAY + timedelta(hours=parts[0], minutes=parts[1], seconds=parts[2])).timestamp()) * 10 ** 6


def minutes(frame, source):
    return [t.strftime("%H:%M") for t, s in frame["source"].items() if s == source]


def stored_trades(store, source, start, end):
    return store.db.execute_sql('SELECT COUNT(*) FROM "trade" WHERE "source" = ? AND "timestamp" >= ? AND '
                                '"timestamp" < ?', (source, start, end)).fetchone()[0]


def true_trades(tm, start, end):
    truth = trades_truth(tm.market, EXCHANGE, SYMBOL, start, end)
    assert truth["id"].isna().all()  # the double's kraken really has no trade ids
    return len(truth)


def record_with_two_recorders(tm, clock, url, until):
    """Two recorders of the same stream on one database, both connected from 00:20 to ``until``."""
    def recorder():
        return Recorder(Storage(url), tm.ws_url, EXCHANGE, [SYMBOL], TYPES, clock=lambda: clock.now_us() / 1e6,
                        **RECORDER)
    x, y = recorder().start(), recorder().start()
    try:
        advance(clock, tm, until, [x, y])
    finally:
        for r in (x, y):
            r.stop()
            r.storage.close()


def test_two_recorders_of_an_exchange_without_trade_ids_store_every_trade_once(tmp_path):
    clock = ManualClock(at("00:20"))
    url = "sqlite:///%s" % (tmp_path / "g.db")
    with FakeTardisMachine(clock=clock, market=MARKET) as tm:
        record_with_two_recorders(tm, clock, url, at("00:30:30"))
        store = Storage(url)
        frames = series(store, EXCHANGE, [SYMBOL], TYPES, at("00:20"), at("00:30"), sources=("live",))
        trades, bars = frames[(SYMBOL, "trade")], frames[(SYMBOL, "trade_bar_1m")]
        live = minutes(trades, "live")
        assert live == ["00:%02d" % m for m in range(21, 30)], live
        # the series' trades and volume are the market's, not twice as many
        assert false_minutes(tm, frames, exchange=EXCHANGE) == []
        assert stored_trades(store, "live", at("00:21"), at("00:30")) == true_trades(tm, at("00:21"), at("00:30"))
        both = [t for t in live if t in minutes(bars, "live")]
        assert len(both) >= 7
        for column in ("trades", "volume", "buy_volume", "sell_volume", "open", "close"):
            assert (trades.loc[trades["source"] == "live", column].loc[bars["source"] == "live"]
                    == bars.loc[bars["source"] == "live", column].loc[trades["source"] == "live"]).all(), column


def test_replay_of_an_exchange_without_trade_ids_is_stored_once_and_agrees_with_live(tmp_path):
    clock = ManualClock(at("00:20"))
    url = "sqlite:///%s" % (tmp_path / "g.db")
    with FakeTardisMachine(clock=clock, market=MARKET, availability_delay=timedelta(minutes=1)) as tm:
        record_with_two_recorders(tm, clock, url, at("00:30:30"))
        clock.set(at("00:45"))
        store = Storage(url)
        downloader = Downloader(store, tm.http_url, workers=0, progress=False, now=clock.now_us)
        # two overlapping requests (the second asks from before the first one's end) ...
        assert downloader.download(EXCHANGE, [SYMBOL], ["trade"], at("00:21"), at("00:26")).complete
        assert downloader.download(EXCHANGE, [SYMBOL], ["trade"], at("00:25"), at("00:30")).complete
        asked = len(tm.requests)
        # ... and the whole range once more, as if nothing were stored (coverage forgotten, rows kept)
        store.db.execute_sql('DELETE FROM "coverage" WHERE "source" = ?', ("replay",))
        assert downloader.download(EXCHANGE, [SYMBOL], ["trade"], at("00:21"), at("00:30")).complete
        assert len(tm.requests) > asked
        assert stored_trades(store, "replay", at("00:21"), at("00:30")) == true_trades(tm, at("00:21"), at("00:30"))
        replay = series(store, EXCHANGE, [SYMBOL], ["trade"], at("00:21"), at("00:30"),
                        sources=("replay",))[(SYMBOL, "trade")]
        live = series(store, EXCHANGE, [SYMBOL], ["trade"], at("00:21"), at("00:30"),
                      sources=("live",))[(SYMBOL, "trade")]
        assert minutes(replay, "replay") == minutes(live, "live") == ["00:%02d" % m for m in range(21, 30)]
        assert false_minutes(tm, {(SYMBOL, "trade"): replay}, exchange=EXCHANGE) == []
        columns = ["open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "trades"]
        assert (replay[columns] == live[columns]).all().all()  # replay and live agree, minute by minute


# -- the key, in one run and across runs ------------------------------------------------------------------
def kraken_trades(tm, start="2026-11-25T00:20", end="2026-11-25T00:25"):
    """What a replay of kraken's BTC trades sends (dicts, in arrival order)."""
    return tm.expected_replay({"exchange": EXCHANGE, "symbols": [SYMBOL], "dataTypes": ["trade"], "from": start,
                               "to": end}, ignore_availability=True)


def keyed(rows):
    """``{(timestamp, trade_id): (price, amount, side, seq)}`` of trade row tuples."""
    return {(r[5], r[7]): (r[8], r[9], r[10], r[11]) for r in rows}


def test_the_key_of_a_trade_without_id_is_the_same_whichever_connection_received_it_and_across_batches():
    with FakeTardisMachine(clock=ManualClock(at("01:00")), market=MARKET) as tm:
        messages = kraken_trades(tm)
    assert not any("id" in m for m in messages)
    converter = Converter("live")
    one = [converter.convert(m)[1] for m in messages]
    # another connection: every localTimestamp 3 ms later, and the messages cut into batches of 7 (identical
    # trades split across two batches continue their numbering)
    later = [dict(m, localTimestamp=iso(parse_timestamp_us(m["localTimestamp"]) + 3000)) for m in messages]
    converter, other = BatchConverter("live"), []
    for i in range(0, len(later), 7):
        blocks, malformed = converter.convert_many(later[i:i + 7])
        assert not malformed
        other.extend(blocks["trade"])
    assert keyed(one) == keyed(other) and len(keyed(one)) == len(messages)  # every trade its own key
    identical = Counter((r[5], r[8], r[9], r[10]) for r in one)
    assert max(identical.values()) >= 3  # the double's kraken prints identical trades
    numbers = {}
    for r in one:  # ~<price>:<amount>:<side>:<n>, n counting identical trades 0, 1, 2 ...
        assert r[7] == "~%r:%r:%s:%s" % (float(r[8]), float(r[9]), r[10], r[7].rsplit(":", 1)[1])
        numbers.setdefault((r[5], r[8], r[9], r[10]), []).append(int(r[7].rsplit(":", 1)[1]))
    assert all(n == list(range(identical[k])) for k, n in numbers.items())
    # seq is the arrival order among the trades of one timestamp
    seqs = {}
    for r in one:
        seqs.setdefault(r[5], []).append(r[11])
    assert all(s == list(range(len(s))) for s in seqs.values())


def test_a_live_connection_that_starts_inside_a_group_of_identical_trades_stores_none_of_its_timestamp():
    with FakeTardisMachine(clock=ManualClock(at("01:00")), market=MARKET) as tm:
        messages = kraken_trades(tm)
    stamps = [m["timestamp"] for m in messages]
    # a timestamp whose trades came in two packets: the connection opens between them
    split = next(i for i in range(1, len(messages)) if stamps[i] == stamps[i - 1]
                 and messages[i]["localTimestamp"] != messages[i - 1]["localTimestamp"])
    start = parse_timestamp_us(messages[split]["localTimestamp"])
    request = ReplayRequest(EXCHANGE, (SYMBOL,), ("trade",), 0, 2 ** 62)
    parser = RunParser(request, source="live", live=True)
    batches = parser.feed([orjson.dumps(m) for m in messages[split:]]) + [parser.close("test")]
    rows = [r for b in batches for r in b.rows.get("trade", [])]
    first_whole = start + 2_000_000  # a packet arrives within the skew bound of its timestamp
    assert rows and min(r[5] for r in rows) >= first_whole
    converter = Converter("live")
    whole = [converter.convert(m)[1] for m in messages]  # a connection that saw everything
    assert keyed(rows) == {k: v for k, v in keyed(whole).items() if k[0] >= first_whole}


# -- databases written before schema 3 --------------------------------------------------------------------
def old_fallback_rows(messages):
    """Trade rows as gapless stored them before schema 3: keyed ``~<localTimestamp>:<n>`` (n counting the
    stream's messages with the same timestamp and localTimestamp), no ``seq`` column."""
    rows, counts = [], Counter()
    for m in messages:
        row = Converter("live").convert(m)[1]
        packet = (row[5], row[6])
        rows.append(row[:7] + ("~%d:%d" % (row[6], counts[packet]),) + row[8:11])
        counts[packet] += 1
    return rows


def make_schema_2_database(url, rows):
    """A database as gapless wrote it with schema 2, holding ``rows`` (old-format trades)."""
    store = Storage(url)
    db, mark = store.db, "?" if store.is_sqlite else "%s"
    with store.write_transaction():
        db.execute_sql('ALTER TABLE "trade" DROP COLUMN "seq"')
        db.execute_sql('DROP INDEX "minute_series_seq"')  # schema 4's publish sequence did not exist either
        for column in ("seq", "revision", "levels"):
            db.execute_sql('ALTER TABLE "minute_series" DROP COLUMN "%s"' % column)
        undo_schema_5(db)
        db.cursor().executemany('INSERT INTO "trade" ("exchange", "symbol", "dtype", "name", "source", "timestamp", '
                                '"local_timestamp", "trade_id", "price", "amount", "side") VALUES (%s)'
                                % ", ".join([mark] * 11), rows)
        store.put_meta("schema_version", "2")
    store.close()


def test_a_schema_2_database_with_old_fallback_keys_is_rewritten_and_the_same_trades_are_not_stored_again(
        database_url):
    with FakeTardisMachine(clock=ManualClock(at("01:00")), market=MARKET) as tm:
        messages = [dict(m, localTimestamp=m["localTimestamp"][:23] + "Z") for m in kraken_trades(tm)]  # live: ms
    make_schema_2_database(database_url, old_fallback_rows(messages))
    store = Storage(database_url)  # opened by the new code: upgraded
    try:
        assert store.meta_value("schema_version") == str(SCHEMA_VERSION)
        stored = store.db.execute_sql('SELECT "exchange", "symbol", "dtype", "name", "source", "timestamp", '
                                      '"local_timestamp", "trade_id", "price", "amount", "side", "seq" FROM "trade"'
                                      ).fetchall()
        converter = Converter("live")
        new = [converter.convert(m)[1] for m in messages]
        assert len(stored) == len(messages)  # nothing lost
        assert keyed(stored) == keyed(new)  # exactly the keys (and order) the new code gives the same trades
        # the same trades recorded again by the new code: nothing new is stored
        store.write({"trade": new}, [])
        assert store.count_rows("trade") == len(messages)
    finally:
        store.close()
