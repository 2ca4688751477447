"""Status and gaps: per stream, where every minute of the window comes from, and why a gap is a gap.

The minute sources are the stitched series' own (:func:`gapless.stitch.stitch_stream`), so ``status``,
``gaps``, the series and healing always agree. Read-only: safe beside a running service.

Per stream: minutes of the window from replay, from live, and missing; the gaps (maximal runs of
missing minutes) with their reason; the last live message; and the replay/live disagreements of the
last pass. The JSON form (``status --json``) is stable:

    {"now": ISO, "window": {"start": ISO, "end": ISO},
     "exchanges": [{"exchange": str, "history_delay_seconds": int, "history_delay_minutes": int,
                    "history_delay_measured_at": ISO or null, "history_watermark": ISO,
                    "history_not_yet_available": "error" | "empty" | "unknown"}],
     "history_delay_minutes": int, "history_watermark": ISO,      (the first exchange's, as before)
     "streams": [{"exchange", "symbol", "data_type",
                  "minutes": {"total", "replay", "live", "missing"},
                  "gapless": bool,
                  "gaps": [{"start": ISO, "end": ISO, "minutes": int, "reason": str, "healable": bool,
                            "retry_at": ISO or null}],
                  "last_live_message": ISO or null, "last_live_message_age_seconds": float or null,
                  "disagreements": {"compared": int, "count": int, "max_difference": float,
                                    "worst_minute": ISO or null, "worst_column": str or null,
                                    "rebuilt_at": ISO} or null,
                  "history_from_midnight": {"day": "YYYY-MM-DD", "last_asked": ISO, "reason": str,
                                            "requests": int} or null,
                  "error": str or null}]}

``history_from_midnight`` (book-derived types): the newest day asked from 00:00, when last and why (``cold``,
``day_over``, ``cached_empty``, ``gap_reached``, ``frontier``, ``upgrade``, ``disagreement``: see
:mod:`gapless.healing`), and how many such requests that day has cost; null before the first, or on a database
no service has opened since it learned to keep them.

Gap reasons, first that applies:

* ``history_outage``: tardis' own recording has a hole there (a ``disconnect`` in the replay) and no
  live recording covered it; history cannot fill it (``healable`` false; asked again once, after the
  day is over);
* ``disconnect``: an exchange disconnect ended the live recording before the gap;
* ``clock_step``: the clock of tardis-machine's host stepped back (its localTimestamps went back by more
  than the latency margin) and ended the live recording there; the next segment starts afresh after it;
* ``downtime``: the live recorder was not connected (stopped, crashed, dropped);
* ``unknown_state``: a source covers the minutes but never saw the state (no book snapshot yet);
* ``not_yet_available``: history cannot deliver it yet (past the history horizon) and nothing recorded it;
* ``history_cached_empty``: history sent nothing in these minutes, but a request with a filter set of its
  own has data: tardis-machine's cache holds them empty for the stream's filter set (asked too early, by
  anyone); they are asked again with a fresh filter set;
* ``no_data``: history was asked and sent nothing for this stream (an unknown symbol or a silent market);
  asked again after ``retry_at``;
* ``awaiting_evidence``: history was asked but cannot prove the minutes complete yet (a quiet stretch at a
  range's start or end); asked again after ``retry_at`` or when later data arrives;
* ``not_downloaded``: history can deliver it; the next healing pass fetches it.

``healable`` is true when history can already deliver the whole gap and nothing says asking again is
pointless now.
"""
import numpy as np

from .contract import clip_to_life, life_end
from .healing_state import latest_asked
from .horizon import watermark_of
from .intervals import mask_runs
from .series import Reader, covered_minutes
from .stitch import stitch_stream
from .timeutil import MINUTE_US, US, ceil_minute, floor_minute, iso

REASON_WINDOW_US = 2 * MINUTE_US
# a minute is settled (complete in live data) a few seconds after it ends: see ingest.LATENCY_MARGIN_US
SETTLE_US = 10 * US
LEDGER_REASONS = {"history_outage": "history_outage", "no_data": "no_data", "unproven_start": "awaiting_evidence",
                  "quiet_tail": "awaiting_evidence", "history_cached_empty": "history_cached_empty",
                  "unverified_quiet": "awaiting_evidence"}


def window(lookback_us, now_us):
    """``(start, end)`` µs of the window: the lookback up to the last settled minute."""
    end = floor_minute(now_us - SETTLE_US)
    return end - ceil_minute(lookback_us), end


def minute_sources(reader, exchange, symbol, data_type, start, end):
    """Per minute of ``[start, end)``: 'replay', 'live' or 'missing' (numpy array), as the series says."""
    frame = stitch_stream(reader, exchange, symbol, data_type, start, end).frame
    return frame["source"].to_numpy(dtype=object)


def gap_runs(sources, start):
    """Maximal runs of 'missing' as ``[(start_us, end_us), ...]``."""
    return mask_runs(np.asarray(sources) == "missing", start, MINUTE_US)


def gap_reason(rows, ledger, gap_start, gap_end, claim_limit, now_us, covered_somewhere):
    """``(reason, healable, retry_at)`` of a gap, from its stream's coverage rows and ledger entries."""
    overlapping = [e for e in ledger if e["start"] < gap_end and e["end"] > gap_start]
    if any(e["reason"] == "history_outage" for e in overlapping):
        entry = next(e for e in overlapping if e["reason"] == "history_outage")
        return "history_outage", False, entry["retry_at"]
    cached = [e for e in overlapping if e["reason"] == "history_cached_empty"]
    if cached:
        # tardis-machine's cache holds these minutes empty for the stream's filter set: asked fresh
        return "history_cached_empty", gap_end <= claim_limit, min(e["retry_at"] for e in cached)
    before = [r for r in rows if gap_start - REASON_WINDOW_US <= r["end"] <= gap_start + MINUTE_US]
    if any(r["source"] == "replay" and r["end_reason"] == "disconnect" for r in before) and \
            not any(r["source"] == "live" for r in before):
        return "history_outage", False, None  # the history recorder's own disconnect, nothing recorded it live
    if any(r["source"] == "live" and r["end_reason"] == "disconnect" for r in before):
        return "disconnect", gap_end <= claim_limit, None
    if any(r["source"] == "live" and r["end_reason"] == "clock_step" for r in before):
        return "clock_step", gap_end <= claim_limit, None
    if any(r["source"] == "live" for r in before):
        # the recorder was connected up to the gap and then was not (stopped, killed, dropped, stale)
        return "downtime", gap_end <= claim_limit, None
    if covered_somewhere:
        return "unknown_state", gap_end <= claim_limit, None
    if gap_end > claim_limit:
        return "not_yet_available", False, None
    waiting = [e for e in overlapping if e["retry_at"] > now_us]
    if waiting:
        entry = min(waiting, key=lambda e: e["retry_at"])
        return LEDGER_REASONS.get(entry["reason"], "awaiting_evidence"), False, entry["retry_at"]
    return "not_downloaded", True, None


def ledger_entries(storage, exchange, symbol, data_type):
    """The replay ledger entries of one stream (dicts), or [] on a database without the ledger."""
    if not storage.has_table("replay_ledger"):
        return []
    model = storage.models["replay_ledger"]
    return list(model.select().where((model.exchange == exchange) & (model.symbol == symbol)
                                     & (model.data_type == data_type)).dicts())


def stream_status(reader, exchange, symbol, data_type, start, end, claim_limit, now_us, rebuilds=None):
    """The status dict of one stream (see the module docstring)."""
    storage = reader.storage
    expires = life_end(exchange, symbol)
    start, end = clip_to_life(exchange, symbol, start, end)  # an expired option's minutes are outside the stream
    stitched = stitch_stream(reader, exchange, symbol, data_type, start, end)
    sources = stitched.frame["source"].to_numpy(dtype=object)
    rows = storage.coverage_rows(exchange, symbol, data_type)
    ledger = ledger_entries(storage, exchange, symbol, data_type)
    intervals = {s: reader.covered(exchange, symbol, data_type, s) for s in ("replay", "live")}
    gaps = []
    for gap_start, gap_end in gap_runs(sources, start):
        somewhere = any((covered_minutes(intervals[s], gap_start, gap_end) >= 0).any() for s in intervals)
        reason, healable, retry_at = gap_reason(rows, ledger, gap_start, gap_end, claim_limit, now_us, somewhere)
        gaps.append({"start": iso(gap_start), "end": iso(gap_end), "minutes": (gap_end - gap_start) // MINUTE_US,
                     "reason": reason, "healable": bool(healable),
                     "retry_at": iso(retry_at) if retry_at and retry_at < 2 ** 62 else None})
    last_live = last_live_message(storage, exchange, symbol, data_type)
    counts = {name: int((sources == name).sum()) for name in ("replay", "live", "missing")}
    counts["total"] = int(len(sources))
    result = (rebuilds or {}).get((exchange, symbol, data_type))
    return {
        "exchange": exchange, "symbol": symbol, "data_type": data_type,
        "minutes": counts, "gapless": counts["missing"] == 0, "gaps": gaps,
        "last_live_message": iso(last_live) if last_live else None,
        "last_live_message_age_seconds": round((now_us - last_live) / US, 3) if last_live else None,
        "disagreements": result["disagreements"] if result else None,
        "history_from_midnight": latest_asked(storage, exchange, symbol, data_type),
        "error": result["error"] if result else None,
        "expires": iso(expires) if expires is not None else None,
        "expired": expires is not None and expires <= now_us,
    }


def last_live_message(storage, exchange, symbol, data_type):
    """localTimestamp (µs) of the newest live row of a stream, or None."""
    from .datatypes import parse_data_type
    parsed = parse_data_type(data_type)
    row = storage.last_row_before(parsed.table, exchange, symbol, data_type, "live", 2 ** 62, 0,
                                  columns=["local_timestamp"])
    return row[0] if row else None


def rebuild_results(storage):
    """Results of the last publishing pass per stream (empty before the first one)."""
    if not storage.has_table("stream_status"):
        return {}
    model = storage.models["stream_status"]
    results = {}
    for row in model.select().dicts():
        results[(row["exchange"], row["symbol"], row["data_type"])] = {
            "error": row.get("error"),
            "disagreements": {
                "compared": row["compared"], "count": row["disagreements"], "max_difference": row["max_difference"],
                "worst_minute": iso(row["worst_minute"]) if row["worst_minute"] is not None else None,
                "worst_column": row["worst_column"], "rebuilt_at": iso(row["rebuilt_at"])}}
    return results


def status_report(storage, groups, lookback_us, horizons, now_us, reader=None):
    """The whole status document.

    ``groups``: ``[(exchange, symbols, data_types)]`` (an exchange may come in several: exactly their streams);
    ``horizons``: ``{exchange: state dict}`` with ``delay`` (µs) and optionally ``measured_at`` (µs) — see
    :class:`gapless.horizon.HistoryHorizon`.
    """
    if reader is None:
        with Reader(storage, [(e, s, d) for e, symbols, types in groups for s in symbols for d in types]) as reader:
            return status_report(storage, groups, lookback_us, horizons, now_us, reader)
    start, end = window(lookback_us, now_us)
    rebuilds = rebuild_results(storage)
    exchanges, streams = [], []
    for exchange, symbols, data_types in groups:
        state = horizons.get(exchange) or {}
        delay = int(state.get("delay", 0))
        watermark = watermark_of(delay, state.get("mode", "error"), state.get("edge"), now_us)
        measured = state.get("measured_at")
        if not any(e["exchange"] == exchange for e in exchanges):  # an exchange in several groups: listed once
            exchanges.append({"exchange": exchange, "history_delay_seconds": delay // US,
                              "history_delay_minutes": delay // MINUTE_US,
                              "history_delay_measured_at": iso(measured) if measured else None,
                              "history_watermark": iso(watermark),
                              "history_not_yet_available": state.get("mode") or "unknown"})
        streams += [stream_status(reader, exchange, symbol, data_type, start, end, watermark - MINUTE_US, now_us,
                                  rebuilds)
                    for symbol in symbols for data_type in data_types]
    first = exchanges[0] if exchanges else {"history_delay_minutes": 0, "history_watermark": iso(now_us)}
    return {"now": iso(now_us), "window": {"start": iso(start), "end": iso(end)}, "exchanges": exchanges,
            "history_delay_minutes": first["history_delay_minutes"], "history_watermark": first["history_watermark"],
            "streams": streams}


def format_status(report, gaps_only=False):
    """Human-readable status (or gaps) text, grouped by exchange."""
    lines = []
    by_exchange = {}
    for stream in report["streams"]:
        by_exchange.setdefault(stream["exchange"], []).append(stream)
    if not gaps_only:
        lines.append("window %s .. %s (now %s)" % (report["window"]["start"], report["window"]["end"],
                                                   report["now"]))
    for info in report.get("exchanges", []):
        exchange = info["exchange"]
        if not gaps_only:
            measured = info.get("history_delay_measured_at")
            lines.append("%s: history delay %s%s, history up to %s; minutes not available yet come back %s" % (
                exchange, _delay_text(info["history_delay_seconds"]),
                " (measured %s)" % measured if measured else " (not measured yet)", info["history_watermark"],
                _MODE_TEXT.get(info.get("history_not_yet_available"), "(not seen yet)")))
        for stream in by_exchange.get(exchange, []):
            lines += _stream_lines(stream, gaps_only)
    if gaps_only and not any(s["gaps"] for s in report["streams"]):
        lines.append("no gaps")
    return "\n".join(lines)


_MODE_TEXT = {"error": "as an error", "empty": "EMPTY (requests stay below the proven edge)",
              "unknown": "(not seen yet: requests stay below the proven edge)"}


def _delay_text(seconds):
    return "%d min %02d s" % divmod(seconds, 60) if seconds >= 60 else "%d s" % seconds


def _midnight_text(asked):
    if not asked:
        return ""
    return "; history from 00:00 of %s asked %d time(s), last at %s (%s)" % (
        asked["day"], asked["requests"], asked["last_asked"], asked["reason"])


def _stream_lines(stream, gaps_only):
    lines = []
    m = stream["minutes"]
    head = "%s %s %s" % (stream["exchange"], stream["symbol"], stream["data_type"])
    if not gaps_only:
        age = stream["last_live_message_age_seconds"]
        dis = stream["disagreements"]
        lines.append("  %s: %s; minutes replay %d, live %d, missing %d of %d; last live message %s; "
                     "replay/live disagreements %s%s%s" % (
                         head, "GAPLESS" if stream["gapless"] else "%d gap(s)" % len(stream["gaps"]),
                         m["replay"], m["live"], m["missing"], m["total"],
                         "%.0fs ago" % age if age is not None else "never",
                         "%d of %d (largest %.6g)" % (dis["count"], dis["compared"], dis["max_difference"])
                         if dis else "not compared yet", _midnight_text(stream.get("history_from_midnight")),
                         "; PUBLISHING FAILED: %s" % stream["error"] if stream.get("error") else ""))
        if stream.get("expired"):
            lines[-1] += "; EXPIRED at %s (the minutes after it are outside the stream)" % stream["expires"]
    for gap in stream["gaps"]:
        lines.append("%sgap %s .. %s (%d min): %s%s%s" % (
            "    " if not gaps_only else head + " ", gap["start"], gap["end"], gap["minutes"], gap["reason"],
            ", healable now" if gap["healable"] else "",
            ", asking again after %s" % gap["retry_at"] if gap.get("retry_at") else ""))
    return lines
