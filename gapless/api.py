"""``get_data_without_gap``: the blocking library call for legacy synchronous code."""
import logging
import time
import warnings

from .config import load_settings
from .service import Gapless
from .timeutil import MINUTE_US, iso

log = logging.getLogger(__name__)


class GapWarning(UserWarning):
    """The series returned still has missing minutes (the warm-up ended before it became gapless)."""


def get_data_without_gap(exchange, symbols, data_types, lookback="1d", recording_warmup_seconds=1200.0, *,
                         database_url=None, tardis_url=None, tardis_ws_url=None, api_key=None, history_delay=None,
                         workers=0, concurrency=None, poll_seconds=2.0, now=None, recorder_options=None):
    """Record, download history and wait until the minute series is gapless up to now; return it.

    Blocks. Starts recording ``exchange``'s ``symbols`` and ``data_types`` (lists or comma-separated),
    downloads history for ``lookback`` (``"7d"``, ``"90m"``, seconds...), and waits until every minute of
    ``[now - lookback, now)`` comes from replay or live data, or until ``recording_warmup_seconds`` have
    passed: then it returns what it has, with the missing minutes flagged, and warns (:class:`GapWarning`).
    Everything it started is stopped before it returns.

    Returns a dict ``{(symbol, data_type): DataFrame}``: one frame per stream, indexed by minute start
    (tz-aware UTC), with the stream's value columns plus ``source`` ("replay", "live" or "missing")
    and ``missing`` (bool). Settings not given here come from ``GAPLESS_*`` variables / ``.env``.
    Downloads run in the calling process unless ``workers`` > 0 (worker processes re-import the
    caller's main module, which must then be guarded by ``if __name__ == "__main__":``).
    """
    settings = load_settings(exchange=exchange, symbols=_joined(symbols), data_types=_joined(data_types),
                             lookback=lookback, database_url=database_url, tardis_url=tardis_url,
                             tardis_ws_url=tardis_ws_url, api_key=api_key, history_delay=history_delay,
                             workers=workers, concurrency=concurrency)
    for message in settings.warnings:
        log.warning(message)
    options = {"now": now} if now else {}
    if recorder_options:
        options["recorder_options"] = recorder_options
    gapless = Gapless.from_settings(settings, **options)
    deadline = time.monotonic() + float(recording_warmup_seconds)
    gapless.recorder.start()
    try:
        frames = None
        while True:
            gapless.heal()
            frames = gapless.series()
            if gapless.is_gapless(frames):
                log.info("series is gapless over %s .. %s", *map(iso, gapless.window()))
                return frames
            if not gapless.recorder.is_alive():
                raise gapless.recorder.error or RuntimeError("recorder stopped")
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
        text = ", ".join("%s %s: %d" % (s, d, n) for (s, d), n in sorted(missing.items()))
        delay = gapless.horizon.state()["delay"]
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


def _joined(value):
    if value is None or isinstance(value, str):
        return value
    return ",".join(str(v) for v in value)

