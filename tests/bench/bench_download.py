"""Benchmark: ``gapless download`` of a day of raw quotes against a ``curl`` of the same replay (issue 20).

Run by hand (not collected by pytest):

    .venv/bin/python tests/bench/bench_download.py [--book-rate 3.8] [--line-rate 50000] [--runs 3] [--baseline DIR]

The double answers at a realistic rate (``--line-rate`` lines/s per request; tardis-machine serves 20-30k
normalized messages/s per request on one core, a real day of raw BTC-PERPETUAL ``quote`` -- ~240k lines --
came in 4.3 s from a warm cache), so the server, not the client, should set the pace. Prints, from one
run on one machine:
  * curl -- ``curl -s URL > /dev/null`` of exactly the replay gapless asks for (read from its debug log);
  * gapless -- the whole command ``python run.py download ...`` into a fresh SQLite file, wall time from
    the shell's point of view (interpreter start, imports, planning, the download worker's start, the
    writes, exit);
  * the ratio gapless / curl (the target: at most 1.05), best of ``--runs`` each;
  * with ``--baseline DIR`` (another checkout, e.g. ``git worktree add /tmp/base <commit>``), the same command
    from that checkout, its runs interleaved with this one's.
"""
import argparse
import ast
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from urllib.parse import quote

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, start_double  # noqa: E402

from gapless.timeutil import DAY_US, floor_day, iso, to_us  # noqa: E402

SYMBOL = "BTC-PERPETUAL"


def timed(command, **kwargs):
    began = time.perf_counter()
    result = subprocess.run(command, check=True, **kwargs)
    return time.perf_counter() - began, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--book-rate", type=float, default=3.8, help="book events/s (3.8 -> ~240k quote lines/day)")
    parser.add_argument("--line-rate", type=float, default=50000.0, help="lines/s the double serves per request")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", help="another checkout to time the same way, in the same run")
    args = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="gapless-bench-")
    double, info = start_double("--book-rate", str(args.book_rate), "--trade-rate", "0.1", "--symbols", SYMBOL,
                                "--line-rate", str(args.line_rate))
    try:
        day = floor_day(to_us(datetime.now(timezone.utc))) - 2 * DAY_US

        def command(n, root=ROOT):
            return [sys.executable, os.path.join(root, "run.py"), "download", "--exchange", "deribit", "--symbols",
                    SYMBOL, "--data-types", "quote", "--from", iso(day), "--to", iso(day + DAY_US), "--no-progress",
                    "--tardis-url", info["http_url"], "--database",
                    "sqlite:///%s" % os.path.join(directory, "run-%d.db" % n), "--config-dir", directory]

        # the first run fills the double's cache and tells the exact replay options (its debug log)
        seconds, first = timed(command(0) + ["--log-level", "DEBUG"], capture_output=True, text=True)
        asked = [ast.literal_eval(m) for m in re.findall(r"replay (\{.*\})", first.stderr)]
        if len(asked) != 1:
            raise SystemExit("expected one replay request, saw %d: %s" % (len(asked), first.stderr[-2000:]))
        url = "%s/replay-normalized?options=%s" % (info["http_url"], quote(orjson.dumps(asked[0]).decode(), safe=""))
        body = os.path.join(directory, "body.ndjson")
        subprocess.run(["curl", "-s", "-o", body, url], check=True)
        lines = sum(1 for _ in open(body, "rb"))
        print("replay: %s quote %s .. %s: %d lines, double paced at %.0f lines/s (first, uncached run %.1fs)"
              % (SYMBOL, asked[0]["from"], asked[0]["to"], lines, args.line_rate, seconds))
        curl = min(timed(["curl", "-s", "-o", os.devnull, url])[0] for _ in range(args.runs))
        print("curl -s URL > /dev/null: %.2fs (best of %d)" % (curl, args.runs))
        roots = {"this checkout": ROOT}
        if args.baseline:
            roots["baseline " + args.baseline] = os.path.abspath(args.baseline)
        runs = {label: [] for label in roots}
        databases = itertools.count(1)
        for n in range(1, args.runs + 1):
            for label, root in roots.items():
                runs[label].append(timed(command(next(databases), root), capture_output=True)[0])
        for label, seconds in runs.items():
            print("%s: python run.py download (fresh SQLite each): %s -> best %.2fs, ratio to curl %.3f%s"
                  % (label, ", ".join("%.2fs" % r for r in seconds), min(seconds), min(seconds) / curl,
                     " (target <= 1.05)" if label == "this checkout" else ""))
    finally:
        double.terminate()
        double.wait(10)


if __name__ == "__main__":
    main()
