"""Many streams in one picture: one summary band per data type instead of a band per stream.

A band per stream stays readable up to about a dozen streams; an option chain has hundreds. Beyond
:data:`MAX_BANDS` streams, the streams of each (exchange, data type) become one band whose minute shows the worst
source of its streams (missing if any stream misses it, else live if any is live, else replay), above a panel
with the number of streams missing in each minute. A minute outside a stream (after an option's expiration) does
not count for it. Gaps are summed up the same way: one entry per stretch in which some stream of the group misses
minutes, named with the reasons met.
"""
import numpy as np
import pandas as pd

from .intervals import mask_runs
from .timeutil import MINUTE_US

MAX_BANDS = 12
_RANK = {"replay": 0, "live": 1, "missing": 2}
_SOURCES = np.array(["replay", "live", "missing"], dtype=object)


def grouped(frames, gaps):
    """``(frames, gaps)`` as drawn: unchanged up to :data:`MAX_BANDS` streams, else one summary per data type
    keyed ``(exchange, data_type, "<n> streams")`` (the exchange only when there are several)."""
    if len(frames) <= MAX_BANDS:
        return frames, gaps
    groups = {}
    for key in frames:
        exchange, data_type = (key[0], key[2]) if len(key) == 3 else (None, key[1])
        groups.setdefault((exchange, data_type), []).append(key)
    summary, summary_gaps = {}, []
    for (exchange, data_type), keys in groups.items():
        label = "%d stream%s" % (len(keys), "" if len(keys) == 1 else "s")
        key = (exchange, data_type, label) if exchange is not None else (data_type, label)
        summary[key] = _worst([frames[k] for k in keys])
        summary_gaps += _gaps_of(summary[key], [g for g in gaps if _group_of(g) == (exchange, data_type)
                                                or (exchange is None and g["data_type"] == data_type)], key)
    return summary, summary_gaps


def _group_of(gap):
    return gap.get("exchange"), gap["data_type"]


def _worst(frames):
    """One frame: per minute the worst source of ``frames`` and how many of them miss it."""
    index = None
    for frame in frames:
        index = frame.index if index is None else index.union(frame.index)
    rank = np.zeros(len(index), dtype=np.int64)
    missing = np.zeros(len(index), dtype=np.int64)
    for frame in frames:
        codes = frame["source"].map(_RANK).fillna(_RANK["missing"]).astype(np.int64).reindex(index)
        present = codes.notna().to_numpy()  # minutes outside this stream (after an expiration) do not count
        values = codes.fillna(0).to_numpy(dtype=np.int64)
        rank = np.where(present, np.maximum(rank, values), rank)
        missing += (present & (values == _RANK["missing"])).astype(np.int64)
    return pd.DataFrame({"missing_streams": missing.astype(float), "source": _SOURCES[rank],
                         "missing": rank == _RANK["missing"]}, index=index)


def _gaps_of(frame, gaps, key):
    """The group's gaps: each stretch of minutes some stream misses, with the reasons of the gaps inside it."""
    out = []
    missing = frame["missing"].to_numpy(dtype=bool)
    first = int(frame.index.as_unit("us").asi8[0]) if len(frame.index) else 0
    for a, b in mask_runs(missing, first, MINUTE_US):  # the group's frame has every minute of its span
        reasons = sorted({g["reason"] for g in gaps if _us(g["start"]) < b and _us(g["end"]) > a})
        # named like the band's key, (exchange,) symbol, data type: the picture looks gaps up by it
        out.append({"symbol": key[-2], "data_type": key[-1], "exchange": key[0] if len(key) == 3 else None,
                    "start": pd.Timestamp(a * 1000, tz="UTC").isoformat(), "end": pd.Timestamp(b * 1000, tz="UTC")
                    .isoformat(), "reason": ", ".join(reasons) or "missing"})
    return out


def _us(text):
    return int(pd.Timestamp(text).value // 1000)
