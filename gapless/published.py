"""Reading the published series (``minute_series``), and exporting it to CSV or Parquet.

What :mod:`gapless.publish` wrote by its last pass: every stream of one pass, or of the one before.
"""
import os
import tempfile

import pandas as pd

from .series import to_long
from .timeutil import MINUTE_US


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
    texts = frame.pop("levels") if "levels" in frame.columns else None
    columns = deeper_columns(data_type)
    if columns:
        import numpy as np
        rows = [deeper_levels(t, data_type) for t in (texts if texts is not None else [None] * len(frame))]
        unpacked = pd.DataFrame([[r.get(c, np.nan) for c in columns] for r in rows], index=frame.index,
                                columns=columns, dtype=float)
        frame = pd.concat([frame, unpacked], axis=1)
    return frame


def deeper_columns(data_type):
    """The deeper book level columns of a data type's series (``bids_1_price`` ...), [] for other types."""
    from .aggregate import deeper_level_columns
    from .datatypes import parse_data_type
    parsed = parse_data_type(data_type)
    return list(deeper_level_columns(parsed.depth)) if parsed.family == "book_snapshot" and parsed.depth > 1 else []


def deeper_levels(text, data_type):
    """``{column: value}`` of the deeper book levels published as JSON text (NaN as None); {} if none."""
    columns = deeper_columns(data_type)
    if not columns or not isinstance(text, str):
        return {c: None for c in columns}
    import orjson
    return dict(zip(columns, orjson.loads(text)))


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


class PublishedSources:
    """``published_sources`` of every stream of an exchange over ``[start, end)``, read in two queries.

    A pass asks every stream's sources (when will history reach its next gap?): with 500 option streams and a day's
    window, one query per stream built 700,000 Python tuples a pass. Here the database counts each stream's minutes
    and hands over only the minutes that are not replay; a stream whose published minutes are not one contiguous
    run, or a range outside the window, is read on its own as before.
    """

    def __init__(self, storage, exchange, start, end):
        self.storage, self.exchange, self.start, self.end = storage, exchange, start, end
        self._extent, self._others = {}, {}
        m = storage.mark
        where = '"exchange" = {m} AND "minute" >= {m} AND "minute" < {m}'.format(m=m)
        run = storage.db.execute_sql
        for symbol, data_type, n, lo, hi in run('SELECT "symbol", "data_type", COUNT(*), MIN("minute"), MAX("minute") '
                                                'FROM "minute_series" WHERE ' + where + ' GROUP BY "symbol", '
                                                '"data_type"', (exchange, start, end)).fetchall():
            if n == (hi - lo) // MINUTE_US + 1:  # contiguous: every minute of [lo, hi] published
                self._extent[(symbol, data_type)] = (int(lo), int(hi) + MINUTE_US)
        for symbol, data_type, minute, source in run('SELECT "symbol", "data_type", "minute", "source" FROM '
                                                     '"minute_series" WHERE ' + where + ' AND "source" <> ' + m,
                                                     (exchange, start, end, "replay")).fetchall():
            self._others.setdefault((symbol, data_type), []).append((int(minute), source))

    def __call__(self, symbol, data_type, start, end):
        """Per minute of ``[start, end)``: the published source (numpy array), or None if not all published."""
        import numpy as np
        lo, hi = self._extent.get((symbol, data_type), (0, 0))
        if not (lo <= start and end <= hi and self.start <= start and end <= self.end):
            return published_sources(self.storage, self.exchange, symbol, data_type, start, end)
        sources = np.full((end - start) // MINUTE_US, "replay", dtype=object)
        for minute, source in self._others.get((symbol, data_type), ()):
            if start <= minute < end:
                sources[(minute - start) // MINUTE_US] = source
        return sources


def published_frames(storage, streams, start=None, end=None):
    """``{(exchange, symbol, data_type): frame}`` of the published series, with each type's value columns.

    ``[start, end)`` (µs): only the minutes of the window. A stream's newest final minutes are published before
    the window's end reaches them (for followers); an export or a picture of the window shows every stream
    over the same minutes.
    """
    from .aggregate import value_columns
    frames = {}
    for exchange, symbol, name in streams:
        frame = read_published(storage, exchange, symbol, name)
        if frame is None or frame.empty:
            continue
        if start is not None or end is not None:
            minutes = frame.index.as_unit("us").asi8
            keep = (minutes >= (start if start is not None else minutes.min())) & (
                minutes < (end if end is not None else minutes.max() + 1))
            frame = frame[keep]
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
