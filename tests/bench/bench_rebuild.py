"""Benchmark: the incremental publishing pass against a full recompute, memory against the lookback.

Run by hand (not collected by pytest):

    .venv/bin/python tests/bench/bench_rebuild.py [--days 7] [--long-days 30] [--cache DIR] [--skip-long]
        [--skip-multi]

Setup (cached in ``--cache``, default ``/tmp/gapless-bench-rebuild``): ``--days`` of BTC-PERPETUAL and
ETH-PERPETUAL raw ``quote`` and ``trade`` downloaded from the fake tardis-machine (its own process, default
rates) into SQLite, with one hour left out (to be healed) and the last 30 minutes stored as live data.

Each measured step runs in a child process of its own (its peak RSS is its own), in this order, on the same
database, all in the same run:

* ``full``: the full recompute from the raw rows (minute store rebuilt, every minute published): the
  baseline, what every tick cost before the minute store;
* ``nothing``: a tick with nothing changed;
* ``live_minute``: a tick after one new live minute (rows of every stream, the window one minute later);
* ``healed_hour`` / ``healed_6h``: a tick after the missing hour (then six more hours) were downloaded;
* the same ``full`` and ``nothing`` on ``--long-days`` (peak RSS must be flat in the lookback);
* ``multi``: 2 exchanges x 10 symbols x (quote_1m, trade_bar_1m, trade), ``--days``: a full pass, then a
  tick with one new minute of live data;
* ``service`` (``--service-minutes``, default 5): ``python run.py`` keeping the raw ``--days`` lookback of the
  first case gapless (the week downloaded already), the double (in this process) on a clock that continues
  where the cached database ends; once it has caught up, the CPU time of its whole process tree over the
  minutes measured, its peak RSS, and the replay lines downloaded per pass against the rows they added.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, hwm_mb as _hwm_mb, start_double, watch_tree  # noqa: E402

from gapless.timeutil import DAY_US, MINUTE_US, iso, parse_timestamp_us  # noqa: E402

HOUR_US = 60 * MINUTE_US

SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
TYPES = ["quote", "trade"]
MULTI_SYMBOLS = ["S%02d-PERPETUAL" % i for i in range(10)]
MULTI_TYPES = ["quote_1m", "trade_bar_1m", "trade"]
MULTI_EXCHANGES = ["deribit", "binance-futures"]
LIVE_MINUTES = 30


# -- the child: one measured step ----------------------------------------------------------------------
def peak_rss_mb():
    """This process's own peak RSS. Linux keeps ``ru_maxrss`` across fork and exec (a child started by a
    large parent reports the parent's peak), so the high-water mark of this process's own memory map
    (VmHWM) is read instead where /proc has it."""
    try:
        return _hwm_mb(os.getpid())
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args):
    """Run one step on the database and print ``{"seconds", "rss_mb", "missing", ...}`` as JSON."""
    from gapless.minutes import MinuteStore
    from gapless.publish import rebuild
    from gapless.storage import Storage
    plan = json.loads(args.child)
    store = Storage(plan["database"])
    streams = [tuple(s) for s in plan["streams"]]
    if plan["step"] == "full":
        # forget every aggregate and every published minute; the raw rows of every source with coverage are all
        # dirty again (a mark of a source without any waits for its first claim, which then recomputed the whole
        # window: the first live tick after this step measured that, not a tick)
        covered = {tuple(r) for r in store.db.execute_sql(
            'SELECT DISTINCT "exchange", "symbol", "data_type", "source" FROM "coverage"').fetchall()}
        with store.write_transaction():
            for table in ("minute_agg", "dirty_series", "minute_series", "minute_compare", "stream_status"):
                store.models[table].delete().execute()
            store.models["dirty_rows"].delete().execute()
            dirty = store.models["dirty_rows"]
            marks = [dict(exchange=e, symbol=s, data_type=d, source=source, lo=plan["start"] - DAY_US,
                          hi=plan["end"] + DAY_US) for e, s, d in streams for source in ("replay", "live")
                     if (e, s, d, source) in covered]
            for i in range(0, len(marks), 100):
                dirty.insert_many(marks[i:i + 100]).execute()
    if plan["step"] == "write_live":  # its own process: the fetching is not the tick's memory
        write_live_minute(store, plan)
        store.close()
        print(json.dumps({}))
        return
    store.count_rows("coverage")  # the database is open and read: what follows is the step's own memory
    rss_start = peak_rss_mb()
    began = time.perf_counter()
    report = rebuild(store, streams, plan["start"], plan["end"], full=plan["step"] == "full")
    seconds = time.perf_counter() - began
    pending = MinuteStore(store).pending(streams)
    store.close()
    print(json.dumps({"seconds": seconds, "rss_mb": peak_rss_mb(),
                      "rss_start_mb": rss_start,
                      "by_stream": {" ".join(k): r.published for k, r in report.streams.items()},
                      "missing": report.missing, "published": sum(r.published for r in report.streams.values()),
                      "errors": sum(1 for r in report.streams.values() if r.error), "pending": len(pending)}))


def write_live_minute(store, plan, lo=None):
    """Live rows of ``[lo, end)`` (default: the last minute) for every stream, as the recorder would have stored
    them, and the open live segment's claim from ``live_from`` to ``end``.

    The rows come from the double's replay from 00:00 (a book exists only after the day's snapshot), cut to
    the range by local time.
    """
    import requests

    from gapless.convert import Converter
    from gapless.storage import Claim
    from gapless.timeutil import floor_day, parse_timestamp_us
    converter = Converter("live")
    lo = plan["end"] - MINUTE_US if lo is None else lo
    rows, claims = {}, []
    for exchange in sorted({e for e, _, _ in plan["streams"]}):
        mine = [s for s in plan["streams"] if s[0] == exchange]
        options = {"exchange": exchange, "symbols": sorted({s for _, s, _ in mine}),
                   "dataTypes": sorted({d for _, _, d in mine}), "from": iso(floor_day(lo)), "to": iso(plan["end"])}
        response = requests.get(plan["http_url"] + "/replay-normalized", params={"options": json.dumps(options)},
                                timeout=600)
        for line in response.text.splitlines():
            message = json.loads(line)
            if message.get("type") in ("disconnect", "error"):
                continue
            if not lo <= parse_timestamp_us(message["localTimestamp"]) < plan["end"]:
                continue
            table, row = converter.convert(message)
            rows.setdefault(table, []).append(row)
    for exchange, symbol, data_type in plan["streams"]:
        claims.append(Claim(exchange, symbol, data_type, "live", "bench-live-%s" % symbol,
                            plan["live_from"], plan["end"], is_open=True))
    store.write(rows, claims)


# -- the parent: setup and the run ---------------------------------------------------------------------
def step(name, database, streams, start, end, **extra):
    plan = dict(extra, step=name, database=database, streams=streams, start=start, end=end)
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(plan)], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit("step %s failed:\n%s" % (name, result.stderr[-3000:]))
    return json.loads(result.stdout.strip().splitlines()[-1])


def download(database, http_url, exchange, symbols, types, ranges):
    from gapless.download import Downloader
    from gapless.storage import Storage
    store = Storage(database)
    messages = 0
    try:
        for lo, hi in ranges:
            report = Downloader(store, http_url, workers=2, progress=False).download(exchange, symbols, types, lo, hi)
            assert report.complete, report.failed
            messages += report.messages
    finally:
        store.close()
    return messages


def live_tail(database, http_url, streams, live_from, end):
    """Store ``[live_from, end)`` as an open live segment (the recorder's part of the window)."""
    from gapless.storage import Storage
    store = Storage(database)
    try:
        write_live_minute(store, {"streams": streams, "http_url": http_url, "live_from": live_from,
                                  "end": end - MINUTE_US}, lo=live_from)
    finally:
        store.close()


def prepare(cache, name, http_url, groups, days, end, hole=None):
    """A cached SQLite database with ``days`` of history up to ``end`` (minus ``hole``) and a live tail."""
    path = os.path.join(cache, "%s.db" % name)
    database = "sqlite:///%s" % path
    streams = [(e, s, d) for e, symbols, types in groups for s in symbols for d in types]
    start = end - days * DAY_US
    live_from = end - LIVE_MINUTES * MINUTE_US
    if not os.path.exists(path + ".done"):
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        began = time.perf_counter()
        messages = 0
        for exchange, symbols, types in groups:
            ranges = [(start, hole[0]), (hole[1], live_from)] if hole else [(start, live_from)]
            messages += download(database, http_url, exchange, symbols, types, ranges)
        live_tail(database, http_url, streams, live_from, end)
        for suffix in ("-wal", "-shm"):  # nothing may be left in the WAL of a cached file
            assert not os.path.exists(path + suffix), path + suffix
        open(path + ".done", "w").write("%d messages in %.0fs\n" % (messages, time.perf_counter() - began))
    print("setup %s: %s .. %s, %s" % (name, iso(start), iso(end), open(path + ".done").read().strip()))
    return database, streams, start, live_from


def copy_database(database, name):
    path = database[len("sqlite:///"):]
    target = os.path.join(os.path.dirname(path), name + ".db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            shutil.copyfile(path + suffix, target + suffix)
    return "sqlite:///%s" % target


def line(label, result, baseline=None):
    ratio = " (%.4f of the full recompute)" % (result["seconds"] / baseline["seconds"]) if baseline else ""
    print("  %-30s %8.3f s%s, peak RSS %4.0f MB (%4.0f MB before the pass), %d minute(s) published, %d missing" % (
        label, result["seconds"], ratio, result["rss_mb"], result["rss_start_mb"], result["published"],
        result["missing"]))
    if os.environ.get("BENCH_VERBOSE"):
        print("    published per stream: %s" % result["by_stream"])


def raw_case(args, http_url, days, end, label, ticks=True):
    hole = (end - 2 * DAY_US + 12 * HOUR_US, end - 2 * DAY_US + 19 * HOUR_US)
    source, streams, start, live_from = prepare(args.cache, "raw_%dd" % days, http_url,
                                                [("deribit", SYMBOLS, TYPES)], days, end, hole)
    database = copy_database(source, "work_%dd" % days)  # the cached one stays as downloaded
    window_end = end - MINUTE_US  # one minute is kept back: the "new live minute" arrives later
    common = dict(http_url=http_url, live_from=live_from)
    print("%s: %d days x %d symbols x raw %s" % (label, days, len(SYMBOLS), "+".join(TYPES)))
    full = step("full", database, streams, start, window_end, **common)
    line("full recompute (baseline)", full)
    nothing = step("tick", database, streams, start, window_end, **common)
    line("tick, nothing changed", nothing, full)
    if not ticks:
        return full, nothing
    step("write_live", database, streams, start + MINUTE_US, end, **common)
    live = step("tick", database, streams, start + MINUTE_US, end, **common)
    line("tick, one new live minute", live, full)
    download(database, http_url, "deribit", SYMBOLS, TYPES, [(hole[0], hole[0] + HOUR_US)])
    healed = step("tick", database, streams, start + MINUTE_US, end, **common)
    line("tick, one healed hour", healed, full)
    download(database, http_url, "deribit", SYMBOLS, TYPES, [(hole[0] + HOUR_US, hole[1])])
    healed6 = step("tick", database, streams, start + MINUTE_US, end, **common)
    line("tick, six healed hours", healed6, full)
    print("  healed six hours / one hour: %.1fx the time" % (healed6["seconds"] / healed["seconds"]))
    return full, nothing


def multi_case(args, http_url, end):
    groups = [(e, MULTI_SYMBOLS, MULTI_TYPES) for e in MULTI_EXCHANGES]
    source, streams, start, live_from = prepare(args.cache, "multi_%dd" % args.days, http_url, groups, args.days, end)
    database = copy_database(source, "work_multi")
    common = dict(http_url=http_url, live_from=live_from)
    print("multi: %d exchanges x %d symbols x %s, %d days (%d streams)" % (
        len(MULTI_EXCHANGES), len(MULTI_SYMBOLS), "+".join(MULTI_TYPES), args.days, len(streams)))
    full = step("full", database, streams, start, end - MINUTE_US, **common)
    line("full recompute (baseline)", full)
    line("tick, nothing changed", step("tick", database, streams, start, end - MINUTE_US, **common), full)
    step("write_live", database, streams, start + MINUTE_US, end, **common)
    line("tick, one new live minute", step("tick", database, streams, start + MINUTE_US, end, **common), full)


def service_case(args, end):
    """The service in steady state on the raw week: CPU, peak RSS, lines downloaded per pass."""
    import requests
    from datetime import datetime, timedelta, timezone

    from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig
    source = os.path.join(args.cache, "raw_%dd.db" % args.days)
    database = copy_database("sqlite:///" + source, "work_service")
    directory = os.path.dirname(source)
    clock = FakeClock(start=datetime.fromtimestamp(end / 1e6, timezone.utc) + timedelta(seconds=30))
    with FakeTardisMachine(clock=clock, market=MarketConfig(), availability_delay=timedelta(seconds=60),
                           default_symbols=SYMBOLS) as tardis:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAPLESS_")}
        env.update({"GAPLESS_TARDIS_URL": tardis.http_url, "GAPLESS_TARDIS_WS_URL": tardis.ws_url,
                    "GAPLESS_DATABASE_URL": database, "GAPLESS_SYMBOLS": ",".join(SYMBOLS),
                    "GAPLESS_DATA_TYPES": ",".join(TYPES), "GAPLESS_LOOKBACK": "%dd" % args.days,
                    "GAPLESS_HISTORY_DELAY": "2m", "GAPLESS_METRICS_ADDR": "127.0.0.1:19108",
                    "GAPLESS_TEST_CLOCK": "%f,%f,1" % (clock.now_us() / 1e6, time.time())})
        log_path = os.path.join(directory, "service.log")
        service = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py")], env=env, cwd=directory,
                                   stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
        try:
            def status():
                result = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "status", "--json"], env=env,
                                        cwd=directory, capture_output=True, text=True)
                return json.loads(result.stdout) if result.returncode == 0 else None
            began = time.monotonic()
            while True:  # caught up: every stream gapless (the downtime before the start healed)
                report = status()
                if report and all(s["gapless"] for s in report["streams"]):
                    break
                if service.poll() is not None or time.monotonic() - began > 900:
                    sys.exit("the service did not catch up; see %s" % log_path)
                time.sleep(5)
            print("service: caught up %.0f s after its start" % (time.monotonic() - began))

            def replay_rows():
                text = requests.get("http://127.0.0.1:19108/metrics", timeout=10).text
                return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("gapless_rows_stored_total{") and 'source="replay"' in line)
            requests0, rows0 = len(tardis.requests), replay_rows()
            passes0 = open(log_path).read().count("rebuilt ")
            cpu, wall, peak, hwm = watch_tree(service.pid, args.service_minutes * 60)
            made = tardis.requests[requests0:]
            rows = replay_rows() - rows0
            passes = open(log_path).read().count("rebuilt ") - passes0
        finally:
            service.terminate()
            service.wait(30)
    lines = sum(r.lines_sent for r in made)
    print("service, %d days of raw %s x %d symbols, steady state over %.0f s:" % (args.days, "+".join(TYPES),
                                                                               len(SYMBOLS), wall))
    print("  CPU %.2f %% of one core (process tree); peak RSS %.0f MB (sampled), VmHWM %.0f MB" % (
        100 * cpu / wall, peak, hwm))
    print("  %d publishing pass(es), %d replay request(s), %d lines downloaded (%.0f per pass) adding %d rows "
          "(%.0f per pass)" % (passes, len(made), lines, lines / max(1, passes), rows, rows / max(1, passes)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--long-days", type=int, default=30)
    parser.add_argument("--cache", default="/tmp/gapless-bench-rebuild")
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--skip-multi", action="store_true")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--service-minutes", type=float, default=5.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    os.makedirs(args.cache, exist_ok=True)
    # a fixed end (midnight of a fixed day) keeps the cached databases valid between runs
    end = parse_timestamp_us("2026-11-20T12:00:00Z")
    double, info = start_double("--symbols", ",".join(SYMBOLS))
    try:
        full, nothing = raw_case(args, info["http_url"], args.days, end, "raw")
        if not args.skip_long:
            long_full, long_nothing = raw_case(args, info["http_url"], args.long_days, end, "raw, long", ticks=False)
            print("peak RSS %d days / %d days: full %.2f, tick %.2f" % (
                args.long_days, args.days, long_full["rss_mb"] / full["rss_mb"],
                long_nothing["rss_mb"] / nothing["rss_mb"]))
        if not args.skip_multi:
            multi_case(args, info["http_url"], end)
    finally:
        double.terminate()
        double.wait(10)
    if not args.skip_service:
        service_case(args, end)


if __name__ == "__main__":
    main()
