"""Command line: ``python run.py <command>``; ``python run.py`` alone runs the service.

Exit status: 0 done, 1 ran but could not finish (e.g. a replay slice still failing after its
retries), 2 bad input (a one-line error naming what is wrong; nothing stored is touched).
"""
import argparse
import logging
import os
import signal
import sys
import threading

from .cli_follow import add_parser as add_follow_parser, cmd_follow
from .config import load_settings, make_clock
from .datatypes import check_series_types, parse_data_types
from .exceptions import GaplessError, UsageError
from .horizon import stored_horizon
from .redaction import install_secret_filter, redact, url_password
from .timeutil import MINUTE_US, ceil_minute, floor_minute, iso, parse_time_arg, to_us

log = logging.getLogger("gapless")

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_config_dir():
    """``config/`` of the checkout (``python run.py``); an installed package has none: ``./config``."""
    checkout = os.path.join(PROJECT_DIR, "config")
    if os.path.isfile(os.path.join(PROJECT_DIR, "run.py")) and os.path.isdir(checkout):
        return checkout
    return "config"


CONFIG_DIR = default_config_dir()


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message):
        raise UsageError("%s: %s" % (self.prog, message))


def _common(parser):
    group = parser.add_argument_group("connection and storage (flags override GAPLESS_* settings)")
    group.add_argument("--tardis-url", help="tardis-machine HTTP URL (GAPLESS_TARDIS_URL, default http://localhost:8000)")
    group.add_argument("--tardis-ws-url", help="tardis-machine websocket URL (GAPLESS_TARDIS_WS_URL, default ws://localhost:8001)")
    group.add_argument("--database", dest="database_url",
                       help="sqlite:///path.db or postgresql://user:pass@host:port/db (GAPLESS_DATABASE_URL)")
    group.add_argument("--api-key", help="tardis API key passed to tardis-machine (GAPLESS_TARDIS_API_KEY); never logged")
    group.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (GAPLESS_LOG_LEVEL)")
    group.add_argument("--config-dir", default=CONFIG_DIR, help="directory holding gapless.env (default: %(default)s)")


def _streams(parser, times=True):
    parser.add_argument("--streams", help="several exchanges at once: 'exchange:symbols:data_types;...', e.g. "
                                          "'deribit:BTC-PERPETUAL:quote_1m;binance-futures:BTCUSDT:trade' "
                                          "(GAPLESS_STREAMS); overrides --exchange/--symbols/--data-types")
    parser.add_argument("--exchange", help="exchange, e.g. deribit (GAPLESS_EXCHANGE)")
    parser.add_argument("--symbols", help="comma-separated symbols, e.g. BTC-PERPETUAL,ETH-PERPETUAL (GAPLESS_SYMBOLS)")
    parser.add_argument("--data-types", help="comma-separated data types, e.g. quote_1m,trade_bar_1m,trade "
                                             "(GAPLESS_DATA_TYPES)")
    if times:
        parser.add_argument("--from", dest="from_", required=True, help="start, UTC ISO-8601 (e.g. 2026-11-23T13:30)")
        parser.add_argument("--to", help="end (exclusive), UTC ISO-8601; default now")


def build_parser():
    """The argparse parser of every command."""
    parser = _Parser(prog="gapless", description="Gapless minute series from tardis-machine: history + live.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    download = sub.add_parser("download", help="download history (replay) into the database",
                              description="Download replay data for [--from, --to) into the database. Ranges "
                                          "already stored are not downloaded again.")
    _streams(download)
    download.add_argument("--concurrency", type=int, help="replay requests in flight at once (GAPLESS_CONCURRENCY, "
                                                          "default 8)")
    download.add_argument("--workers", type=int, help="parallel download processes (GAPLESS_WORKERS, default 1; "
                                                      "0 = all in this process)")
    download.add_argument("--history-delay", help="how far history lags now, e.g. 15m (GAPLESS_HISTORY_DELAY); "
                                                  "--to is capped at now minus this")
    download.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(download)
    series = sub.add_parser("series", help="print or export the minute series",
                            description="Minute series from stored data; one row per (symbol, data type, minute) "
                                        "labelled by the minute's start (UTC). Missing minutes are flagged, "
                                        "never filled.")
    _streams(series)
    series.add_argument("--out", help="write to FILE.csv or FILE.parquet instead of printing")
    series.add_argument("--source", choices=("both", "replay", "live"), default="both",
                        help="which stored data to use (default both: replay where it exists, live after it)")
    _common(series)
    serve = sub.add_parser("serve", help="run the service (the default command)",
                           description="Record live data, download history, heal gaps and rebuild the combined "
                                       "minute series every GAPLESS_REBUILD_INTERVAL until SIGTERM/SIGINT.")
    _streams(serve, times=False)
    _service_flags(serve)
    _common(serve)
    plot = sub.add_parser("plot", help="draw the coverage picture (PNG)",
                          description="Draw, per stream, a timeline band coloured by source (replay green, live "
                                      "blue, missing red) with gaps labelled by reason, and the price above it. "
                                      "Reads the database only.")
    _streams(plot, times=False)
    plot.add_argument("--from", dest="from_", help="start, UTC ISO-8601 (default: now minus the lookback)")
    plot.add_argument("--to", help="end (exclusive), UTC ISO-8601 (default: the last settled minute)")
    plot.add_argument("--lookback", help="window when --from is not given, e.g. 7d or 90m (GAPLESS_LOOKBACK)")
    plot.add_argument("--history-delay", help="history delay to assume if the service has not stored one "
                                              "(GAPLESS_HISTORY_DELAY); used to tell gap reasons apart")
    plot.add_argument("--out", required=True, help="the picture, FILE.png (written atomically)")
    _common(plot)
    for name, text in (("status", "coverage, gaps, history delay, live lag and disagreements per stream"),
                       ("gaps", "the gaps only")):
        command = sub.add_parser(name, help=text, description="Show %s (reads the database only)." % text)
        _streams(command, times=False)
        command.add_argument("--lookback", help="window, e.g. 7d or 90m (GAPLESS_LOOKBACK)")
        command.add_argument("--history-delay", help="history delay to assume if the service has not stored one "
                                                     "(GAPLESS_HISTORY_DELAY)")
        command.add_argument("--json", action="store_true", help="machine-readable output (stable, see README)")
        _common(command)
    add_follow_parser(sub, _streams, _common)
    return parser


def _service_flags(parser):
    parser.add_argument("--lookback", help="window kept gapless, e.g. 7d or 90m (GAPLESS_LOOKBACK)")
    parser.add_argument("--history-delay", help="initial history delay, e.g. 15m (GAPLESS_HISTORY_DELAY)")
    parser.add_argument("--rebuild-interval", help="healing/rebuild period, e.g. 60s (GAPLESS_REBUILD_INTERVAL)")
    parser.add_argument("--export", help="also write the series to this .csv/.parquet file (GAPLESS_EXPORT)")
    parser.add_argument("--workers", type=int, help="parallel download processes (GAPLESS_WORKERS)")
    parser.add_argument("--concurrency", type=int, help="replay requests in flight at once (GAPLESS_CONCURRENCY)")
    parser.add_argument("--plot", help="rewrite this coverage picture (.png) after every rebuild (GAPLESS_PLOT)")
    parser.add_argument("--upgrade", help="when live minutes of quotes and book snapshots become replay: daily "
                                          "(default) or hourly (GAPLESS_UPGRADE)")
    parser.add_argument("--metrics-addr", help="serve /metrics and /health on host:port, e.g. 127.0.0.1:9108 "
                                               "(GAPLESS_METRICS_ADDR; default: no listener)")


def _settings(args):
    overrides = {key: getattr(args, key, None) for key in (
        "tardis_url", "tardis_ws_url", "database_url", "api_key", "exchange", "log_level", "workers", "concurrency",
        "lookback",
        "history_delay", "rebuild_interval", "export", "plot", "metrics_addr", "upgrade")}
    overrides["symbols"] = getattr(args, "symbols", None)
    overrides["data_types"] = getattr(args, "data_types", None)
    overrides["streams"] = getattr(args, "streams", None)
    return load_settings(config_dir=getattr(args, "config_dir", CONFIG_DIR), **overrides)


def setup_logging(level="INFO"):
    """stderr logging; without timestamps under systemd (journald adds its own)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s [%(threadName)s] %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))


def _time_range(args, now_us):
    start = floor_minute(parse_time_arg(args.from_, "--from"))
    end = ceil_minute(parse_time_arg(args.to, "--to")) if args.to else floor_minute(now_us)
    if start >= end:
        raise UsageError("--from %s is not before --to %s" % (iso(start), iso(end)))
    return start, end


def cmd_download(args, settings, now_us):
    """``download``: fetch replay for the range; exit 1 if some slices stay incomplete."""
    from .fetch_workers import ProcessFetchers, fetcher_config, threads_per_worker
    # the download workers start first: their start overlaps this process's imports and planning
    fetchers = None
    if settings.workers:
        fetchers = ProcessFetchers(fetcher_config(settings.tardis_url, settings.api_key or None), settings.workers,
                                   threads_per_worker(settings.concurrency, settings.workers))
    try:
        return _download(args, settings, now_us, fetchers)
    finally:
        if fetchers is not None:
            fetchers.close()


def _download(args, settings, now_us, fetchers):
    from .download import Downloader
    from .replay import ReplayClient
    from .storage import Storage

    start, end = _time_range(args, now_us)
    horizon = floor_minute(now_us - settings.history_delay) - MINUTE_US
    if end > horizon:
        if start >= horizon:
            raise UsageError("--from %s: history is not available yet (tardis-machine serves history up to about "
                             "now - %d min; set GAPLESS_HISTORY_DELAY)" % (iso(start), settings.history_delay // MINUTE_US))
        log.warning("history is available up to about %s (now - history delay); downloading up to there, not %s",
                    iso(horizon), iso(end))
        end = horizon
    ReplayClient(settings.tardis_url, timeout=(5.0, 10.0)).health_check()
    storage = Storage(settings.database_url)
    reports = []
    try:
        for group in settings.streams:
            for symbols, types in group.filters:  # exactly the streams kept (an exchange in several groups)
                downloader = Downloader(storage, settings.tardis_url, api_key=settings.api_key or None,
                                        workers=settings.workers, concurrency=settings.concurrency,
                                        progress=False if args.no_progress else None, fetchers=fetchers)
                reports.append(downloader.download(group.exchange, symbols, parse_data_types(types), start, end))
    finally:
        storage.close()
    report = reports[0].merged(reports[1:])
    mb = report.bytes / 1e6
    rate = report.messages / report.seconds if report.seconds else 0
    print("downloaded %d request(s), %d lines (%.1f MB), %d new rows in %.1fs (%.0f msg/s); %d malformed line(s)"
          % (report.requests, report.lines, mb, report.rows_inserted, report.seconds, rate, report.malformed))
    for request, reason in report.failed:
        print("INCOMPLETE: %s: %s" % (request.describe(), reason), file=sys.stderr)
    return 0 if report.complete else 1


def cmd_series(args, settings, now_us):
    """``series``: print the minute series, or write it to --out (CSV or Parquet, atomically)."""
    from .series import to_long
    from .storage import Storage

    start, end = _time_range(args, now_us)
    if (end - start) // MINUTE_US > 400 * 24 * 60:
        raise UsageError("--from/--to: %d days is too long for one series" % ((end - start) // (1440 * MINUTE_US)))
    if args.out and not args.out.lower().endswith((".csv", ".parquet")):
        raise UsageError("--out %r: must end in .csv or .parquet" % (args.out,))
    storage = Storage(settings.database_url, create=False)
    try:
        sources = ("replay", "live") if args.source == "both" else (args.source,)
        frames = _group_frames(storage, settings.streams, start, end, sources=sources)
    finally:
        storage.close()
    long = to_long(frames, settings.exchange)
    for key, frame in frames.items():
        counts = frame["source"].value_counts().to_dict()
        print("# %s: %d minutes, %s" % (" ".join(_full_key(settings, key)), len(frame),
                                         ", ".join("%s %d" % kv for kv in sorted(counts.items()))),
              file=sys.stderr if not args.out else sys.stdout)
    if args.out:
        from .published import export_frames
        export_frames(frames, settings.exchange, args.out)
        print("wrote %d rows to %s" % (len(long), args.out))
    else:
        printable = long.copy()
        printable["minute"] = printable["minute"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        print(printable.to_string(index=False, max_rows=200))
    return 0


def cmd_serve(args, settings, now_us):
    """``serve`` (and no command): run the service until SIGTERM/SIGINT."""
    # a stop asked for while we start (the health check, opening the database) is a clean stop, not a death by
    # the signal's default action (exit -15, nothing flushed, nothing logged)
    early_stop = threading.Event()
    _on_stop_signals(early_stop.set)
    from .service import Gapless

    from .replay import ReplayClient
    try:
        ReplayClient(settings.tardis_url, timeout=(5.0, 10.0)).health_check()
    except GaplessError as exc:
        # not fatal for a service: tardis-machine may come up after us; healing retries
        log.warning("%s; will keep trying", exc)
    gapless = Gapless.from_settings(settings)
    _on_stop_signals(gapless.stop_event.set)
    if early_stop.is_set():  # (checked after the hand-over: a signal in between sets the one or the other)
        log.info("stop asked for while starting")
        gapless.stop_event.set()
    return gapless.run(install_signals=False)


def _on_stop_signals(callback):
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: callback())


def cmd_status(args, settings, now_us, gaps_only=False):
    """``status`` / ``gaps``: read the database and print per-stream coverage and gaps."""
    import json

    from .status import format_status, status_report
    from .storage import Storage

    storage = Storage(settings.database_url, create=False)
    try:
        groups = [(g.exchange, symbols, types) for g in settings.streams for symbols, types in g.filters]
        horizons = {g.exchange: stored_horizon(storage, g.exchange, settings.history_delay) for g in settings.streams}
        report = status_report(storage, groups, settings.lookback, horizons, now_us)
    finally:
        storage.close()
    if gaps_only:
        report = {"now": report["now"], "window": report["window"], "streams": [
            {k: s[k] for k in ("exchange", "symbol", "data_type", "gaps")} for s in report["streams"]]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_status(report, gaps_only=gaps_only))
    return 0


def cmd_plot(args, settings, now_us):
    """``plot``: draw the coverage picture of [--from, --to) (default: the lookback window) to --out."""
    from .plot import check_png_path, draw_coverage
    from .series import Reader
    from .status import SETTLE_US, stream_status
    from .storage import Storage

    check_png_path(args.out, "--out")
    if args.from_:
        start, end = _time_range(args, now_us)
    else:
        end = ceil_minute(parse_time_arg(args.to, "--to")) if args.to else floor_minute(now_us - SETTLE_US)
        start = end - ceil_minute(settings.lookback)
    if (end - start) // MINUTE_US > 400 * 24 * 60:
        raise UsageError("--from/--to: %d days is too long for one picture" % ((end - start) // (1440 * MINUTE_US)))
    storage = Storage(settings.database_url, create=False)
    try:
        streams = [s for g in settings.streams for s in g.streams]
        with Reader(storage, streams) as reader:
            frames = _group_frames(storage, settings.streams, start, end, reader=reader)
            gaps = []
            for key in frames:
                exchange, symbol, data_type = _full_key(settings, key)
                delay = stored_horizon(storage, exchange, settings.history_delay)["delay"]
                claim_limit = floor_minute(now_us - delay) - MINUTE_US
                gaps += [dict(gap, exchange=exchange, symbol=symbol, data_type=data_type)
                         for gap in stream_status(reader, exchange, symbol, data_type, start, end, claim_limit,
                                                  now_us)["gaps"]]
    finally:
        storage.close()
    picture = draw_coverage(frames, gaps, args.out, title="gapless %s" % "+".join(g.exchange for g in settings.streams))
    missing = sum(int(frame["missing"].sum()) for frame in frames.values())
    print("wrote %s (%dx%d): %d stream(s), %d minute(s), %d missing" % (
        args.out, picture.width, picture.height, len(frames), (end - start) // MINUTE_US, missing))
    return 0


def _group_frames(storage, groups, start, end, **kwargs):
    """Series of every group: keyed ``(symbol, data_type)`` with one exchange, else ``(exchange, symbol, data_type)``."""
    from .stitch import series
    frames = {}
    for g in groups:
        for symbols, types in g.filters:  # exactly the streams kept (an exchange in several groups)
            for (symbol, data_type), frame in series(storage, g.exchange, symbols, parse_data_types(types), start, end,
                                                     **kwargs).items():
                frames[(symbol, data_type) if len(groups) == 1 else (g.exchange, symbol, data_type)] = frame
    return frames


def _full_key(settings, key):
    return key if len(key) == 3 else (settings.exchange,) + tuple(key)


def cmd_gaps(args, settings, now_us):
    """``gaps``: the gaps only."""
    return cmd_status(args, settings, now_us, gaps_only=True)


COMMANDS = {"download": cmd_download, "series": cmd_series, "serve": cmd_serve, "status": cmd_status,
            "gaps": cmd_gaps, "plot": cmd_plot, "follow": cmd_follow}


def main(argv=None, now=None):
    """Entry point of ``python run.py``. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging("INFO")
    secrets = []
    try:
        parser = build_parser()
        if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help") and argv[0].startswith("-"):
            argv = ["serve"] + argv
        args = parser.parse_args(argv)
        command = COMMANDS.get(args.command)
        if command is None:
            raise UsageError("unknown command %r (try --help)" % (args.command,))
        settings = _settings(args)
        if args.command != "download":  # download stores any data type; everything else makes minute series
            for group in settings.streams:
                check_series_types(group.data_types, "--data-types / GAPLESS_DATA_TYPES" if len(settings.streams) == 1
                                   else "--streams / GAPLESS_STREAMS (%s)" % group.exchange)
        setup_logging(settings.log_level)
        secrets = [settings.api_key, url_password(settings.database_url)]
        install_secret_filter(secrets)
        for warning in settings.warnings:
            log.warning(warning)
        now_us = to_us(now()) if now else make_clock(settings.test_clock)()
        return command(args, settings, now_us)
    except UsageError as exc:
        print("gapless: error: %s" % (redact(str(exc), secrets),), file=sys.stderr)
        return 2
    except GaplessError as exc:
        print("gapless: error: %s" % (redact(str(exc), secrets),), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gapless: interrupted", file=sys.stderr)
        return 130


def main_entry():
    """The ``gapless`` console command of an installed package (``pip install .``): ``main()`` as exit status."""
    sys.exit(main())
