"""``get_data_without_gap``: the blocking library call for legacy synchronous code."""
import logging
import time
import warnings

from .config import load_settings
from .exceptions import UsageError
from .service import Gapless
from .streams import StreamGroup
from .timeutil import iso

log = logging.getLogger(__name__)


class GapWarning(UserWarning):
    """The series returned still has missing minutes (the warm-up ended before it became gapless)."""


def get_data_without_gap(exchange=None, symbols=None, data_types=None, lookback="1d",
                         recording_warmup_seconds=1200.0, *, streams=None, database_url=None, tardis_url=None, tardis_ws_url=None, api_key=None, history_delay=None,
                         workers=0, concurrency=None, poll_seconds=2.0, now=None, recorder_options=None, upgrade=None):
    """Record, download history and wait until the minute series is gapless up to now; return it.

    Blocks. Starts recording ``exchange``'s ``symbols`` and ``data_types`` (lists or comma-separated),
    downloads history for ``lookback`` (``"7d"``, ``"90m"``, seconds...), and waits until every minute of
    ``[now - lookback, now)`` comes from replay or live data, or until ``recording_warmup_seconds`` have
    passed: then it returns what it has, with the missing minutes flagged, and warns (:class:`GapWarning`).
    Everything it started is stopped before it returns.

    Several exchanges at once: ``streams="deribit:BTC-PERPETUAL:quote_1m;binance-futures:BTCUSDT:trade"``
    (or a list of ``(exchange, symbols, data_types)``) instead of the first three arguments.

    Returns a dict ``{(symbol, data_type): DataFrame}`` (``{(exchange, symbol, data_type): DataFrame}`` with
    several exchanges): one frame per stream, indexed by minute start (tz-aware UTC), with the stream's value columns plus ``source`` ("replay", "live" or "missing")
    and ``missing`` (bool). Settings not given here come from ``GAPLESS_*`` variables / ``.env`` (e.g.
    ``upgrade="hourly"``: ``GAPLESS_UPGRADE``). A running service on the same database is not asked again for what
    it already asks: when book days were last asked from 00:00 is kept in the database (see :mod:`gapless.healing`).
    Downloads run in the calling process unless ``workers`` > 0 (worker processes re-import the
    caller's main module, which must then be guarded by ``if __name__ == "__main__":``).
    """
    if streams is None and (exchange is None or symbols is None or data_types is None):
        raise UsageError("get_data_without_gap: give exchange, symbols and data_types, or streams")
    settings = load_settings(exchange=exchange, symbols=_joined(symbols), data_types=_joined(data_types),
                             streams=_streams_text(streams), lookback=lookback, database_url=database_url, tardis_url=tardis_url,
                             tardis_ws_url=tardis_ws_url, api_key=api_key, history_delay=history_delay,
                             workers=workers, concurrency=concurrency, upgrade=upgrade)
    for message in settings.warnings:
        log.warning(message)
    options = {"now": now} if now else {}
    if recorder_options:
        options["recorder_options"] = recorder_options
    gapless = Gapless.from_settings(settings, **options)
    deadline = time.monotonic() + float(recording_warmup_seconds)
    for feed in gapless.feeds:
        feed.recorder.start()
    try:
        frames = None
        while True:
            gapless.heal()
            frames = gapless.series()
            if gapless.is_gapless(frames):
                log.info("series is gapless over %s .. %s", *map(iso, gapless.window()))
                return frames
            for feed in gapless.feeds:
                if not feed.recorder.is_alive():
                    raise feed.recorder.error or RuntimeError("the %s recorder stopped" % feed.exchange)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # the next pass: soon (the live recording grows), or right when history reaches the gap
            wait = min(poll_seconds, remaining)
            due = gapless.next_pass_due()
            reach = gapless.wall_seconds_until(due) if due is not None else None
            if reach is not None and 0 < reach < wait:
                wait = reach
            time.sleep(max(0.05, wait))
        missing = {key: int(frame["missing"].sum()) for key, frame in frames.items() if frame["missing"].any()}
        text = ", ".join("%s: %d" % (" ".join(key), n) for key, n in sorted(missing.items()))
        delay = max(feed.horizon.state()["delay"] for feed in gapless.feeds)
        message = ("get_data_without_gap: still %d missing minute(s) after the %.0fs warm-up (%s); they are "
                   "flagged (missing=True, source='missing'), not filled. History reaches now minus %.0fs "
                   "(measured); the recording must overlap it, so a warm-up of at least the history delay plus "
                   "two minutes is needed after a cold start." % (sum(missing.values()), recording_warmup_seconds,
                                                                  text, delay / 1e6))
        log.warning(message)
        warnings.warn(message, GapWarning, stacklevel=2)
        return frames
    finally:
        gapless.stop()


def _streams_text(streams):
    """``GAPLESS_STREAMS`` text from text, stream groups or ``(exchange, symbols, data_types)`` triples."""
    if streams is None or isinstance(streams, str):
        return streams
    groups = [streams] if isinstance(streams, StreamGroup) else streams
    return ";".join(str(g) if isinstance(g, StreamGroup) else "%s:%s:%s" % (g[0], _joined(g[1]), _joined(g[2]))
                    for g in groups)


def _joined(value):
    if value is None or isinstance(value, str):
        return value
    return ",".join(str(v) for v in value)

