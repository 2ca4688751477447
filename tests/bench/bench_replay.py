"""Benchmark: ingest ~2,000,000 one-level quote lines from the fake tardis-machine into SQLite, end to end.

Run by hand (not collected by pytest):

    .venv/bin/python tests/bench/bench_replay.py [--book-rate 32] [--workers 1] [--database sqlite|postgresql|both]

Prints, from one run on one machine:
  * ceiling 1 — ``curl -s URL > /dev/null`` of the same (cached) stream: lines/s the server can push;
  * ceiling 2 — raw driver insert of the same prepared rows (sqlite3 ``executemany`` with the SQL Peewee
    generates for the table, 5000 rows per transaction; for PostgreSQL psycopg ``COPY`` into the table);
  * gapless — ``Downloader.download`` (HTTP, parse, convert, insert, commit) in messages/s, with the ratio
    to both ceilings, and the peak RSS of the ingest (writer + worker processes) at 500k lines and at the end.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from urllib.parse import quote

import orjson
import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fresh_database, start_double  # noqa: E402

from gapless.convert import BatchConverter, table_columns  # noqa: E402
from gapless.download import Downloader  # noqa: E402
from gapless.replay import replay_options  # noqa: E402
from gapless.storage import Storage  # noqa: E402
from gapless.timeutil import DAY_US, MINUTE_US, floor_day, iso, to_us  # noqa: E402

SYMBOL = "BTC-PERPETUAL"


def curl_seconds(url, out_path=os.devnull):
    began = time.perf_counter()
    subprocess.run(["curl", "-s", "-o", out_path, url], check=True)
    return time.perf_counter() - began


class RssSampler(threading.Thread):
    """Samples the RSS of this process and its children every 50 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.samples = []  # (time, rss bytes)
        self.me = psutil.Process()

    def rss(self):
        """RSS of the ingest: this process and its download workers (not the fake server, not curl)."""
        total = self.me.memory_info().rss
        for child in self.me.children(recursive=True):
            try:
                if "multiprocessing" in " ".join(child.cmdline()):
                    total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def run(self):
        while not self.stop.wait(0.05):
            self.samples.append((time.perf_counter(), self.rss()))

    def peak_between(self, t0, t1):
        values = [rss for t, rss in self.samples if t0 <= t <= t1]
        return max(values) if values else None


def prepared_rows(body_path, day_start):
    """Parse the saved body into the exact rows gapless inserts (not timed)."""
    converter = BatchConverter("replay")
    rows = []
    with open(body_path, "rb") as handle:
        batch = []
        for line in handle:
            batch.append(orjson.loads(line))
            if len(batch) == 5000:
                rows.extend(converter.convert_many(batch)[0].get("book_snapshot_1", []))
                batch = []
        if batch:
            rows.extend(converter.convert_many(batch)[0].get("book_snapshot_1", []))
    return rows


def executemany_ceiling(rows, directory):
    store = Storage("sqlite:///%s" % os.path.join(directory, "ceiling.db"))
    store.ensure_tables({"book_snapshot_1"})
    sql = store.insert_sql("book_snapshot_1")
    connection = store.db.connection()
    began = time.perf_counter()
    for i in range(0, len(rows), 5000):
        connection.execute("BEGIN")
        connection.executemany(sql, rows[i:i + 5000])
        connection.execute("COMMIT")
    seconds = time.perf_counter() - began
    store.close()
    return len(rows) / seconds


def copy_ceiling(rows, url):
    store = Storage(url)
    store.ensure_tables({"book_snapshot_1"})
    columns = ", ".join('"%s"' % c for c in table_columns("book_snapshot_1"))
    connection = store.db.connection()
    began = time.perf_counter()
    with connection.cursor() as cursor:
        for i in range(0, len(rows), 5000):
            with connection.transaction():
                with cursor.copy('COPY "book_snapshot_1" (%s) FROM STDIN' % columns) as copy:
                    for row in rows[i:i + 5000]:
                        copy.write_row(row)
    seconds = time.perf_counter() - began
    store.close()
    return len(rows) / seconds


def ingest(args, database, info, day, body, directory, curl_rate):
    """One end-to-end download into ``database``; returns its messages/s."""
    store = Storage(fresh_database(database, "ingest", args.pg_url))
    sampler = RssSampler()
    rss_start = sampler.rss()
    sampler.start()
    marks = {}

    def on_batch(report):
        for mark in (500_000, 1_000_000, 1_500_000):
            if report.lines >= mark and mark not in marks:
                marks[mark] = time.perf_counter()

    downloader = Downloader(store, info["http_url"], workers=args.workers, progress=False, batch_rows=5000)
    downloader.on_batch = on_batch
    began = time.perf_counter()
    # claim up to the last minute of the day: the request asks one minute more (the next day's first
    # minute, a few hundred extra lines)
    report = downloader.download("deribit", [SYMBOL], ["quote"], day, day + DAY_US - MINUTE_US)
    ended = time.perf_counter()
    sampler.stop.set()
    sampler.join()
    store.close()
    seconds = ended - began
    rate = report.messages / seconds
    print("gapless download (%s, workers=%d): %d messages, %d rows inserted in %.2fs = %.0f msg/s"
          % (database, args.workers, report.messages, report.rows_inserted, seconds, rate))
    print("  ratio to the curl ceiling: %.3f" % (rate / curl_rate))
    peak_500k = sampler.peak_between(began, marks.get(500_000, ended))
    peak_end = sampler.peak_between(began, ended)
    print("  RSS (this process + workers): start %.0f MB, peak up to 500k lines %.0f MB, peak to the end "
          "(%dk lines) %.0f MB (%+.1f%%)" % (rss_start / 1e6, peak_500k / 1e6, report.lines // 1000,
                                             peak_end / 1e6, 100.0 * (peak_end - peak_500k) / peak_500k))
    return rate


def ceiling(args, database, day, body, directory, rate):
    """The driver ceiling of ``database`` on the same rows, and gapless' ratio to it (after every ingest: the
    prepared rows would inflate an ingest's RSS figures, also of a later one in this process)."""
    rows = prepared_rows(body, day)
    if database == "sqlite":
        ceiling = executemany_ceiling(rows, directory)
        print("ceiling sqlite3 executemany of the same %d prepared rows (Peewee's SQL, 5000/txn): %.0f rows/s"
              % (len(rows), ceiling))
    else:
        ceiling = copy_ceiling(rows, fresh_database("postgresql", "ceiling", args.pg_url))
        print("ceiling psycopg COPY of the same %d prepared rows (5000/txn): %.0f rows/s" % (len(rows), ceiling))
    print("%s: ratio gapless / driver ceiling: %.2f" % (database, rate / ceiling))
    return rate, ceiling


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--book-rate", type=float, default=32.0, help="book events/s (32 -> ~2M quote lines/day)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="gapless-bench-")
    double, info = start_double("--book-rate", str(args.book_rate), "--trade-rate", "0.1", "--symbols", SYMBOL)
    try:
        day = floor_day(to_us(datetime.now(timezone.utc))) - 2 * DAY_US
        options = replay_options("deribit", [SYMBOL], ["quote"], day, day + DAY_US)
        url = "%s/replay-normalized?options=%s" % (info["http_url"], quote(orjson.dumps(options).decode(), safe=""))
        body = os.path.join(directory, "body.ndjson")
        cold = curl_seconds(url, body)
        lines = sum(1 for _ in open(body, "rb"))
        size = os.path.getsize(body)
        print("stream: %s quote, %s .. %s: %d lines, %.0f MB (first, uncached request %.1fs)"
              % (SYMBOL, iso(day), iso(day + DAY_US), lines, size / 1e6, cold))
        curl = min(curl_seconds(url) for _ in range(3))
        print("ceiling curl -s URL > /dev/null: %.2fs = %.0f lines/s" % (curl, lines / curl))

        results, databases = {}, ("sqlite", "postgresql") if args.database == "both" else (args.database,)
        rates = {database: ingest(args, database, info, day, body, directory, lines / curl) for database in databases}
        for database in databases:
            results[database] = ceiling(args, database, day, body, directory, rates[database])
        if len(results) == 2:
            print("PostgreSQL / SQLite (same run): gapless %.2f, driver ceilings %.2f"
                  % (results["postgresql"][0] / results["sqlite"][0], results["postgresql"][1] / results["sqlite"][1]))
    finally:
        double.terminate()
        double.wait(10)
        shutil.rmtree(directory, ignore_errors=True)  # the body and the databases: about 1 GB


if __name__ == "__main__":
    main()
