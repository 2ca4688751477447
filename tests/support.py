"""Helpers shared by the tests: fixture files, stores, and feeding captured lines through the parser."""
import gzip
from pathlib import Path

import orjson

from gapless.ingest import ReplayRequest, RunParser
from gapless.storage import Storage
from gapless.timeutil import MINUTE_US, parse_time_arg

DATA = Path(__file__).resolve().parent / "data"


def fixture_path(name):
    """Path of a captured tardis-machine file in ``tests/data`` (stored as ``name`` or ``name.gz``)."""
    for path in (DATA / name, DATA / (name + ".gz")):
        if path.exists():
            return path
    raise AssertionError("fixture %s missing from %s" % (name, DATA))


def fixture_bytes(name):
    """The bytes of a fixture file, decompressed when it is stored gzipped."""
    path = fixture_path(name)
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def fixture_names(suffix=".ndjson"):
    """Names (without ``.gz``) of the fixture files ending in ``suffix``."""
    names = {p.name[:-3] if p.name.endswith(".gz") else p.name for p in DATA.iterdir()}
    return sorted(n for n in names if n.endswith(suffix))


def fixture_lines(name):
    """Raw lines (bytes, newline stripped) of a fixture file."""
    return [line.rstrip(b"\n") for line in fixture_bytes(name).splitlines() if line.strip()]


def fixture_messages(name):
    """Parsed messages of a fixture file."""
    return [orjson.loads(line) for line in fixture_lines(name)]


def us(text):
    """µs since epoch of an ISO time."""
    return parse_time_arg(text)


def sqlite_store(tmp_path, name="gapless.db"):
    """A fresh SQLite-backed Storage in ``tmp_path``."""
    return Storage("sqlite:///%s" % (tmp_path / name))


def ingest_fixture(store, name, exchange, symbols, data_types, start, request_end, batch_rows=500,
                   complete=True, cut_after=None, anchored=True):
    """Feed a captured replay file through RunParser into the store, as if tardis-machine had streamed it.

    ``request_end`` is the ``to`` the capture was made with; the claim ends one minute earlier.
    ``anchored``: history is taken as known continuous through ``start`` (the captures have no look-behind).
    Returns the list of batches written.
    """
    request = ReplayRequest(exchange, tuple(symbols), tuple(data_types), us(start), us(request_end) - MINUTE_US,
                            anchored=anchored)
    parser = RunParser(request, batch_rows=batch_rows)
    lines = fixture_lines(name)
    if cut_after is not None:
        lines = lines[:cut_after]
        complete = False
    batches = []
    for i in range(0, len(lines), 64):
        batches.extend(parser.feed(lines[i:i + 64]))
    batches.append(parser.finish(complete))
    store.ensure_tables({"book_snapshot_1", "book_snapshot_5"})
    for batch in batches:
        store.write(batch.rows, batch.claims)
    return batches


def wait_until(predicate, timeout=10.0, interval=0.02, message="condition"):
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, message))
        time.sleep(interval)


def live_rows_by_table(store):
    """Every stored live row, per table, as a set of tuples (converter order)."""
    from gapless.convert import table_columns
    result = {}
    for table in ("book_snapshot_1", "book_snapshot_5", "trade", "trade_bar", "derivative_ticker", "book_change"):
        if not store.has_table(table):
            continue
        columns = ", ".join('"%s"' % c for c in table_columns(table))
        rows = store.db.execute_sql('SELECT %s FROM "%s" WHERE source = %s' % (
            columns, table, "?" if store.is_sqlite else "%s"), ("live",)).fetchall()
        if rows:
            result[table] = [tuple(r) for r in rows]
    return result


def sent_rows_by_table(connections, data_only=True):
    """The data frames the double sent on the given connections, converted like live rows."""
    from gapless.convert import Converter
    result = {}
    for connection in connections:
        converter = Converter("live")  # the recorder starts a fresh parser per connection too
        for text in connection.sent:
            message = orjson.loads(text)
            if message.get("type") in ("disconnect", "error"):
                continue
            table, row = converter.convert(message)
            result.setdefault(table, []).append(row)
    return result


def make_gapless(database_url, tardis, data_types, symbols=("BTC-PERPETUAL", "ETH-PERPETUAL"), **options):
    """A :class:`Gapless` on the double's clock, with short test timings (all overridable)."""
    from gapless.service import Gapless
    options.setdefault("lookback", "10m")
    options.setdefault("history_delay", "10s")
    options.setdefault("rebuild_interval", "0.5s")
    options.setdefault("workers", 0)
    options.setdefault("recorder_options", {"backoff_base": 0.05, "backoff_cap": 0.5})
    return Gapless("deribit", list(symbols), data_types, database_url=database_url, tardis_url=tardis.http_url,
                   tardis_ws_url=tardis.ws_url, now=tardis.clock.now_us, **options)


def foreign_sqlite_file(path):
    """An SQLite file of some other application (a ``customers`` table); returns its bytes."""
    import sqlite3
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    connection.execute("INSERT INTO customers (name) VALUES ('alice')")
    connection.commit()
    connection.close()
    return Path(path).read_bytes()


def undo_schema_5(db):
    """Make a database (a peewee database or an sqlite3 connection) look as schema 4 left it: none of schema 5's
    minute columns (liquidations, option summaries) and none of its tables (liquidation, book_ticker,
    option_summary)."""
    from gapless.schema import SCHEMA_5_VALUES
    run = db.execute_sql if hasattr(db, "execute_sql") else db.execute
    for table in ("minute_agg", "minute_series"):
        for column in SCHEMA_5_VALUES:
            run('ALTER TABLE "%s" DROP COLUMN "%s"' % (table, column))
    for table in ("liquidation", "book_ticker", "option_summary"):
        run('DROP TABLE "%s"' % table)
