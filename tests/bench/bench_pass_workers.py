"""Benchmark: the CPU cost of a service's small download passes with worker processes started per pass
against workers kept across passes (``gapless.feed`` keeps them).

Run by hand (not collected by pytest):

    .venv/bin/python tests/bench/bench_pass_workers.py [--passes 20]

Each pass downloads the next two minutes of BTC-PERPETUAL and ETH-PERPETUAL ``trade`` from the double (its
own process) into SQLite with ``workers=1``, as a steady-state healing pass does. Prints the CPU time (user +
system) of this process and its download workers per pass, both ways, in the same run, on separate databases.
"""
import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import start_double  # noqa: E402

from gapless.download import Downloader  # noqa: E402
from gapless.fetch_workers import ProcessFetchers  # noqa: E402
from gapless.storage import Storage  # noqa: E402
from gapless.timeutil import DAY_US, MINUTE_US, floor_day, to_us  # noqa: E402

SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]


class TreeCpu:
    """CPU seconds of this process and of every child it had, ended ones included."""

    def __init__(self):
        self.me = psutil.Process()
        self.children = {}

    def sample(self):
        for child in self.me.children(recursive=True):
            try:
                times = child.cpu_times()
                self.children[child.pid] = times.user + times.system
            except psutil.Error:
                pass
        own = self.me.cpu_times()
        # ended children: resource usage of waited-for children is in children_user/children_system
        return own.user + own.system + own.children_user + own.children_system + sum(self.children.values())


def passes(url, day, count, shared):
    store = Storage("sqlite:///%s" % os.path.join(tempfile.mkdtemp(prefix="gapless-bench-"), "p.db"))
    probe = Downloader(store, url, workers=1, progress=False)
    fetchers = ProcessFetchers(probe.fetcher_config(), 1, 8) if shared else None
    cpu = TreeCpu()
    before, began = cpu.sample(), time.perf_counter()
    lines = 0
    try:
        for i in range(count):
            downloader = Downloader(store, url, workers=1, progress=False, fetchers=fetchers)
            start = day + 60 * MINUTE_US + 2 * i * MINUTE_US
            report = downloader.download("deribit", SYMBOLS, ["trade"], start, start + 2 * MINUTE_US)
            assert report.complete and report.requests == 1, report
            lines += report.lines
            cpu.sample()
    finally:
        if fetchers is not None:
            fetchers.close()
        store.close()
    return (cpu.sample() - before) / count, (time.perf_counter() - began) / count, lines / count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    double, info = start_double("--symbols", ",".join(SYMBOLS))
    try:
        day = floor_day(to_us(datetime.now(timezone.utc))) - 2 * DAY_US
        for label, shared in (("workers started per pass (before)", False), ("workers kept across passes", True)):
            cpu, wall, lines = passes(info["http_url"], day, args.passes, shared)
            print("%s: %.3f s CPU and %.3f s wall per pass (%d passes, %.0f lines each)"
                  % (label, cpu, wall, args.passes, lines))
            day += DAY_US // 2  # the other half of the day: nothing cached by the first way
    finally:
        double.terminate()
        double.wait(10)


if __name__ == "__main__":
    main()
