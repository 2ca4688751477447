"""Benchmark: the live recorder against a firehose of one-level quote frames.

Run by hand (not collected by pytest):

    .venv/bin/python tests/bench/bench_recorder.py [--seconds 30] [--database sqlite|postgresql]

The fake tardis-machine (its own process) pushes pre-rendered quote frames as fast as the socket takes
them. Printed, from one run:
  * baseline: a bare websocket-client ``recv()`` loop (skip_utf8_validation=True) that discards frames;
  * gapless: ``Recorder`` stored rows/s, frames received vs rows stored (must be equal), and the p99 delay
    from frame receipt to commit; the ratio to the baseline.
"""
import argparse
import os
import sys
import time

import websocket

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fresh_database, start_double  # noqa: E402

from gapless.recorder import Recorder  # noqa: E402
from gapless.subscription import stream_url  # noqa: E402
from gapless.storage import Storage  # noqa: E402


def bare_loop(ws_url, seconds):
    url = stream_url(ws_url, "deribit", ["BTC-PERPETUAL"], ["quote"])
    ws = websocket.create_connection(url, timeout=10, skip_utf8_validation=True)
    ws.settimeout(0.5)  # same as the recorder: the loop must see a stop flag
    frames = 0
    began = time.perf_counter()
    deadline = began + seconds
    try:
        while time.perf_counter() < deadline:
            try:
                ws.recv()
                frames += 1
            except websocket.WebSocketTimeoutException:
                continue
    finally:
        ws.close()
    return frames / (time.perf_counter() - began)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--database", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    double, info = start_double("--firehose-seconds", str(args.seconds + 5), "--symbols", "BTC-PERPETUAL")
    try:
        baseline = bare_loop(info["ws_url"], args.seconds)
        print("baseline: bare websocket-client recv() loop, discarding frames: %.0f frames/s" % baseline)
        store = Storage(fresh_database(args.database, "live", args.pg_url))
        recorder = Recorder(store, info["ws_url"], "deribit", ["BTC-PERPETUAL"], ["quote"])
        recorder.start()
        began = time.perf_counter()
        time.sleep(args.seconds)  # a benchmark runs for a fixed time
        recorder.stop()
        elapsed = time.perf_counter() - began
        health = recorder.health()
        stored = store.count_rows("book_snapshot_1", source="live")
        delays = sorted(recorder.commit_delays())
        p99 = delays[int(len(delays) * 0.99) - 1] if delays else float("nan")
        rate = stored / elapsed
        print("gapless Recorder (%s): %d rows stored in %.1fs = %.0f rows/s; frames received %d, rows stored %d "
              "(%s); p99 receipt-to-commit %.3fs (p50 %.3fs)" % (
                  args.database, stored, elapsed, rate, health["frames_received"], health["rows_stored"],
                  "equal" if health["frames_received"] == health["rows_stored"] == stored else "NOT EQUAL",
                  p99, delays[len(delays) // 2] if delays else float("nan")))
        print("  ratio to the bare loop: %.2f" % (rate / baseline))
        store.close()
    finally:
        double.terminate()
        double.wait(10)


if __name__ == "__main__":
    main()
