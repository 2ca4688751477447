"""Soak: live recording for a long time while tardis-machine drops the connection every few seconds.

Run by hand (not collected by pytest; 30 minutes by default):

    .venv/bin/python tests/bench/soak_live.py [--minutes 30] [--drop-every 20] [--database sqlite|postgresql]

The fake tardis-machine (its own process) drops every live connection every ``--drop-every`` seconds, in
turn with a close frame, a TCP reset and an exchange-side ``disconnect``. One ``Recorder`` records quotes
and trades of two symbols. Printed: frames the double sent vs frames received vs rows stored, reconnects,
live segments, threads and sockets of this process, and RSS at the start and the end.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fresh_database, start_double  # noqa: E402

from gapless.recorder import Recorder  # noqa: E402
from gapless.storage import Storage  # noqa: E402

SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
TYPES = ["quote", "trade"]


def resources(process):
    """(RSS MB, threads, open TCP sockets) of this process."""
    return (process.memory_info().rss / 2 ** 20, threading.active_count(),
            len(process.net_connections(kind="tcp")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--drop-every", type=float, default=20.0)
    parser.add_argument("--book-rate", type=float, default=20.0)
    parser.add_argument("--trade-rate", type=float, default=5.0)
    parser.add_argument("--database", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    double, info = start_double("--drop-every", str(args.drop_every), "--book-rate", str(args.book_rate),
                                "--trade-rate", str(args.trade_rate), "--symbols", ",".join(SYMBOLS))
    me = psutil.Process()
    store = Storage(fresh_database(args.database, "soak", args.pg_url))
    recorder = Recorder(store, info["ws_url"], "deribit", SYMBOLS, TYPES)
    began = time.monotonic()
    samples = []  # (seconds, rss, threads, sockets)
    try:
        recorder.start()
        deadline = began + args.minutes * 60
        while time.monotonic() < deadline and recorder.is_alive():
            samples.append((time.monotonic() - began, *resources(me)))
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        samples.append((time.monotonic() - began, *resources(me)))
    finally:
        recorder.stop()
        double.send_signal(signal.SIGTERM)
        sent = json.loads(double.stdout.readline() or "{}")
        double.wait(10)
    health = recorder.health()
    segments = [r for r in store.coverage_rows() if r["source"] == "live"]
    stored = sum(store.count_rows(table) for table in ("book_snapshot_1", "trade") if store.has_table(table))
    store.close()
    minute = [s for s in samples if s[0] <= 60] or samples[:1]
    last = [s for s in samples if s[0] >= samples[-1][0] - 60] or samples[-1:]
    print("soak: %.1f min of live recording (%s), the double dropping every %.0f s (close, reset, exchange in turn)"
          % ((samples[-1][0]) / 60, args.database, args.drop_every))
    print("  double: %d connections, %d drops, %d data frames sent"
          % (sent.get("connections", -1), sent.get("drops", -1), sent.get("data_frames_sent", -1)))
    print("  recorder: frames received %d (data %d), rows stored %d, duplicates %d, malformed %d, reconnects %d; "
          "rows in the database %d; live coverage segments %d"
          % (health["frames_received"], health["frames_received"] - health["disconnects"] - health["server_errors"],
             health["rows_stored"], health["duplicates"], health["malformed"], health["reconnects"], stored,
             len(segments)))
    print("  received - stored - duplicates = %d (must be 0); sent data frames not received (in flight at a "
          "reset or exchange drop): %d" % (health["frames_received"] - health["disconnects"] - health["server_errors"]
                                           - health["rows_stored"] - health["duplicates"] - health["malformed"],
                                           sent.get("data_frames_sent", 0) - health["rows_stored"]
                                           - health["duplicates"]))
    print("  RSS: first minute peak %.0f MB, last minute peak %.0f MB (%+.1f%%); threads %d -> %d; TCP sockets "
          "%d -> %d; recorder alive at the end: %s"
          % (max(s[1] for s in minute), max(s[1] for s in last),
             100.0 * (max(s[1] for s in last) / max(s[1] for s in minute) - 1), minute[-1][2], last[-1][2],
             minute[-1][3], last[-1][3], recorder.error is None))


if __name__ == "__main__":
    main()
