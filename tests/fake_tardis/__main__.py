"""Run the double as its own process (benchmarks, kill -9 tests).

    python -m tests.fake_tardis --http-port 0 --ws-port 0 [--clock-offset S]
        [--availability-delay S] [--availability-mode error|empty] [--line-rate N] [--book-rate R] [--trade-rate R] [--seed N]
        [--firehose-seconds S] [--symbols A,B] [--drop-every S]

Prints one JSON line ``{"http_url": ..., "ws_url": ..., "pid": ...}`` once both servers
listen, then serves until SIGTERM/SIGINT. ``--drop-every S`` drops every live connection each
S seconds, in turn with a close frame, with a reset and on the exchange side (a ``disconnect``
message). On exit it prints a second JSON line: connections, drops, and the data frames sent.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from datetime import timedelta

from . import FakeClock, FakeTardisMachine, MarketConfig


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until a signal, return the exit code."""
    ap = argparse.ArgumentParser(prog="python -m tests.fake_tardis", description=__doc__.splitlines()[0])
    ap.add_argument("--http-port", type=int, default=0)
    ap.add_argument("--ws-port", type=int, default=0)
    ap.add_argument("--clock-offset", type=float, default=0.0, help="seconds added to real time")
    ap.add_argument("--availability-delay", type=float, default=0.0, help="seconds")
    ap.add_argument("--availability-mode", choices=("error", "empty"), default="error",
                    help="not-yet-available history ends with an error line, or just ends")
    ap.add_argument("--line-rate", type=float, default=None, help="lines per second per replay request")
    ap.add_argument("--book-rate", type=float, default=MarketConfig.book_rate)
    ap.add_argument("--trade-rate", type=float, default=MarketConfig.trade_rate)
    ap.add_argument("--seed", type=int, default=MarketConfig.seed)
    ap.add_argument("--firehose-seconds", type=float, default=0.0, help="every connection is a firehose")
    ap.add_argument("--symbols", default="BTC-PERPETUAL,ETH-PERPETUAL", help="default symbols")
    ap.add_argument("--drop-every", type=float, default=0.0, help="seconds between live drops (0: none)")
    args = ap.parse_args(argv)
    stop = threading.Event()
    # the handlers only set the event; the main thread does the shutdown
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    tm = FakeTardisMachine(
        clock=FakeClock.from_offset(args.clock_offset),
        market=MarketConfig(seed=args.seed, book_rate=args.book_rate, trade_rate=args.trade_rate),
        availability_delay=timedelta(seconds=args.availability_delay), availability_mode=args.availability_mode,
        line_rate=args.line_rate,
        default_symbols=args.symbols.split(","), http_port=args.http_port, ws_port=args.ws_port,
        firehose=args.firehose_seconds > 0, firehose_seconds=args.firehose_seconds,
    )
    with tm:
        sys.stdout.write(json.dumps({"http_url": tm.http_url, "ws_url": tm.ws_url, "pid": os.getpid()}) + "\n")
        sys.stdout.flush()
        drops = 0
        period = args.drop_every or 1.0
        while not stop.wait(period):
            if args.drop_every:
                mode = ("close", "reset", "exchange")[drops % 3]
                if mode == "exchange":
                    tm.exchange_drop()
                else:
                    tm.drop_clients(mode)
                drops += 1
        sent = [text for connection in tm.connections for text in connection.sent]
        data = sum(1 for text in sent if '"type":"disconnect"' not in text and '"type":"error"' not in text)
        sys.stdout.write(json.dumps({"connections": len(tm.connections), "drops": drops, "frames_sent": len(sent),
                                     "data_frames_sent": data}) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
