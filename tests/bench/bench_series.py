"""Benchmark: reading a week of minute data back, and rebuilding the combined series.

Run by hand (not collected by pytest):

    .venv/bin/python tests/bench/bench_series.py [--days 7] [--database sqlite|postgresql]

Downloads ``--days`` of BTC-PERPETUAL and ETH-PERPETUAL ``quote_1m`` and ``trade_bar_1m`` from the fake
tardis-machine (its own process) into a fresh database, then prints:
  * the time to read the week back into minute DataFrames (``gapless.stitch.series``, replay and live
    sources, 2 symbols x 2 data types) — target under 1 s;
  * the time of one full rebuild (stitch, compare, publish into ``minute_series`` in one transaction)
    of the same 4 streams, and with a CSV export.
"""
import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fresh_database, start_double  # noqa: E402

from gapless.download import Downloader  # noqa: E402
from gapless.stitch import series  # noqa: E402
from gapless.publish import rebuild  # noqa: E402
from gapless.storage import Storage  # noqa: E402
from gapless.timeutil import DAY_US, floor_day, iso, to_us  # noqa: E402

SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
TYPES = ["quote_1m", "trade_bar_1m"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--database", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    double, info = start_double("--symbols", ",".join(SYMBOLS))
    try:
        directory = tempfile.mkdtemp(prefix="gapless-bench-")
        store = Storage(fresh_database(args.database, "week", args.pg_url))
        end = floor_day(to_us(datetime.now(timezone.utc)))
        start = end - args.days * DAY_US
        began = time.perf_counter()
        report = Downloader(store, info["http_url"], workers=args.workers, progress=False).download(
            "deribit", SYMBOLS, TYPES, start, end)
        print("setup: downloaded %s .. %s, %d messages in %.1fs (%d requests)" % (
            iso(start), iso(end), report.messages, time.perf_counter() - began, report.requests))
        timings = []
        for _ in range(3):
            began = time.perf_counter()
            frames = series(store, "deribit", SYMBOLS, TYPES, start, end)
            timings.append(time.perf_counter() - began)
        minutes = sum(len(f) for f in frames.values())
        missing = sum(int(f["missing"].sum()) for f in frames.values())
        print("read %d days x %d symbols x %d data types back into minute DataFrames (%d rows, %d missing): "
              "best %.3fs, worst %.3fs" % (args.days, len(SYMBOLS), len(TYPES), minutes, missing, min(timings),
                                          max(timings)))
        for export in (None, os.path.join(directory, "series.csv")):
            began = time.perf_counter()
            result = rebuild(store, [("deribit", SYMBOLS, TYPES)], start, end, export=export)
            print("rebuild of the combined series (stitch + compare + publish%s): %.3fs" % (
                " + CSV export" if export else "", time.perf_counter() - began))
            del result
        store.close()
    finally:
        double.terminate()
        double.wait(10)


if __name__ == "__main__":
    main()
