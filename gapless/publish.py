"""Publishing the stitched series into ``minute_series`` incrementally, and exporting it.

A pass recomputes only what can have changed since the last one: the minutes whose aggregates or
coverage changed (``dirty_series``, written by the minute store), the minutes whose carried state
depends on those (up to the next minute with data of its own), and the minutes that entered the
window; minutes that left the window are deleted. Each stream's changes, its per-minute replay/live
comparison (``minute_compare``) and its ``stream_status`` row are written in ONE transaction, so a
reader sees a stream before or after a pass, never half of it.

A stream that fails to publish is logged and reported in ``stream_status.error``; the others are
published all the same.
"""
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field

import pandas as pd

from .datatypes import parse_data_type
from .schema import SERIES_VALUES
from .series import Reader, to_long
from .stitch import Comparison, stitch_stream
from .timeutil import MINUTE_US, US, ceil_minute, floor_minute, iso

log = logging.getLogger(__name__)

SERIES_COLUMNS = ["exchange", "symbol", "data_type", "minute", "source", "missing"] + list(SERIES_VALUES)


@dataclass
class StreamResult:
    """One stream after a pass: minutes by source over the window, the comparison, or the error."""

    minutes: dict = field(default_factory=dict)
    comparison: Comparison = field(default_factory=Comparison)
    published: int = 0
    error: str = None


@dataclass
class RebuildReport:
    """Result of one publishing pass."""

    streams: dict = field(default_factory=dict)  # {(exchange, symbol, data_type): StreamResult}
    seconds: float = 0.0

    @property
    def comparisons(self):
        """``{(symbol, data_type): Comparison}`` (the exchange left out when there is only one)."""
        return {_short(self.streams, key): r.comparison for key, r in self.streams.items()}

    @property
    def missing(self):
        """Missing minutes over every stream's window."""
        return sum(r.minutes.get("missing", 0) for r in self.streams.values())

    @property
    def gapless(self):
        """True when no minute of any stream is missing and every stream was published."""
        return self.missing == 0 and not any(r.error for r in self.streams.values())


def _short(streams, key):
    return key[1:] if len({k[0] for k in streams}) == 1 else key


def publish(storage, streams, start, end, now_us=None, full=False, errors=None):
    """Publish ``streams`` (``[(exchange, symbol, data_type)]``) over the window ``[start, end)``.

    Only what changed is recomputed (``full`` recomputes the whole window). ``errors``: streams whose minute
    store could not be refreshed (they keep what was published, marked with the error). Returns a
    RebuildReport.

    Everything is computed from one snapshot of the database (the recorder keeps writing meanwhile: a
    claim must never be read without the rows it claims), then each stream is written in its own
    transaction.
    """
    began = time.monotonic()
    start, end = floor_minute(start), ceil_minute(end)
    now_us = now_us or int(time.time() * US)
    report = RebuildReport()
    planned = {}
    with Reader(storage, [tuple(s) for s in streams]) as reader:
        for exchange, symbol, name in streams:
            key = (exchange, symbol, name)
            if errors and key in errors:
                continue
            try:
                planned[key] = _plan_stream(storage, reader, key, start, end, full)
            except Exception as exc:  # one stream's failure must not keep the others from being published
                log.exception("publishing %s %s %s failed", *key)
                report.streams[key] = StreamResult(error="%s: %s" % (exc.__class__.__name__, exc))
    for exchange, symbol, name in streams:
        key = (exchange, symbol, name)
        if errors and key in errors:
            report.streams[key] = StreamResult(error=errors[key])
        elif key in planned:
            try:
                report.streams[key] = _write_stream(storage, key, start, end, now_us, *planned[key])
                continue
            except Exception as exc:
                log.exception("publishing %s %s %s failed", *key)
                report.streams[key] = StreamResult(error="%s: %s" % (exc.__class__.__name__, exc))
        _record_error(storage, key, start, end, now_us, report.streams[key].error)
    report.seconds = time.monotonic() - began
    return report


def _plan_stream(storage, reader, key, start, end, full):
    """What to (re)write for one stream: ``(ranges, series rows, comparison rows, dirty ids consumed)``."""
    exchange, symbol, name = key
    data_type = parse_data_type(name)
    status, dirty = storage.models["stream_status"], storage.models["dirty_series"]
    where = lambda m: (m.exchange == exchange) & (m.symbol == symbol) & (m.data_type == name)  # noqa: E731
    previous = status.get_or_none(where(status))
    marks = list(dirty.select(dirty.id, dirty.lo, dirty.hi).where(where(dirty)).tuples())
    if full or previous is None or previous.window_end <= start or previous.window_start >= end:
        ranges = [(start, end)]
    else:
        ranges = [(lo, hi) for _, lo, hi in marks]
        if start < previous.window_start:
            ranges.append((start, previous.window_start))
        if end > previous.window_end:
            ranges.append((previous.window_end, end))
        ranges = [_carry_extent(reader, key, data_type, lo, hi, end) for lo, hi in ranges]
    ranges = _merge([(max(lo, start), min(hi, end)) for lo, hi in ranges])
    rows, differences = [], []
    for lo, hi in ranges:
        result = stitch_stream(reader, exchange, symbol, data_type, lo, hi)
        rows += _series_rows(exchange, symbol, name, result.frame)
        differences += [(exchange, symbol, name, int(t.value // 1000), bool(d.differs), float(d.difference),
                         d.column) for t, d in result.differences.iterrows()]
    return ranges, rows, differences, [m[0] for m in marks]


def _write_stream(storage, key, start, end, now_us, ranges, rows, differences, ids):
    """Write one stream's changes, comparison and status, and consume its dirty marks, in one transaction."""
    exchange, symbol, name = key
    models = storage.models
    status, series, compare, dirty = (models["stream_status"], models["minute_series"], models["minute_compare"],
                                      models["dirty_series"])
    where = lambda m: (m.exchange == exchange) & (m.symbol == symbol) & (m.data_type == name)  # noqa: E731
    with storage.write_transaction():
        series.delete().where(where(series) & ((series.minute < start) | (series.minute >= end))).execute()
        compare.delete().where(where(compare) & ((compare.minute < start) | (compare.minute >= end))).execute()
        for lo, hi in ranges:
            series.delete().where(where(series) & (series.minute >= lo) & (series.minute < hi)).execute()
            compare.delete().where(where(compare) & (compare.minute >= lo) & (compare.minute < hi)).execute()
        storage.bulk_insert(series, SERIES_COLUMNS, rows)
        storage.bulk_insert(compare, ["exchange", "symbol", "data_type", "minute", "differs", "difference",
                                      "column"], differences)
        result = StreamResult(minutes=_counts(series, where), comparison=_comparison(compare, where),
                              published=len(rows))
        _upsert_status(status, key, start, end, now_us, result)
        for i in range(0, len(ids), 500):
            dirty.delete().where(dirty.id.in_(ids[i:i + 500])).execute()
    return result


def _carry_extent(reader, key, data_type, lo, hi, end):
    """``[lo, hi)`` widened to every minute whose carried state may depend on it.

    A quiet minute carries the state of the last minute with data of its own; so a change reaches up to
    the next minute that has its own data, in either source. A ticker minute carries every field it did
    not change itself, so a ticker change may reach the end of the window.
    """
    if data_type.family == "derivative_ticker":
        return lo, end
    reach = hi
    for source in ("replay", "live"):
        following = reader.store.first_at_or_after((key[0], key[1], key[2], source), hi, end)
        reach = max(reach, following + MINUTE_US if following is not None else end)
    return lo, min(reach, end)


def _merge(ranges):
    out = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _series_rows(exchange, symbol, name, frame):
    n = len(frame)
    minutes = frame.index.as_unit("us").asi8.tolist()
    values = []
    for column in SERIES_VALUES:
        if column in frame.columns:
            values.append([None if v != v else v for v in frame[column].to_numpy(dtype=float).tolist()])
        else:
            values.append([None] * n)
    return list(zip([exchange] * n, [symbol] * n, [name] * n, minutes, frame["source"].tolist(),
                    frame["missing"].astype(bool).tolist(), *values))


def _counts(series, where):
    counts = {"replay": 0, "live": 0, "missing": 0}
    from peewee import fn
    for source, count in series.select(series.source, fn.COUNT(series.minute)).where(where(series)).group_by(
            series.source).tuples():
        counts[source] = count
    return counts


def _comparison(compare, where):
    from peewee import fn
    result = Comparison()
    result.compared = compare.select().where(where(compare)).count()
    result.disagreements = compare.select().where(where(compare) & (compare.differs == True)).count()  # noqa
    worst = (compare.select(compare.minute, compare.difference, compare.column)
             .where(where(compare) & (compare.differs == True))  # noqa: E712
             .order_by(compare.difference.desc(), compare.minute).limit(1).tuples())
    for minute, difference, column in worst:
        result.max_difference = float(difference)
        result.worst_minute = pd.Timestamp(minute * 1000, tz="UTC")
        result.worst_column = column
    del fn
    return result


def _upsert_status(status, key, start, end, now_us, result, error=None):
    exchange, symbol, name = key
    c = result.comparison
    values = dict(
        exchange=exchange, symbol=symbol, data_type=name, window_start=start, window_end=end,
        minutes_replay=result.minutes.get("replay", 0), minutes_live=result.minutes.get("live", 0),
        minutes_missing=result.minutes.get("missing", 0), compared=c.compared, disagreements=c.disagreements,
        max_difference=c.max_difference, worst_minute=int(c.worst_minute.value // 1000) if c.worst_minute is not None
        else None, worst_column=c.worst_column, rebuilt_at=now_us, error=error)
    keys = (status.exchange, status.symbol, status.data_type)
    # an upsert both SQLite and PostgreSQL understand (REPLACE is SQLite only)
    status.insert(**values).on_conflict(
        conflict_target=keys,
        preserve=[f for f in status._meta.sorted_fields if f.name not in ("exchange", "symbol", "data_type")]).execute()


def _record_error(storage, key, start, end, now_us, error):
    try:
        with storage.write_transaction():
            status = storage.models["stream_status"]
            previous = status.get_or_none((status.exchange == key[0]) & (status.symbol == key[1])
                                          & (status.data_type == key[2]))
            result = StreamResult(error=error)
            if previous is not None:  # keep the last good counts; the error says they are stale
                result.minutes = {"replay": previous.minutes_replay, "live": previous.minutes_live,
                                  "missing": previous.minutes_missing}
            _upsert_status(status, key, start, end, now_us, result, error=error)
    except Exception:
        log.exception("could not record the publishing error of %s", key)


# -- reading what was published, and exporting it -------------------------------------------------------
def read_published(storage, exchange, symbol, data_type):
    """The published series of one stream (as written by the last pass), minute-indexed (None if never)."""
    if not storage.has_table("minute_series"):
        return None
    model = storage.models["minute_series"]
    query = model.select().where((model.exchange == exchange) & (model.symbol == symbol)
                                 & (model.data_type == data_type)).order_by(model.minute)
    frame = pd.DataFrame(list(query.dicts()))
    if frame.empty:
        return frame
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("minute"), unit="us", utc=True), name="minute")
    return frame


def published_sources(storage, exchange, symbol, data_type, start, end):
    """Per minute of ``[start, end)``: the published source (numpy array), or None if not all published."""
    import numpy as np
    model = storage.models["minute_series"]
    rows = (model.select(model.minute, model.source)
            .where((model.exchange == exchange) & (model.symbol == symbol) & (model.data_type == data_type)
                   & (model.minute >= start) & (model.minute < end)).order_by(model.minute).tuples())
    rows = list(rows)
    if len(rows) != (end - start) // MINUTE_US:
        return None
    return np.array([source for _, source in rows], dtype=object)


def published_frames(storage, streams):
    """``{(exchange, symbol, data_type): frame}`` of the published series, with each type's value columns."""
    from .minutes import value_columns
    frames = {}
    for exchange, symbol, name in streams:
        frame = read_published(storage, exchange, symbol, name)
        if frame is None or frame.empty:
            continue
        frames[(exchange, symbol, name)] = frame[list(value_columns(name)) + ["source", "missing"]]
    return frames


def export_frames(frames, exchange, path):
    """Write the long form of the frames to CSV or Parquet atomically (temp file + rename)."""
    long = to_long(frames, exchange)
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    os.close(fd)
    try:
        if path.lower().endswith(".parquet"):
            long.to_parquet(tmp, index=False)
        else:
            out = long.copy()
            out["minute"] = out["minute"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            out.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rebuild(storage, exchange, symbols, data_types, start, end, export=None, now_us=None, full=False):
    """Refresh the minute store, publish the streams' series over ``[start, end)``, and export it if asked."""
    from .minutes import MinuteStore
    streams = [(exchange, s, parse_data_type(d).name if isinstance(d, str) else d.name)
               for s in symbols for d in data_types]
    refreshed = MinuteStore(storage).refresh(streams)
    report = publish(storage, streams, start, end, now_us=now_us, full=full, errors=refreshed.errors)
    if export:
        export_frames(published_frames(storage, streams), exchange, export)
    for key, result in report.streams.items():
        c = result.comparison
        if c.disagreements:
            log.warning("%s %s %s: replay and live disagree on %d of %d minute(s); largest difference %.10g "
                        "(%s at %s)", *key, c.disagreements, c.compared, c.max_difference, c.worst_column,
                        iso(int(c.worst_minute.value // 1000)) if c.worst_minute is not None else "-")
    return report
