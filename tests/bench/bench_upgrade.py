"""Benchmark: what a book-derived day costs in steady state, GAPLESS_UPGRADE=daily against hourly, and what
library calls beside a running service ask for.

Run by hand (not collected by pytest):

    .venv/bin/python tests/bench/bench_upgrade.py [--pass-minutes 5] [--book-rate 2] [--calls 4]
        [--data-type quote] [--skip-day | --only-calls]

tardis-machine replays book-derived types only from 00:00 of the day, so every such request downloads the day
so far. Everything runs on the double's manual clock in this process: the services record live and make one
healing pass every ``--pass-minutes`` of market time, as their scheduler would. Printed, in the same run:

  * a simulated day (00:35 to 00:35 the next day) of raw ``quote`` (or ``--data-type``, e.g. ``quote_1m``), two
    services side by side on one double, one stream each: BTC-PERPETUAL with the default upgrade (daily), ETH-PERPETUAL with ``upgrade="hourly"``. Per
    stream: the day's from-00:00 requests and the replay lines they downloaded, against the lines of the day;
  * ``--calls`` ``get_data_without_gap`` calls a simulated minute apart, then a ``Gapless`` object started and
    stopped twice, beside a running service on the same SQLite database (raw ``quote``): the from-00:00
    requests made meanwhile (the service's own schedule makes none then: no gap, the day not over). This part
    runs unchanged against older code (``--only-calls``), for the figure before.
"""
import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402,F401  (puts the checkout on sys.path)

from gapless import get_data_without_gap  # noqa: E402
from gapless.service import Gapless  # noqa: E402
from tests.fake_tardis import FakeTardisMachine, ManualClock, MarketConfig  # noqa: E402
from tests.truth_harness import advance  # noqa: E402

DAY = datetime(2026, 11, 26, tzinfo=timezone.utc)
MINUTE = 60_000_000
RECORDER = {"backoff_base": 0.01, "backoff_cap": 0.05, "flush_interval": 0.02, "recv_timeout": 0.01,
            "data_silence": 3600.0, "dead_after": 3600.0}


def us(when):
    return int(when.timestamp()) * 1_000_000


def from_midnight(tm, symbol, day=None, data_type="quote"):
    """Replay requests of ``symbol``'s ``data_type`` that started at 00:00 (of ``day`` when given)."""
    return [r for r in tm.requests if r.options and r.from_ is not None and data_type in r.options[0]["dataTypes"]
            and symbol in r.options[0]["symbols"] and r.from_.time() == datetime.min.time()
            and (day is None or r.from_.date() == day.date())]


def service(tm, symbols, database_url, data_type="quote", **options):
    return Gapless("deribit", symbols, [data_type], database_url=database_url, tardis_url=tm.http_url,
                   tardis_ws_url=tm.ws_url, lookback="30m", history_delay="15m", rebuild_interval="3600s",
                   workers=0, now=tm.clock.now_us, recorder_options=dict(RECORDER), **options)


def steady_day(args, directory):
    start = DAY + timedelta(minutes=35, seconds=20)
    clock = ManualClock(start)
    step = int(args.pass_minutes * MINUTE)
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=args.book_rate, trade_rate=args.book_rate / 2),
                           availability_delay=timedelta(seconds=60)) as tm:
        modes = {"BTC-PERPETUAL": "daily", "ETH-PERPETUAL": "hourly"}
        services = [service(tm, [symbol], "sqlite:///%s" % os.path.join(directory, mode + ".db"), args.data_type,
                            upgrade=mode) for symbol, mode in modes.items()]
        for s in services:
            s.recorder.start()
        began = time.monotonic()
        try:
            end = us(start + timedelta(days=1))
            while clock.now_us() < end:
                advance(clock, tm, min(end, clock.now_us() + step), [s.recorder for s in services], step_us=step)
                for s in services:
                    s.heal()
        finally:
            for s in services:
                s.stop()
        wall = time.monotonic() - began
        print("a simulated day of %s, a pass every %g min, book changes %g/s per symbol (%.0f s wall):"
              % (args.data_type, args.pass_minutes, args.book_rate, wall))
        for symbol, mode in modes.items():
            options = {"exchange": "deribit", "symbols": [symbol], "dataTypes": [args.data_type], "from": DAY.isoformat(),
                       "to": (DAY + timedelta(days=1)).isoformat()}
            lines = len(tm.expected_replay(options, ignore_availability=True))
            asked = from_midnight(tm, symbol, DAY, args.data_type)
            got = sum(r.lines_sent for r in asked)
            print("  %-6s (%s): %2d from-00:00 request(s) for the day, %9d lines downloaded = %5.2fx the day's %d"
                  % (mode, symbol, len(asked), got, got / lines, lines))


def library_calls(args, directory):
    clock = ManualClock(DAY + timedelta(hours=2, seconds=20))
    url = "sqlite:///%s" % os.path.join(directory, "calls.db")
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=args.book_rate, trade_rate=args.book_rate / 2),
                           availability_delay=timedelta(seconds=60)) as tm:
        running = service(tm, ["BTC-PERPETUAL"], url)
        running.recorder.start()
        try:
            for _ in range(3):  # the service's own start: the day so far, then history reaching its recording
                advance(clock, tm, clock.now_us() + 5 * MINUTE, [running.recorder], step_us=MINUTE)
                running.heal()
            before = len(from_midnight(tm, "BTC-PERPETUAL"))
            for _ in range(args.calls):
                advance(clock, tm, clock.now_us() + MINUTE, [running.recorder])
                running.heal()
                get_data_without_gap("deribit", ["BTC-PERPETUAL"], ["quote"], lookback="30m",
                                     recording_warmup_seconds=5, database_url=url, tardis_url=tm.http_url,
                                     tardis_ws_url=tm.ws_url, history_delay="15m", now=clock.now_us,
                                     poll_seconds=0.2, recorder_options=dict(RECORDER))
            for _ in range(2):
                advance(clock, tm, clock.now_us() + MINUTE, [running.recorder])
                other = service(tm, ["BTC-PERPETUAL"], url)
                try:
                    other.heal()
                finally:
                    other.stop()
        finally:
            running.stop()
        made = from_midnight(tm, "BTC-PERPETUAL")[before:]
    print("%d get_data_without_gap call(s) a minute apart and a Gapless object started twice, beside a running "
          "service: %d from-00:00 request(s), %d lines" % (args.calls, len(made), sum(r.lines_sent for r in made)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pass-minutes", type=float, default=5.0, help="market minutes between healing passes")
    parser.add_argument("--book-rate", type=float, default=2.0, help="the double's book changes per second per symbol")
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--data-type", default="quote", help="the book-derived type of the simulated day")
    parser.add_argument("--skip-day", action="store_true")
    parser.add_argument("--only-calls", action="store_true", help="only the library calls (runs on older code too)")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="gapless-bench-upgrade-")
    if not (args.skip_day or args.only_calls):
        steady_day(args, directory)
    library_calls(args, directory)


if __name__ == "__main__":
    main()
