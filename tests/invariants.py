"""Ground truth from the fake tardis-machine and the invariants the fault suite checks against it.

The invariant of issue 6: every message the double sent while a connection was up is stored exactly
once, coverage claims exactly what is stored, and every hole is reported (and later healed).

* live: what a connection sent is ``ConnectionRecord.sent`` (bytes the double's socket accepted);
  what the recorder stores of one connection must be exactly a PREFIX of it (frames still in flight
  when a connection dies are the outage), and nothing else may be stored;
* replay: a request sent the first ``RequestRecord.lines_sent`` lines of the fault-free replay of its
  options (faults only truncate; an injected malformed line is not data);
* coverage: for raw types (trade, quote, derivative_ticker ...) every truth message of the stream whose
  exchange timestamp lies in a claimed ``[start, end)`` must be stored. Sampled types (quote_1m,
  trade_bar_1m ...) are checked through the series instead: their first sample after a start depends
  on where a request began, so the truth of one request is not the truth of another.
"""
import sqlite3
from collections import Counter

import orjson

from gapless.convert import Converter, MalformedMessage, table_columns
from gapless.datatypes import parse_data_type
from gapless.timeutil import MINUTE_US, iso

TABLES = ("book_snapshot_1", "book_snapshot_5", "trade", "trade_bar", "derivative_ticker", "book_change")


# -- what is stored --------------------------------------------------------------------------------
def stored_rows(store, source=None):
    """Every stored row per table (converter column order), optionally of one source."""
    result = {}
    mark = "?" if store.is_sqlite else "%s"
    for table in TABLES:
        if not store.has_table(table):
            continue
        columns = ", ".join('"%s"' % c for c in table_columns(table))
        sql = 'SELECT %s FROM "%s"' % (columns, table)
        params = ()
        if source:
            sql += " WHERE source = %s" % mark
            params = (source,)
        rows = [tuple(r) for r in store.db.execute_sql(sql, params).fetchall()]
        if rows:
            result[table] = rows
    return result


def row_count(rows_by_table):
    return sum(len(v) for v in rows_by_table.values())


# -- what the double sent ----------------------------------------------------------------------------
def connection_rows(connection, exclude=None):
    """Data rows of one live connection, in sending order, converted like the recorder does.

    ``exclude(message)`` drops frames a test injected on purpose (they are not data the recorder must keep).
    """
    converter = Converter("live")
    rows = []
    for text in connection.sent:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue  # an injected bad frame
        if not isinstance(message, dict) or message.get("type") in ("disconnect", "error"):
            continue
        if exclude is not None and exclude(message):
            continue
        try:
            rows.append(converter.convert(message))
        except MalformedMessage:
            continue
    return rows


def request_rows(tardis, record):
    """Data rows one replay request really sent (the first ``lines_sent`` fault-free lines)."""
    if record.status != 200 or not record.options:
        return []
    messages = tardis.expected_replay(record.options, ignore_availability=True)[:record.lines_sent]
    converter = Converter("replay")
    rows = []
    for message in messages:
        if message["type"] in ("disconnect", "error"):
            continue
        rows.append(converter.convert(message))
    return rows


def replay_truth(tardis, records=None):
    """{table: set(rows)} every replay request sent."""
    truth = {}
    for record in (tardis.requests if records is None else records):
        for table, row in request_rows(tardis, record):
            truth.setdefault(table, set()).add(row)
    return truth


def live_truth(connections):
    """{table: set(rows)} every live connection sent."""
    truth = {}
    for connection in connections:
        for table, row in connection_rows(connection):
            truth.setdefault(table, set()).add(row)
    return truth


# -- invariants ----------------------------------------------------------------------------------------
def assert_live_is_a_prefix_per_connection(store, connections, exclude=None):
    """Stored live rows = the union over connections of a prefix of what each sent; returns the prefix sizes."""
    stored = Counter(r for rows in stored_rows(store, "live").values() for r in rows)
    assert max(stored.values(), default=1) == 1, "a live row is stored twice"
    remaining = Counter(stored)
    sizes = []
    for connection in connections:
        rows = [row for _, row in connection_rows(connection, exclude)]
        n = 0
        while n < len(rows) and stored[rows[n]]:
            n += 1
        later = [r for r in rows[n:] if stored[r]]
        assert not later, ("connection %d: %d of its frames after the first unstored one (#%d of %d) are stored: "
                           "stored rows are not a prefix of what it sent" % (connection.id, len(later), n, len(rows)))
        for row in rows[:n]:
            remaining[row] -= 1
        sizes.append((n, len(rows)))
    extra = +remaining
    assert not extra, "%d stored live row(s) are not among the data frames sent, e.g. %r" % (
        sum(extra.values()), next(iter(extra)))
    return sizes


def assert_nothing_invented(store, truth, source):
    """Every stored row of ``source`` is a row the double sent."""
    for table, rows in stored_rows(store, source).items():
        unknown = [r for r in rows if r not in truth.get(table, ())]
        assert not unknown, "%s: %d stored %s row(s) were never sent, e.g. %r" % (table, len(unknown), source,
                                                                                    unknown[0])


def assert_coverage_truthful(store, truth, source, exchange="deribit"):
    """Every truth row of a raw type inside a claimed [start, end) of its stream is stored.

    Returns the number of (coverage row, truth row) pairs checked, so a test can assert it checked something.
    """
    stored = {t: set(rows) for t, rows in stored_rows(store, source).items()}
    checked = 0
    for claim in store.coverage_rows(exchange=exchange, source=source):
        data_type = parse_data_type(claim["data_type"])
        if data_type.interval:
            continue
        table = data_type.table
        have = stored.get(table, set())
        missing = []
        for row in truth.get(table, ()):
            if row[1] != claim["symbol"] or row[3] != data_type.name:
                continue
            if claim["start"] <= row[5] < claim["end"]:
                checked += 1
                if row not in have:
                    missing.append(row)
        assert not missing, ("coverage %s %s %s [%s, %s) (segment %s, %s) claims %d sent row(s) that are not stored, "
                             "e.g. %r" % (source, claim["symbol"], claim["data_type"], iso(claim["start"]),
                                          iso(claim["end"]), claim["segment"], claim["end_reason"], len(missing),
                                          missing[0]))
    return checked


# -- status against the coverage table -----------------------------------------------------------------
def _merge(intervals):
    out = []
    for a, b in sorted((a, b) for a, b in intervals if b > a):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def sqlite_coverage(path):
    """Coverage rows read with plain sqlite3, read-only (independent of gapless' own reading code)."""
    connection = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
    try:
        return [dict(zip(("exchange", "symbol", "data_type", "source", "start", "end"), r)) for r in connection.execute(
            'SELECT exchange, symbol, data_type, source, "start", "end" FROM coverage')]
    finally:
        connection.close()


def minutes_by_source(coverage, exchange, symbol, data_type, start, end):
    """Per minute of [start, end): 'replay', 'live' or 'missing', computed from raw coverage rows."""
    merged = {}
    for source in ("replay", "live"):
        merged[source] = _merge((r["start"], r["end"]) for r in coverage if r["exchange"] == exchange
                                and r["symbol"] == symbol and r["data_type"] == data_type and r["source"] == source)
    result = []
    for minute in range(start, end, MINUTE_US):
        label = "missing"
        for source in ("replay", "live"):
            if any(a <= minute and minute + MINUTE_US <= b for a, b in merged[source]):
                label = source
                break
        result.append(label)
    return result


def assert_status_matches_coverage(status, coverage, exchange="deribit"):
    """``status --json`` says exactly what the coverage table says, minute by minute and gap by gap."""
    from gapless.timeutil import parse_time_arg
    start = parse_time_arg(status["window"]["start"].rstrip("Z"))
    end = parse_time_arg(status["window"]["end"].rstrip("Z"))
    assert status["streams"], status
    for stream in status["streams"]:
        labels = minutes_by_source(coverage, exchange, stream["symbol"], stream["data_type"], start, end)
        counts = {k: labels.count(k) for k in ("replay", "live", "missing")}
        counts["total"] = len(labels)
        assert stream["minutes"] == counts, (
            stream["symbol"], stream["data_type"], status["window"], stream["minutes"], counts, labels,
            sorted((r["source"], iso(r["start"]), iso(r["end"])) for r in coverage
                   if r["symbol"] == stream["symbol"] and r["data_type"] == stream["data_type"]))
        gaps = []
        i = 0
        while i < len(labels):
            if labels[i] == "missing":
                j = i
                while j < len(labels) and labels[j] == "missing":
                    j += 1
                gaps.append((iso(start + i * MINUTE_US), iso(start + j * MINUTE_US)))
                i = j
            else:
                i += 1
        assert [(g["start"], g["end"]) for g in stream["gaps"]] == gaps, (stream["symbol"], stream["data_type"])
        assert stream["gapless"] == (counts["missing"] == 0)
