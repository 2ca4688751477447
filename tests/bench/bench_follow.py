"""Benchmark: how soon a follower in another process gets each new live minute, what an idle follower costs,
and what the publish sequence adds to a publishing pass.

Run by hand (not collected by pytest):

    .venv/bin/python tests/bench/bench_follow.py [--minutes 8] [--symbols BTC-PERPETUAL,ETH-PERPETUAL]
        [--idle-seconds 30] [--skip-latency] [--skip-idle] [--skip-tick]

* ``latency``: the double (its own process, real-time clock, history 15 min behind so every new minute is
  live), ``python run.py serve`` (SQLite, default 60 s rebuild interval) recording ``quote_1m``,
  ``trade_bar_1m`` and ``trade`` of the symbols, and ``python run.py follow`` in a third process. For every
  new live minute (revision 0): the time from the minute's end to the line's arrival at the follower.
  Median, p99 and max per data type.
* ``idle``: the CPU of a ``follow`` process of 60 streams with nothing published, over ``--idle-seconds``,
  on SQLite (a read of the sequence every 0.5 s) and PostgreSQL (LISTEN), against a sleeping Python process
  measured in the same run.
* ``tick``: full publishing passes (every minute of the window recomputed and compared with what was
  published: the stamping's worst case), then ticks (the last two minutes of every stream marked changed), on a
  copy of the latency run's database, with the publish sequence and with it replaced by one that numbers every
  row without reading or comparing anything. Alternating, 7 each; medians.
"""
import argparse
import calendar
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PG_URL, ROOT, fresh_database, start_double  # noqa: E402

import orjson  # noqa: E402
import psutil  # noqa: E402

TYPES = ["quote_1m", "trade_bar_1m", "trade"]


def env_for(database_url, symbols, urls, lookback="20m"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPLESS_")}
    env.update(GAPLESS_DATABASE_URL=database_url, GAPLESS_EXCHANGE="deribit", GAPLESS_SYMBOLS=",".join(symbols),
               GAPLESS_DATA_TYPES=",".join(TYPES), GAPLESS_TARDIS_URL=urls["http_url"],
               GAPLESS_TARDIS_WS_URL=urls["ws_url"], GAPLESS_LOOKBACK=lookback, GAPLESS_HISTORY_DELAY="15m",
               GAPLESS_REBUILD_INTERVAL="60s", PYTHONPATH=ROOT)
    return env


def latency(args, folder):
    double, urls = start_double("--availability-delay", "900")
    database_url = "sqlite:///%s" % os.path.join(folder, "follow.db")
    env = env_for(database_url, args.symbols, urls)
    service = subprocess.Popen([sys.executable, "run.py", "serve"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=open(os.path.join(folder, "service.log"), "w"))
    started = time.time()
    try:
        while not os.path.exists(os.path.join(folder, "follow.db")):
            time.sleep(0.1)
        time.sleep(2)  # the schema
        since = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(started))
        follower = subprocess.Popen([sys.executable, "run.py", "follow", "--since", since], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        samples = {t: [] for t in TYPES}
        first_whole = (int(started) // 60 + 1) * 60  # the first minute the recording saw whole
        deadline = started + args.minutes * 60 + 20
        stop = threading.Timer(deadline - time.time(), follower.terminate)
        stop.start()
        for raw in follower.stdout:
            received = time.time()
            line = orjson.loads(raw)
            if line.get("source") != "live" or line.get("revision") != 0:
                continue
            minute = calendar.timegm(time.strptime(line["minute"], "%Y-%m-%dT%H:%M:%SZ"))
            if minute >= first_whole:
                samples[line["data_type"]].append(received - (minute + 60))
        stop.cancel()
        follower.wait(10)
    finally:
        service.terminate()
        service.wait(30)
        double.terminate()
        double.wait(10)
    print("latency from a minute's end to the follower (another process, SQLite, %s, %d min):"
          % (",".join(args.symbols), args.minutes))
    for name, values in samples.items():
        if not values:
            print("  %-13s no samples" % name)
            continue
        values.sort()
        p99 = values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]
        print("  %-13s n=%3d  median %5.2f s  p99 %5.2f s  max %5.2f s  min %5.2f s" % (
            name, len(values), statistics.median(values), p99, values[-1], values[0]))
    return database_url


def cpu_of(command, seconds, env):
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        handle = psutil.Process(process.pid)
        time.sleep(3)  # imports and the first reads
        before = handle.cpu_times()
        time.sleep(seconds)
        after = handle.cpu_times()
        return 100.0 * ((after.user + after.system) - (before.user + before.system)) / seconds
    finally:
        process.terminate()
        process.wait(10)


def idle(args):
    streams = "deribit:%s:%s" % (",".join("S%02d-PERPETUAL" % i for i in range(20)), ",".join(TYPES))  # 60
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPLESS_")}
    env["PYTHONPATH"] = ROOT
    baseline = cpu_of([sys.executable, "-c", "import time; time.sleep(600)"], args.idle_seconds, env)
    print("idle follower of 60 streams, CPU over %d s (%% of one core):" % args.idle_seconds)
    print("  sleeping python (baseline)  %.3f %%" % baseline)
    from gapless.storage import Storage
    for kind in ("sqlite", "postgresql"):
        url = fresh_database(kind, "follow_idle", PG_URL)
        Storage(url).close()  # the schema, nothing published
        command = [sys.executable, "run.py", "follow", "--database", url, "--streams", streams, "--since",
                   "2026-01-01"]
        print("  %-27s %.3f %%" % ("follow on " + kind, cpu_of(command, args.idle_seconds, env)))


def tick(database_url, folder, repeats=7):
    import gapless.publish as publish
    from gapless.publish import rebuild
    from gapless.sequence import PublishSequence
    from gapless.storage import Storage
    from gapless.timeutil import floor_minute

    class Numbering(PublishSequence):
        """Numbers every row, reads and compares nothing: the pass as it was before the sequence."""

        def old_rows(self, key, lo, hi):
            return {}

        def stamp(self, rows, old):
            return [row + (0, 0) for row in rows], 0

        def finish(self):
            pass

    copy = os.path.join(folder, "tick.db")
    shutil.copy(database_url[len("sqlite:///"):], copy)
    store = Storage("sqlite:///%s" % copy)
    streams = [tuple(r) for r in store.db.execute_sql(
        'SELECT "exchange", "symbol", "data_type" FROM "stream_status"').fetchall()]
    end = floor_minute(int(time.time() * 1e6))
    start = end - 20 * 60 * 1_000_000
    dirty = store.models["dirty_series"]
    for full in (True, False):
        times = {"sequence": [], "numbering only": []}
        for i in range(repeats * 2):
            label = "sequence" if i % 2 == 0 else "numbering only"
            publish.PublishSequence = PublishSequence if label == "sequence" else Numbering
            if not full:  # a tick: the last two minutes of every stream changed (what a new live minute does)
                dirty.insert_many([dict(exchange=e, symbol=s, data_type=d, lo=end - 2 * 60 * 1_000_000, hi=end)
                                   for e, s, d in streams]).execute()
            report = rebuild(store, streams, start, end, full=full)
            times[label].append(report.seconds)
        publish.PublishSequence = PublishSequence
        with_sequence, without = statistics.median(times["sequence"]), statistics.median(times["numbering only"])
        print("%s, %d streams x 20 min (median of %d):" % (
            "full publishing pass" if full else "tick, two minutes of every stream changed", len(streams), repeats))
        print("  numbering only (baseline)   %.4f s" % without)
        print("  publish sequence            %.4f s  (%.2fx)" % (with_sequence, with_sequence / without))
    store.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=8)
    parser.add_argument("--symbols", default="BTC-PERPETUAL,ETH-PERPETUAL")
    parser.add_argument("--idle-seconds", type=int, default=30)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-idle", action="store_true")
    parser.add_argument("--skip-tick", action="store_true")
    args = parser.parse_args()
    args.symbols = args.symbols.split(",")
    folder = tempfile.mkdtemp(prefix="gapless-bench-follow-")
    database_url = None
    if not args.skip_latency:
        database_url = latency(args, folder)
    if not args.skip_idle:
        idle(args)
    if not args.skip_tick and database_url:
        tick(database_url, folder)
    print("(files in %s)" % folder)


if __name__ == "__main__":
    main()
