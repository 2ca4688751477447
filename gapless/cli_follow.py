"""``gapless follow``: every final minute from --since (or after --resume SEQ) and on, one line per event.

Reads the database a service writes (no recording of its own). Writes JSON lines (the default) or CSV to
stdout, flushed per line. A consumer that closes the pipe, SIGINT and SIGTERM end it with exit 0.
"""
import csv
import os
import signal
import sys
import threading

from .exceptions import UsageError
from .timeutil import parse_time_arg

FIXED = ["event", "seq", "exchange", "symbol", "data_type", "minute", "source", "revision", "reason"]


def add_parser(sub, streams_flags, common_flags):
    """Add the ``follow`` command to the subparsers ``sub`` (with the shared stream and connection flags)."""
    follow = sub.add_parser(
        "follow", help="print every final minute from --since, then each new or corrected minute as published",
        description="Follow the published minute series of a database a service writes: first every minute "
                    "from --since in minute order, then one caught_up line, then each minute as it is published "
                    "(a new minute with revision 0, a corrected one with a higher revision). --resume SEQ "
                    "continues after the event with that seq instead.")
    streams_flags(follow, times=False)
    follow.add_argument("--since", help="first minute, UTC ISO-8601 (e.g. 2026-12-06T09:00)")
    follow.add_argument("--resume", help="continue after the event with this seq (instead of --since)")
    follow.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="output (default jsonl)")
    common_flags(follow)


def cmd_follow(args, settings, now_us):
    """Run ``follow`` until stopped; returns the exit status."""
    from .follower import Follower
    from .storage import Storage

    since, resume = _position(args)
    keys = [s for g in settings.streams for s in g.streams]
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    storage = Storage(settings.database_url, create=False)
    _watch_consumer(stop)
    try:
        _check_streams(storage, keys, storage.redacted_url)
        write = _jsonl_writer() if args.format == "jsonl" else _csv_writer(keys)
        try:
            for event in Follower(storage, keys, since=since, resume=resume, stop=stop):
                write(event.as_dict())
        except BrokenPipeError:
            # the consumer has gone (`| head -5`): a normal end; keep Python from complaining at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        storage.close()


def _watch_consumer(stop, interval=0.5):
    """Set ``stop`` when the consumer of stdout has gone (``| head -5``) even while nothing is written: a
    follower waiting for the next minute would otherwise only notice at its next line."""
    import select
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLERR | select.POLLHUP)
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture stdout): nothing to watch
        return

    def watch():
        while not stop.is_set():
            if poller.poll(interval * 1000):
                stop.set()
    threading.Thread(target=watch, name="gapless-follow-consumer", daemon=True).start()


def _position(args):
    if args.resume is not None:
        try:
            resume = int(args.resume)
        except ValueError:
            raise UsageError("--resume %r is not a sequence number (an integer from an event's seq)"
                             % (args.resume,)) from None
        if resume < 0:
            raise UsageError("--resume %d: a sequence number is not negative" % resume)
        return None, resume
    if args.since is None:
        raise UsageError("follow: give --since TIME (the first minute) or --resume SEQ")
    return parse_time_arg(args.since, "--since"), None


def _check_streams(storage, keys, url):
    """Refuse streams the database has never published, once it has published any (exit 2 naming them)."""
    if not storage.has_table("stream_status"):
        return
    model = storage.models["stream_status"]
    known = {(r.exchange, r.symbol, r.data_type) for r in model.select(model.exchange, model.symbol,
                                                                        model.data_type)}
    unknown = [k for k in keys if k not in known]
    if known and unknown:
        raise UsageError("database %s has no published stream %s (it has %s)" % (
            url, ", ".join(":".join(k) for k in unknown), ", ".join(":".join(k) for k in sorted(known)[:10])))


def _jsonl_writer():
    import orjson
    out = sys.stdout.buffer

    def write(line):
        out.write(orjson.dumps(line) + b"\n")
        out.flush()
    return write


def _csv_writer(keys):
    from .aggregate import value_columns  # here: pandas is not for every command's start (see gapless.cli)
    values = []
    for name in sorted({k[2] for k in keys}):
        values += [c for c in value_columns(name) if c not in values]
    writer = csv.DictWriter(sys.stdout, fieldnames=FIXED + values, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    sys.stdout.flush()

    def write(line):
        row = dict(line)
        row.setdefault("event", "minute")
        writer.writerow(row)
        sys.stdout.flush()
    return write
