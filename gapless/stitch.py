"""Stitching history and live data, comparing them, and publishing the combined minute series.

For each stream the minute series over the window takes replay where replay covers the minute, else
live where live covers it, else the minute is missing. Where both cover a minute the values must
agree (tardis-machine computes both the same way); disagreements are counted and reported, not hidden.

:func:`rebuild` replaces the stream's rows of the ``minute_series`` table in ONE transaction, so a
reader sees the series before or after a rebuild, never half of it; the optional export file is
written to a temporary file and renamed over the target.
"""
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from peewee import BigIntegerField, BooleanField, CharField, CompositeKey, DoubleField, IntegerField, Model

from .datatypes import parse_data_type
from .series import QUOTE_VALUES, TICKER_VALUES, TRADE_VALUES, combine, stream_series, to_long
from .timeutil import US

log = logging.getLogger(__name__)

SERIES_VALUES = tuple(dict.fromkeys(QUOTE_VALUES + TRADE_VALUES + TICKER_VALUES))
COMPARED = {
    "book_snapshot": ("bid_price", "bid_amount", "ask_price", "ask_amount"),
    "trade": ("open", "high", "low", "close", "volume", "trades"),
    "trade_bar": ("open", "high", "low", "close", "volume", "trades"),
    "derivative_ticker": ("last_price", "open_interest", "funding_rate", "index_price", "mark_price"),
}
RELATIVE_TOLERANCE = 1e-9


@dataclass
class Comparison:
    """Replay vs live over the minutes both cover: how many disagree and by how much."""

    compared: int = 0
    disagreements: int = 0
    max_difference: float = 0.0
    worst_minute: object = None
    worst_column: str = None


@dataclass
class RebuildReport:
    """Result of one rebuild: per-stream frames, comparisons and timing."""

    frames: dict = field(default_factory=dict)
    comparisons: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def gapless(self):
        """True when no minute of any stream is missing."""
        return all(not frame["missing"].any() for frame in self.frames.values())


def compare(replay, live, data_type):
    """Compare two per-source frames of one stream on the minutes both know."""
    data_type = parse_data_type(data_type) if isinstance(data_type, str) else data_type
    both = ~replay["missing"].to_numpy() & ~live["missing"].to_numpy()
    result = Comparison(compared=int(both.sum()))
    if not result.compared:
        return result
    worst = np.zeros(int(both.sum()))
    worst_col = np.array([""] * len(worst), dtype=object)
    bad = np.zeros(len(worst), dtype=bool)
    for column in COMPARED[data_type.family]:
        a = replay[column].to_numpy(dtype=float)[both]
        b = live[column].to_numpy(dtype=float)[both]
        diff = np.abs(a - b)
        both_nan = np.isnan(a) & np.isnan(b)
        one_nan = np.isnan(a) ^ np.isnan(b)
        tolerance = RELATIVE_TOLERANCE * np.maximum(1.0, np.maximum(np.abs(np.nan_to_num(a)), np.abs(np.nan_to_num(b))))
        differs = one_nan | (~both_nan & (diff > tolerance))
        bad |= differs
        diff = np.where(np.isnan(diff), 0.0, diff)
        larger = diff > worst
        worst = np.where(larger, diff, worst)
        worst_col = np.where(larger, column, worst_col)
    result.disagreements = int(bad.sum())
    if result.disagreements:
        i = int(np.argmax(worst))
        result.max_difference = float(worst[i])
        result.worst_minute = replay.index[both][i]
        result.worst_column = str(worst_col[i])
    return result


def make_series_models(database):
    """Models of the published series and of per-stream rebuild results, bound to ``database``."""

    class MinuteSeries(Model):
        exchange = CharField(max_length=64)
        symbol = CharField(max_length=128)
        data_type = CharField(max_length=64)
        minute = BigIntegerField()
        source = CharField(max_length=8)
        missing = BooleanField()

        class Meta:
            table_name = "minute_series"
            primary_key = CompositeKey("exchange", "symbol", "data_type", "minute")

    for column in SERIES_VALUES:
        MinuteSeries._meta.add_field(column, DoubleField(null=True))

    class StreamStatus(Model):
        exchange = CharField(max_length=64)
        symbol = CharField(max_length=128)
        data_type = CharField(max_length=64)
        window_start = BigIntegerField()
        window_end = BigIntegerField()
        minutes_replay = IntegerField()
        minutes_live = IntegerField()
        minutes_missing = IntegerField()
        compared = IntegerField()
        disagreements = IntegerField()
        max_difference = DoubleField()
        worst_minute = BigIntegerField(null=True)
        worst_column = CharField(max_length=32, null=True)
        rebuilt_at = BigIntegerField()

        class Meta:
            table_name = "stream_status"
            primary_key = CompositeKey("exchange", "symbol", "data_type")

    MinuteSeries._meta.set_database(database)
    StreamStatus._meta.set_database(database)
    return MinuteSeries, StreamStatus


def stitched(storage, exchange, symbols, data_types, start, end):
    """Per stream: the combined frame and the replay/live comparison, computed from storage."""
    frames, comparisons = {}, {}
    for symbol in symbols:
        for name in data_types:
            data_type = parse_data_type(name) if isinstance(name, str) else name
            replay = stream_series(storage, exchange, symbol, data_type, start, end, "replay")
            live = stream_series(storage, exchange, symbol, data_type, start, end, "live")
            frames[(symbol, data_type.name)] = combine([replay, live])
            comparisons[(symbol, data_type.name)] = compare(replay, live, data_type)
    return frames, comparisons


def rebuild(storage, exchange, symbols, data_types, start, end, export=None, now_us=None):
    """Recompute the combined series of every stream and publish it atomically (table, then file)."""
    began = time.monotonic()
    frames, comparisons = stitched(storage, exchange, symbols, data_types, start, end)
    publish(storage, exchange, frames, comparisons, start, end, now_us)
    if export:
        export_frames(frames, exchange, export)
    report = RebuildReport(frames=frames, comparisons=comparisons, seconds=time.monotonic() - began)
    for (symbol, name), comparison in comparisons.items():
        if comparison.disagreements:
            log.warning("%s %s %s: replay and live disagree on %d of %d minute(s); largest difference %.10g "
                        "(%s at %s)", exchange, symbol, name, comparison.disagreements, comparison.compared,
                        comparison.max_difference, comparison.worst_column, comparison.worst_minute)
    return report


def publish(storage, exchange, frames, comparisons, start, end, now_us=None):
    """Replace the published rows of these streams in one transaction."""
    series_model, status_model = make_series_models(storage.db)
    with storage._lock:
        # several services publishing into one PostgreSQL database at once: CREATE TABLE IF NOT EXISTS races
        # (a unique violation on pg_type) unless schema changes take the advisory lock, as Storage's do
        with storage._schema_lock():
            storage.db.create_tables([series_model, status_model], safe=True)
    now_us = now_us or int(time.time() * US)
    columns = ["exchange", "symbol", "data_type", "minute", "source", "missing"] + list(SERIES_VALUES)
    with storage.write_transaction():
        for (symbol, name), frame in frames.items():
            series_model.delete().where((series_model.exchange == exchange) & (series_model.symbol == symbol)
                                        & (series_model.data_type == name)).execute()
            storage.bulk_insert(series_model, columns, _series_rows(exchange, symbol, name, frame))
            counts = frame["source"].value_counts()
            comparison = comparisons[(symbol, name)]
            values = dict(
                exchange=exchange, symbol=symbol, data_type=name, window_start=start, window_end=end,
                minutes_replay=int(counts.get("replay", 0)), minutes_live=int(counts.get("live", 0)),
                minutes_missing=int(counts.get("missing", 0)), compared=comparison.compared,
                disagreements=comparison.disagreements, max_difference=comparison.max_difference,
                worst_minute=int(comparison.worst_minute.value // 1000) if comparison.worst_minute is not None
                else None, worst_column=comparison.worst_column, rebuilt_at=now_us)
            keys = (status_model.exchange, status_model.symbol, status_model.data_type)
            # an upsert both SQLite and PostgreSQL understand (REPLACE is SQLite only)
            status_model.insert(**values).on_conflict(
                conflict_target=keys,
                preserve=[f for f in status_model._meta.sorted_fields
                          if f.name not in ("exchange", "symbol", "data_type")]).execute()


def _series_rows(exchange, symbol, name, frame):
    n = len(frame)
    minutes = frame.index.as_unit("us").asi8.tolist()
    values = []
    for column in SERIES_VALUES:
        if column in frame.columns:
            array = frame[column].to_numpy(dtype=float)
            values.append([None if v != v else v for v in array.tolist()])
        else:
            values.append([None] * n)
    return list(zip([exchange] * n, [symbol] * n, [name] * n, minutes, frame["source"].tolist(),
                    frame["missing"].astype(bool).tolist(), *values))


def read_published(storage, exchange, symbol, data_type):
    """The published series of one stream (as written by the last rebuild), minute-indexed."""
    series_model, _ = make_series_models(storage.db)
    if not storage.has_table("minute_series"):
        return None
    query = series_model.select().where((series_model.exchange == exchange) & (series_model.symbol == symbol)
                                        & (series_model.data_type == data_type)).order_by(series_model.minute)
    frame = pd.DataFrame(list(query.dicts()))
    if frame.empty:
        return frame
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("minute"), unit="us", utc=True), name="minute")
    return frame


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
