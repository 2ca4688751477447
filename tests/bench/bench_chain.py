"""Benchmark (issue 19): a service over an option chain and the perpetuals, 508 streams.

Run by hand (not collected by pytest):

    .venv/bin/python tests/bench/bench_chain.py [--options 500] [--hours 24] [--cache DIR] [--skip-service]
        [--service-minutes 5] [--skip-ticks] [--baseline OTHER_CHECKOUT]

Streams: ``--options`` Deribit options x ``option_summary`` (five expiries, strikes around the money, calls and
puts) plus BTC-PERPETUAL and ETH-PERPETUAL x (``quote_1m``, ``trade_bar_1m``, ``liquidation``, ``book_ticker``),
as one ``GAPLESS_STREAMS`` with two groups of the exchange.

* ``download``: the first ``--hours`` downloaded into SQLite with the planner's requests (replay requests
  group the symbols of one range, at most 100 a request), against the double's ceiling: the same requests read
  and discarded by as many concurrent readers as the download used (cached in ``--cache``);
* ``full`` / ``tick, nothing changed`` / ``tick, one new live minute``: publishing passes over the window, each in
  a process of its own (bench_rebuild's child), the last after one minute of live rows of every stream;
* ``service`` (``--service-minutes``): ``python run.py`` over the same streams and window, the double in this
  process on a clock that continues where the database ends; once caught up, its process tree's CPU and peak
  RSS, and the replay requests and lines per pass.

Targets (issue 19): a tick after one new live minute <= 1 s, with nothing changed <= 0.2 s; the service <= 5 % of
one core and <= 400 MB; the first download within 1.1x the double's concurrent ceiling.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, start_double, watch_tree  # noqa: E402
import bench_rebuild  # noqa: E402

from gapless.timeutil import MINUTE_US, iso, parse_timestamp_us  # noqa: E402

HOUR = 60 * MINUTE_US
PERPS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
PERP_TYPES = ["quote_1m", "trade_bar_1m", "liquidation", "book_ticker"]
EXPIRIES = ["27NOV26", "4DEC26", "25DEC26", "29JAN27", "27MAR27"]
END = parse_timestamp_us("2026-11-20T12:00:00Z")  # fixed: the cached database stays valid between runs
CONCURRENCY = 8


def chain(n):
    """``n`` option symbols: expiries x strikes around 85000 x calls and puts."""
    symbols = []
    per_expiry = max(1, -(-n // (2 * len(EXPIRIES))))
    for expiry in EXPIRIES:
        for k in range(per_expiry):
            strike = 85000 + 1000 * (k - per_expiry // 2)
            symbols += ["BTC-%s-%d-C" % (expiry, strike), "BTC-%s-%d-P" % (expiry, strike)]
    return symbols[:n]


def groups_of(options):
    return [("deribit", PERPS, PERP_TYPES), ("deribit", options, ["option_summary"])]


def streams_text(options):
    return ";".join("%s:%s:%s" % (e, ",".join(s), ",".join(t)) for e, s, t in groups_of(options))


def download(database, http_url, options, start, end):
    """The first download: the planner's requests (returned, to replay them against the ceiling)."""
    from gapless.download import Downloader
    from gapless.storage import Storage
    store = Storage(database)
    try:
        began = time.perf_counter()
        lines = 0
        for exchange, symbols, types in groups_of(options):
            downloader = Downloader(store, http_url, workers=2, concurrency=CONCURRENCY, progress=False)
            report = downloader.download(exchange, symbols, types, start, end)
            assert report.complete, report.failed
            lines += report.lines
        seconds = time.perf_counter() - began
    finally:
        store.close()
    return seconds, lines


def ceiling(http_url, options, start, end):
    """The double's concurrent ceiling: the same plan's requests read and discarded by CONCURRENCY readers."""
    import requests

    from gapless.plan import plan_requests
    from gapless.replay import replay_options
    from gapless.storage import Storage
    import tempfile
    store = Storage("sqlite:///%s" % os.path.join(tempfile.mkdtemp(), "empty.db"))
    try:
        plan = [r for e, s, t in groups_of(options) for r in plan_requests(store, e, s, t, start, end)]
    finally:
        store.close()
    queue, lock, total = list(plan), threading.Lock(), [0]

    def reader():
        session = requests.Session()
        while True:
            with lock:
                if not queue:
                    return
                request = queue.pop()
            params = {"options": json.dumps(replay_options(request.exchange, request.symbols, request.data_types,
                                                           request.start, request.request_end))}
            with session.get(http_url + "/replay-normalized", params=params, stream=True, timeout=600) as answer:
                n = sum(chunk.count(b"\n") for chunk in answer.iter_content(1 << 20))
            with lock:
                total[0] += n

    began = time.perf_counter()
    threads = [threading.Thread(target=reader) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, total[0], len(plan)


def write_live_minute(database, http_url, options, lo, hi):
    """Live rows of the minutes ``[lo, hi)`` (exchange time) for every stream, with open live claims over them."""
    import requests

    from gapless.convert import Converter
    from gapless.storage import Claim, Storage
    from gapless.timeutil import floor_day
    converter = Converter("live")
    rows = {}
    for exchange, symbols, types in groups_of(options):
        books = [t for t in types if t.startswith("quote")]
        for asked, since in ((books, floor_day(lo)), ([t for t in types if t not in books], lo - MINUTE_US)):
            if not asked:
                continue
            body = {"exchange": exchange, "symbols": symbols, "dataTypes": asked + (["trade"] if "liquidation" in asked
                                                                                   else []),
                    "from": iso(since), "to": iso(hi)}
            text = requests.get(http_url + "/replay-normalized", params={"options": json.dumps(body)}, timeout=600).text
            for line in text.splitlines():
                message = json.loads(line)
                if message.get("type") in ("disconnect", "error", "trade"):
                    continue
                # the minute's own messages by exchange time (a sample is stamped at its interval's end): the claim
                # says the minute is whole, so all of them, and none of the next
                stamp = parse_timestamp_us(message["timestamp"])
                sampled = message.get("type") == "trade_bar" or message.get("interval")
                if not (lo < stamp <= hi if sampled else lo <= stamp < hi):
                    continue
                table, row = converter.convert(message)
                rows.setdefault(table, []).append(row)
    claims = [Claim(e, s, d, "live", "bench-live-%s-%s" % (s, d), lo, hi, is_open=True)
              for e, symbols, types in groups_of(options) for s in symbols for d in types]
    store = Storage(database)
    try:
        store.write(rows, claims)
    finally:
        store.close()
    return sum(len(r) for r in rows.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--options", type=int, default=500)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--cache", default="/tmp/gapless-bench-chain")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--service-minutes", type=float, default=5.0)
    parser.add_argument("--skip-ticks", action="store_true", help="straight to the service (the database cached)")
    parser.add_argument("--baseline", help="another checkout: its service is measured first, in the same run")
    args = parser.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    options = chain(args.options)
    streams = [(e, s, d) for e, symbols, types in groups_of(options) for s in symbols for d in types]
    start, live_end = END - args.hours * HOUR, END - MINUTE_US
    name = "chain_%d_%dh" % (args.options, args.hours)
    path = os.path.join(args.cache, name + ".db")
    double, info = start_double("--symbols", ",".join(PERPS))
    try:
        if not os.path.exists(path + ".done"):
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.unlink(path + suffix)
            seconds, lines = download("sqlite:///" + path, info["http_url"], options, start, live_end - MINUTE_US)
            roof, roof_lines, requests_made = ceiling(info["http_url"], options, start, live_end - MINUTE_US)
            with open(path + ".done", "w") as done:
                done.write("download %.1f s, %d lines (%.0f lines/s); the double's ceiling %.1f s for %d lines in %d "
                           "requests, %d readers: %.2fx\n" % (seconds, lines, lines / seconds, roof, roof_lines,
                                                               requests_made, CONCURRENCY, seconds / roof))
        print("%d streams (%d options x option_summary + %d perpetual streams), %d h: %s" % (
            len(streams), len(options), len(PERPS) * len(PERP_TYPES), args.hours, open(path + ".done").read().strip()))
        database = bench_rebuild.copy_database("sqlite:///" + path, "work_" + name)
        if args.skip_ticks:
            raise _SkipTicks()
        common = dict(http_url=info["http_url"], live_from=live_end - 30 * MINUTE_US)
        full = bench_rebuild.step("full", database, streams, start, live_end - MINUTE_US, **common)
        bench_rebuild.line("full publishing pass (baseline)", full)
        nothing = bench_rebuild.step("tick", database, streams, start, live_end - MINUTE_US, **common)
        bench_rebuild.line("tick, nothing changed", nothing, full)
        rows = write_live_minute(database, info["http_url"], options, live_end - MINUTE_US, live_end)
        live = bench_rebuild.step("tick", database, streams, start + MINUTE_US, live_end, **common)
        bench_rebuild.line("tick, one new live minute (%d rows)" % rows, live, full)
    except _SkipTicks:
        pass
    finally:
        double.terminate()
        double.wait(10)
    if args.baseline:
        print("baseline (%s):" % args.baseline)
        service(args, options, bench_rebuild.copy_database("sqlite:///" + path, "base_" + name), start,
                root=args.baseline)
        print("this code:")
    if not args.skip_service:
        service(args, options, database, start)


class _SkipTicks(Exception):
    """--skip-ticks: no publishing steps."""


def service(args, options, database, start, root=ROOT):
    """``python run.py`` (of ``root``) over the chain in steady state: CPU, RSS, requests and lines per pass."""
    from datetime import datetime, timedelta, timezone

    from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig
    directory = os.path.dirname(database[len("sqlite:///"):])
    clock = FakeClock(start=datetime.fromtimestamp(END / 1e6, timezone.utc) + timedelta(seconds=30))
    with FakeTardisMachine(clock=clock, market=MarketConfig(), availability_delay=timedelta(seconds=60),
                           default_symbols=PERPS) as tardis:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAPLESS_")}
        env.update({"GAPLESS_TARDIS_URL": tardis.http_url, "GAPLESS_TARDIS_WS_URL": tardis.ws_url,
                    "GAPLESS_DATABASE_URL": database, "GAPLESS_STREAMS": streams_text(options),
                    "GAPLESS_LOOKBACK": "%dh" % args.hours, "GAPLESS_HISTORY_DELAY": "2m",
                    "GAPLESS_TEST_CLOCK": "%f,%f,1" % (clock.now_us() / 1e6, time.time())})
        log_path = os.path.join(directory, "chain-service.log")
        process = subprocess.Popen([sys.executable, os.path.join(root, "run.py")], env=env, cwd=directory,
                                   stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
        try:
            began = time.monotonic()
            while "gapless" not in open(log_path).read().split("rebuilt")[-1] or time.monotonic() - began < 90:
                if process.poll() is not None or time.monotonic() - began > 1800:
                    sys.exit("the service did not catch up; see %s" % log_path)
                time.sleep(5)
            print("service: caught up %.0f s after its start" % (time.monotonic() - began))
            requests0, passes0 = len(tardis.requests), open(log_path).read().count("rebuilt ")
            cpu, wall, peak, hwm = watch_tree(process.pid, args.service_minutes * 60)
            made = tardis.requests[requests0:]
            passes = open(log_path).read().count("rebuilt ") - passes0
        finally:
            process.terminate()
            process.wait(30)
    lines = sum(r.lines_sent for r in made)
    print("service over %d streams, steady state over %.0f s:" % (len(options) + len(PERPS) * len(PERP_TYPES), wall))
    print("  CPU %.2f %% of one core (process tree); peak RSS %.0f MB (sampled), VmHWM %.0f MB" % (
        100 * cpu / wall, peak, hwm))
    print("  %d publishing pass(es), %d replay request(s), %d lines downloaded (%.0f per pass)" % (
        passes, len(made), lines, lines / max(1, passes)))


if __name__ == "__main__":
    main()
