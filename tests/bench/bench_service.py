"""Benchmark: time to gapless, what a warm restart downloads, and a week's first download.

Run by hand (not collected by pytest):

    .venv/bin/python tests/bench/bench_service.py [--speed 10] [--lookback 6h] [--downtime-minutes 10]
        [--real-delay 180] [--delay-setting 4m] [--line-rate 1000] [--start-second 0] [--skip-week | --only-week]

The fake tardis-machine runs in this process on a clock ``--speed`` times faster than real time, with a
real availability delay of ``--real-delay`` seconds (market time); the service (``python run.py``, a
subprocess) is configured with ``GAPLESS_HISTORY_DELAY=--delay-setting`` (an upper bound: it measures the
real one). Printed, all in the same run:
  * cold start: market and wall time until ``status`` says every stream is gapless, as a ratio to the real
    delay (history must reach the minute the recording started); replay requests, lines and bytes;
  * warm restart after ``--downtime-minutes`` of downtime: the same figures, as a ratio to the cold start;
  * a week of BTC-PERPETUAL ``quote_1m``: one request for the week, seven concurrent day requests, and
    ``gapless download`` with its default settings, the double answering ``--line-rate`` lines per second
    per request (the server, not the client, is the limit, as with a real tardis-machine).
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


def env_for(tardis, database_url, lookback, delay_setting="60s"):
    clock = tardis.clock
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPLESS_")}
    env.update({"GAPLESS_TARDIS_URL": tardis.http_url, "GAPLESS_TARDIS_WS_URL": tardis.ws_url,
                "GAPLESS_DATABASE_URL": database_url, "GAPLESS_SYMBOLS": SYMBOLS, "GAPLESS_DATA_TYPES": TYPES,
                "GAPLESS_LOOKBACK": lookback, "GAPLESS_HISTORY_DELAY": delay_setting, "GAPLESS_REBUILD_INTERVAL": "2s",
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
    return len(made), sent, market


def week_download(args):
    """A week of quote_1m: one request, seven concurrent day requests, ``gapless download`` (defaults)."""
    import concurrent.futures

    import requests
    day = 86_400_000_000
    now = datetime.now(timezone.utc)
    with FakeTardisMachine(clock=FakeClock(start=now), market=MarketConfig(), line_rate=args.line_rate) as tardis:
        end_us = int(now.timestamp() // 86_400) * day
        start_us = end_us - 7 * day

        def fetch(lo, hi):
            options = {"exchange": "deribit", "symbols": ["BTC-PERPETUAL"], "dataTypes": ["quote_1m"],
                       "from": iso_us(lo), "to": iso_us(hi)}
            with requests.get(tardis.http_url + "/replay-normalized", params={"options": json.dumps(options)},
                              stream=True, timeout=600) as response:
                return sum(1 for _ in response.iter_lines())

        began = time.monotonic()
        one = fetch(start_us, end_us)
        one_s = time.monotonic() - began
        began = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(7) as pool:
            seven = sum(pool.map(lambda d: fetch(start_us + d * day, start_us + (d + 1) * day), range(7)))
        seven_s = time.monotonic() - began
        directory = tempfile.mkdtemp(prefix="gapless-bench-week-")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAPLESS_")}
        env.update({"GAPLESS_TARDIS_URL": tardis.http_url, "GAPLESS_DATABASE_URL": "sqlite:///%s" % os.path.join(
            directory, "week.db"), "GAPLESS_SYMBOLS": "BTC-PERPETUAL", "GAPLESS_DATA_TYPES": "quote_1m"})
        began = time.monotonic()
        result = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "download", "--no-progress", "--from",
                                 iso_us(start_us), "--to", iso_us(end_us)], env=env, cwd=directory,
                                capture_output=True, text=True)
        gapless_s = time.monotonic() - began
        if result.returncode != 0:
            sys.exit("gapless download failed:\n" + result.stderr[-3000:])
    print("a week of BTC-PERPETUAL quote_1m, the double answering %.0f lines/s per request:" % args.line_rate)
    print("  one request for the week:        %6.1f s (%d lines)" % (one_s, one))
    print("  seven concurrent day requests:   %6.1f s (%d lines)" % (seven_s, seven))
    print("  gapless download (defaults):     %6.1f s (%s): %.2fx the seven concurrent requests" % (
        gapless_s, result.stdout.strip().splitlines()[-1], gapless_s / seven_s))


def iso_us(us):
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=10.0)
    parser.add_argument("--lookback", default="6h")
    parser.add_argument("--downtime-minutes", type=float, default=10.0)
    parser.add_argument("--real-delay", type=float, default=180.0, help="the double's availability delay, s")
    parser.add_argument("--delay-setting", default="4m", help="GAPLESS_HISTORY_DELAY of the service")
    parser.add_argument("--line-rate", type=float, default=1000.0)
    parser.add_argument("--start-second", type=int, default=0, help="second of the minute the clock starts at")
    parser.add_argument("--skip-week", action="store_true")
    parser.add_argument("--only-week", action="store_true", help="only the week's first download")
    args = parser.parse_args()
    if args.only_week:
        week_download(args)
        return
    clock = FakeClock(start=datetime.now(timezone.utc).replace(hour=6, minute=30, second=args.start_second,
                                                               microsecond=0), speed=args.speed)
    directory = tempfile.mkdtemp(prefix="gapless-bench-")
    database_url = "sqlite:///%s" % os.path.join(directory, "service.db")
    with FakeTardisMachine(clock=clock, market=MarketConfig(),
                           availability_delay=timedelta(seconds=args.real_delay)) as tardis:
        print("real history delay %.0fs, GAPLESS_HISTORY_DELAY=%s, lookback %s, clock x%.0f" % (
            args.real_delay, args.delay_setting, args.lookback, args.speed))
        env = env_for(tardis, database_url, args.lookback, args.delay_setting)
        cold = run_until_gapless(tardis, env, directory, "cold start")
        print("  time to gapless / real delay: %.2f (history must reach the minute the recording began: the delay "
              "plus up to two minute boundaries)" % (cold[2] / args.real_delay))
        down_until = clock.now_us() + int(args.downtime_minutes * 60e6)
        while clock.now_us() < down_until:
            time.sleep(0.2)
        warm = run_until_gapless(tardis, env, directory, "warm restart after %.0f min down" % args.downtime_minutes)
        print("warm restart / cold start: requests %.2f, bytes %.3f" % (warm[0] / cold[0], warm[1] / cold[1]))
    if not args.skip_week:
        week_download(args)


if __name__ == "__main__":
    main()
