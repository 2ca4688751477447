"""Benchmark: cold start to the first gapless series, and what a warm restart downloads.

Run by hand (not collected by pytest):

    .venv/bin/python tests/bench/bench_service.py [--speed 10] [--lookback 6h] [--downtime-minutes 10]

The fake tardis-machine runs in this process on a clock ``--speed`` times faster than real time, with
an availability delay of 60 s (market time); the service (``python run.py``, a subprocess) uses
GAPLESS_HISTORY_DELAY=60s. Printed:
  * cold start: market and wall time until ``status`` says every stream is gapless, and why it waits
    (history must reach the minute the recording started); replay requests and bytes it downloaded;
  * warm restart after ``--downtime-minutes`` of downtime: the same figures, as a ratio to the cold start.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT  # noqa: E402

from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig  # noqa: E402

SYMBOLS = "BTC-PERPETUAL,ETH-PERPETUAL"
TYPES = "quote_1m,trade_bar_1m"


def env_for(tardis, database_url, lookback):
    clock = tardis.clock
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPLESS_")}
    env.update({"GAPLESS_TARDIS_URL": tardis.http_url, "GAPLESS_TARDIS_WS_URL": tardis.ws_url,
                "GAPLESS_DATABASE_URL": database_url, "GAPLESS_SYMBOLS": SYMBOLS, "GAPLESS_DATA_TYPES": TYPES,
                "GAPLESS_LOOKBACK": lookback, "GAPLESS_HISTORY_DELAY": "60s", "GAPLESS_REBUILD_INTERVAL": "2s",
                "GAPLESS_WORKERS": "1",
                "GAPLESS_TEST_CLOCK": "%f,%f,%f" % (clock.now_us() / 1e6, time.time(), clock.speed)})
    return env


def gapless_now(env, cwd):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "status", "--json"], env=env, cwd=cwd,
                            capture_output=True, text=True)
    if result.returncode != 0:
        return False
    return all(stream["gapless"] for stream in json.loads(result.stdout)["streams"])


def run_until_gapless(tardis, env, cwd, label):
    first_request = len(tardis.requests)
    market0, wall0 = tardis.clock.now_us(), time.monotonic()
    service = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py")], env=env, cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not gapless_now(env, cwd):
            time.sleep(0.5)
        market = (tardis.clock.now_us() - market0) / 1e6
        wall = time.monotonic() - wall0
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(20)
    made = tardis.requests[first_request:]
    sent = sum(r.bytes_sent for r in made)
    lines = sum(r.lines_sent for r in made)
    print("%s: gapless after %.0fs of market time (%.1fs wall); %d replay request(s), %d lines, %.2f MB"
          % (label, market, wall, len(made), lines, sent / 1e6))
    for record in made:
        print("    %s .. %s %-24s %6d lines %8.0f kB" % (record.from_.strftime("%H:%M"), record.to.strftime("%H:%M"),
                                                     ",".join(record.options[0]["dataTypes"]), record.lines_sent,
                                                     record.bytes_sent / 1e3))
    return len(made), sent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=10.0)
    parser.add_argument("--lookback", default="6h")
    parser.add_argument("--downtime-minutes", type=float, default=10.0)
    args = parser.parse_args()
    clock = FakeClock(start=datetime.now(timezone.utc).replace(hour=6, minute=30, second=0, microsecond=0),
                      speed=args.speed)
    directory = tempfile.mkdtemp(prefix="gapless-bench-")
    database_url = "sqlite:///%s" % os.path.join(directory, "service.db")
    with FakeTardisMachine(clock=clock, market=MarketConfig(), availability_delay=timedelta(seconds=60)) as tardis:
        print("history delay 60s (server and service), lookback %s, clock x%.0f" % (args.lookback, args.speed))
        cold = run_until_gapless(tardis, env_for(tardis, database_url, args.lookback), directory, "cold start")
        print("  (a cold start waits until history reaches the minute the recording began: about the history "
              "delay plus up to two minute boundaries)")
        down_until = clock.now_us() + int(args.downtime_minutes * 60e6)
        while clock.now_us() < down_until:
            time.sleep(0.2)
        warm = run_until_gapless(tardis, env_for(tardis, database_url, args.lookback), directory,
                                 "warm restart after %.0f min down" % args.downtime_minutes)
        print("warm restart / cold start: requests %.2f, bytes %.3f" % (warm[0] / cold[0], warm[1] / cold[1]))


if __name__ == "__main__":
    main()
