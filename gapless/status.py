"""Status and gaps, computed from the coverage table (read-only, cheap, safe beside a running service).

Per stream: minutes of the window covered by replay, by live only, and missing; the gaps (maximal
runs of missing minutes) with the reason when it is known; the last live message; and the replay/live
disagreements found by the last rebuild. The JSON form (``status --json``) is stable:

    {"now": ISO, "window": {"start": ISO, "end": ISO}, "history_delay_minutes": int,
     "history_watermark": ISO,
     "streams": [{"exchange", "symbol", "data_type",
                  "minutes": {"total", "replay", "live", "missing"},
                  "gapless": bool,
                  "gaps": [{"start": ISO, "end": ISO, "minutes": int, "reason": str, "healable": bool}],
                  "last_live_message": ISO or null, "last_live_message_age_seconds": float or null,
                  "disagreements": {"compared": int, "count": int, "max_difference": float,
                                    "worst_minute": ISO or null, "worst_column": str or null} or null}]}

Gap reasons: ``disconnect`` (an exchange disconnect ended the coverage before the gap), ``downtime``
(the recorder was not connected: stopped, crashed, dropped), ``not_yet_available`` (history cannot
deliver it yet and nothing recorded it), ``not_downloaded`` (history can deliver it; the next healing
pass fetches it). ``healable`` is true when history can already deliver the whole gap.
"""
import numpy as np

from .series import covered_minutes
from .timeutil import MINUTE_US, US, ceil_minute, floor_minute, iso

REASON_WINDOW_US = 2 * MINUTE_US


def minute_sources(storage, exchange, symbol, data_type, start, end):
    """Per minute of ``[start, end)``: 'replay', 'live' or 'missing' (from coverage), as a numpy array."""
    replay = covered_minutes(storage.covered(exchange, symbol, data_type, "replay"), start, end) >= 0
    live = covered_minutes(storage.covered(exchange, symbol, data_type, "live"), start, end) >= 0
    return np.where(replay, "replay", np.where(live, "live", "missing"))


def gap_runs(sources, start):
    """Maximal runs of 'missing' as ``[(start_us, end_us), ...]``."""
    missing = np.asarray(sources) == "missing"
    runs = []
    i, n = 0, len(missing)
    while i < n:
        if missing[i]:
            j = i
            while j < n and missing[j]:
                j += 1
            runs.append((start + i * MINUTE_US, start + j * MINUTE_US))
            i = j
        else:
            i += 1
    return runs


def gap_reason(rows, gap_start, gap_end, claim_limit):
    """Why a gap exists, from the coverage rows of its stream (both sources)."""
    before = [r for r in rows if gap_start - REASON_WINDOW_US <= r["end"] <= gap_start + MINUTE_US]
    live_before = [r for r in before if r["source"] == "live"]
    if any(r["end_reason"] == "disconnect" for r in before):
        return "disconnect"
    if live_before:
        # the recorder was connected up to the gap and then was not (stopped, killed, dropped, stale)
        return "downtime"
    if gap_end > claim_limit:
        return "not_yet_available"
    return "not_downloaded"


def stream_status(storage, exchange, symbol, data_type, start, end, claim_limit, now_us, rebuilds=None):
    """The status dict of one stream (see the module docstring)."""
    sources = minute_sources(storage, exchange, symbol, data_type, start, end)
    rows = storage.coverage_rows(exchange, symbol, data_type)
    gaps = []
    for gap_start, gap_end in gap_runs(sources, start):
        gaps.append({"start": iso(gap_start), "end": iso(gap_end), "minutes": (gap_end - gap_start) // MINUTE_US,
                     "reason": gap_reason(rows, gap_start, gap_end, claim_limit),
                     "healable": gap_end <= claim_limit})
    last_live = last_live_message(storage, exchange, symbol, data_type)
    counts = {name: int((sources == name).sum()) for name in ("replay", "live", "missing")}
    counts["total"] = int(len(sources))
    comparison = (rebuilds or {}).get((exchange, symbol, data_type))
    return {
        "exchange": exchange, "symbol": symbol, "data_type": data_type,
        "minutes": counts, "gapless": counts["missing"] == 0, "gaps": gaps,
        "last_live_message": iso(last_live) if last_live else None,
        "last_live_message_age_seconds": round((now_us - last_live) / US, 3) if last_live else None,
        "disagreements": comparison,
    }


def last_live_message(storage, exchange, symbol, data_type):
    """localTimestamp (µs) of the newest live row of a stream, or None."""
    from .datatypes import parse_data_type
    parsed = parse_data_type(data_type)
    row = storage.last_row_before(parsed.table, exchange, symbol, data_type, "live", 2 ** 62, 0,
                                  columns=["local_timestamp"])
    return row[0] if row else None


def rebuild_results(storage):
    """Disagreement results of the last rebuild per stream (empty before the first rebuild)."""
    if not storage.has_table("stream_status"):
        return {}
    from .stitch import make_series_models
    _, status_model = make_series_models(storage.db)
    results = {}
    for row in status_model.select().dicts():
        results[(row["exchange"], row["symbol"], row["data_type"])] = {
            "compared": row["compared"], "count": row["disagreements"], "max_difference": row["max_difference"],
            "worst_minute": iso(row["worst_minute"]) if row["worst_minute"] is not None else None,
            "worst_column": row["worst_column"], "rebuilt_at": iso(row["rebuilt_at"])}
    return results


def status_report(storage, exchange, symbols, data_types, lookback_us, delay_us, now_us):
    """The whole status document for a configuration (see the module docstring)."""
    end = floor_minute(now_us - SETTLE_US)
    start = end - ceil_minute(lookback_us)
    watermark = floor_minute(now_us - delay_us)
    rebuilds = rebuild_results(storage)
    streams = [stream_status(storage, exchange, symbol, data_type, start, end, watermark - MINUTE_US, now_us,
                             rebuilds)
               for symbol in symbols for data_type in data_types]
    return {"now": iso(now_us), "window": {"start": iso(start), "end": iso(end)},
            "history_delay_minutes": delay_us // MINUTE_US, "history_watermark": iso(watermark),
            "streams": streams}


# a minute is settled (complete in live data) a few seconds after it ends: see ingest.LATENCY_MARGIN_US
SETTLE_US = 10 * US


def format_status(report, gaps_only=False):
    """Human-readable status (or gaps) text."""
    lines = []
    if not gaps_only:
        lines.append("window %s .. %s (now %s); history delay %d min, history up to %s" % (
            report["window"]["start"], report["window"]["end"], report["now"], report["history_delay_minutes"],
            report["history_watermark"]))
    for stream in report["streams"]:
        m = stream["minutes"]
        head = "%s %s %s" % (stream["exchange"], stream["symbol"], stream["data_type"])
        if not gaps_only:
            age = stream["last_live_message_age_seconds"]
            dis = stream["disagreements"]
            lines.append("%s: %s; minutes replay %d, live %d, missing %d of %d; last live message %s; "
                         "replay/live disagreements %s" % (
                             head, "GAPLESS" if stream["gapless"] else "%d gap(s)" % len(stream["gaps"]),
                             m["replay"], m["live"], m["missing"], m["total"],
                             "%.0fs ago" % age if age is not None else "never",
                             "%d of %d (largest %.6g)" % (dis["count"], dis["compared"], dis["max_difference"])
                             if dis else "not compared yet"))
        for gap in stream["gaps"]:
            lines.append("%sgap %s .. %s (%d min): %s%s" % (
                "  " if not gaps_only else head + " ", gap["start"], gap["end"], gap["minutes"], gap["reason"],
                ", healable now" if gap["healable"] else ""))
    if gaps_only and not any(s["gaps"] for s in report["streams"]):
        lines.append("no gaps")
    return "\n".join(lines)
