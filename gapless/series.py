"""Minute series of one stream from one source: the minute store's aggregates inside that source's coverage.

Labels: a row is labelled by the START of its minute (UTC), everywhere in gapless: the row
``2026-11-23 13:30`` describes ``[13:30:00, 13:31:00)``. Values that are states (bid/ask, tickers)
are the state at the minute's close (13:31:00, exclusive); trade statistics cover trades inside it.
A sampled message stamped at an interval END (``quote_1m`` or ``trade_bar_1m`` stamped 13:31:00)
therefore lands on the 13:30 row.

A minute is *covered* by a source when one coverage interval of that source contains the whole
minute. Inside covered time a minute without a message carries the previous state forward (an
unchanged book, a quiet market: volume 0); outside it the minute is marked missing (``missing``
True, ``source`` "missing", values NaN), never filled. A covered minute whose state is still
unknown (no snapshot seen yet in that covered stretch) is missing too.

Carried state only ever comes from inside the covered stretch: from an earlier minute of it, or from
the part of the minute where the stretch began (a snapshot received at connect, a trade after the
stretch's start), never from before the stretch (a hole could hide a change).
"""
import numpy as np
import pandas as pd

from .aggregate import value_columns
from .minutes import CHUNK_US, MinuteStore
from .schema import QUOTE_VALUES, TICKER_VALUES, TRADE_VALUES
from .timeutil import MINUTE_US, ceil_minute, floor_minute

SOURCES = ("replay", "live")
__all__ = ["value_columns", "minute_index", "covered_minutes", "source_minutes", "stream_series",
           "to_long", "Reader", "SOURCES"]


def minute_index(start, end):
    """The tz-aware UTC minute index of ``[start, end)`` (µs, minute aligned outward)."""
    start, end = floor_minute(start), ceil_minute(end)
    return pd.DatetimeIndex(pd.to_datetime(np.arange(start, end, MINUTE_US, dtype=np.int64), unit="us", utc=True),
                            name="minute")


def covered_minutes(intervals, start, end):
    """For each minute of ``[start, end)``: the index of the coverage interval holding it whole, or -1."""
    start, end = floor_minute(start), ceil_minute(end)
    minutes = np.arange(start, end, MINUTE_US, dtype=np.int64)
    block = np.full(len(minutes), -1, dtype=np.int64)
    for i, (a, b) in enumerate(intervals):
        first = np.searchsorted(minutes, a, side="left")          # first minute starting at or after a
        last = np.searchsorted(minutes, b - MINUTE_US, side="right")  # minutes ending at or before b
        if last > first:
            block[first:last] = i
    return block


class Reader:
    """Reads minute series from a Storage: the minute store plus an in-memory refresh of what is pending.

    Use it as a context manager: everything it reads comes from one snapshot of the database. A reader
    never writes: what the last persisted refresh did not see yet is aggregated in memory (an overlay),
    so a reader beside a running service, or after a download, sees exactly what is stored.
    """

    def __init__(self, storage, streams=None, overlay=None):
        self.storage = storage
        self.store = MinuteStore(storage)
        self._streams = streams
        self._given = overlay
        self.overlay = None
        self._coverage = {}
        self._snapshot = None

    def __enter__(self):
        # one snapshot for everything this reader reads: the overlay's rows, the aggregates, the coverage
        self._snapshot = self.storage.snapshot()
        self._snapshot.__enter__()
        try:
            self.overlay = self._given if self._given is not None else \
                self.store.refresh(self._streams, persist=False).overlay
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is not None:
            snapshot.__exit__(*(exc or (None, None, None)))
        return False

    def covered(self, exchange, symbol, data_type, source):
        """Merged coverage intervals of one stream and source (cached for this reader)."""
        key = (exchange, symbol, data_type, source)
        if key not in self._coverage:
            self._coverage[key] = self.storage.covered(exchange, symbol, data_type, source)
        return self._coverage[key]


def source_minutes(reader, exchange, symbol, data_type, start, end, source):
    """Values (DataFrame, one row per minute of ``[start, end)``) and the boolean array of known minutes."""
    values, known, columns = source_values(reader, exchange, symbol, data_type, start, end, source)
    return pd.DataFrame(values, columns=columns), known


def source_values(reader, exchange, symbol, data_type, start, end, source):
    """Like :func:`source_minutes`, as a float array (minutes x columns), the known minutes, and the columns."""
    data_type = _type(data_type)
    start, end = floor_minute(start), ceil_minute(end)
    n = (end - start) // MINUTE_US
    intervals = reader.covered(exchange, symbol, data_type.name, source)
    block = covered_minutes(intervals, start, end)
    columns = list(value_columns(data_type))
    key = (exchange, symbol, data_type.name, source)
    stored_cols = columns if data_type.family != "book_snapshot" else list(QUOTE_VALUES) + ["levels"]
    values = np.full((n, len(columns)), np.nan)
    own = np.zeros(n, dtype=bool)
    last_ts = np.full(n, -1, dtype=np.int64)
    if not (block >= 0).any():
        return values, own, columns  # the source covers none of these minutes: nothing of it to read
    agg = reader.store.read(key, start, end, stored_cols, reader.overlay)
    if len(agg):
        pos = ((agg.minutes - start) // MINUTE_US).astype(np.int64)
        own[pos] = True
        last_ts[pos] = agg.last_ts
        values[pos] = _agg_values(agg, data_type, columns)
    seeds = {} if data_type.family == "liquidation" else \
        _seeds(reader, key, stored_cols, data_type, start, block, intervals, own, last_ts, values, columns)
    if data_type.family == "book_snapshot":
        known = _fill_book(values, columns, block, own, seeds)
    elif data_type.family == "book_ticker":
        # a book ticker with both sides omitted is a known empty top of book (an option nobody quotes), not an
        # unknown state: known wherever a message of the stream's coverage (or its seed) is carried
        stated = _carry(np.where(own, 1.0, np.nan)[:, None], own, block, {k: np.ones(1) for k in seeds})[:, 0]
        _fill_book(values, columns, block, own, seeds)
        known = (block >= 0) & (stated == 1.0)
    elif data_type.family in ("trade", "trade_bar"):
        known = _fill_trades(values, columns, block, own, seeds)
    elif data_type.family == "liquidation":
        known = _fill_counts(values, columns, block, own)
    elif data_type.family == "option_summary":
        known = _fill_state(values, block, own, seeds)
    else:
        known = _fill_tickers(values, block, seeds)
    return values, known, columns


def _type(data_type):
    from .datatypes import parse_data_type
    return parse_data_type(data_type) if isinstance(data_type, str) else data_type


def _agg_values(agg, data_type, columns):
    """The aggregates (:class:`~gapless.minutes.Aggregates`) as a float array in ``columns`` order (deeper book
    levels unpacked)."""
    if data_type.family != "book_snapshot":
        return agg.values if agg.columns == list(columns) else agg.values[:, [agg.columns.index(c) for c in columns]]
    top = agg.values[:, [agg.columns.index(c) for c in QUOTE_VALUES]]
    width = len(columns) - len(QUOTE_VALUES)
    return np.hstack([top, _levels(agg.levels, width)]) if width else top


def _levels(texts, width):
    import orjson
    rows = [orjson.loads(t) if isinstance(t, str) else [None] * width for t in texts]
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float).reshape(-1, width)


def _seeds(reader, key, stored_cols, data_type, start, block, intervals, own, last_ts, values, columns):
    """Per block index: the state carried into the block's first covered minute (a row of values), if known.

    It comes from the minute where the coverage interval began, and only if that minute's last row is
    inside the interval: a row before the interval's start may be followed by changes nobody saw.
    """
    seeds = {}
    for k in np.unique(block[block >= 0]).tolist():
        a = intervals[k][0]
        first = int(np.argmax(block == k))
        if first == 0 and data_type.family == "derivative_ticker":
            seed = _ticker_seed(reader, key, columns, start, a)
            if seed is not None:
                seeds[k] = seed
        elif first == 0:
            row = reader.store.last_before(key, start, floor_minute(a), stored_cols, reader.overlay)
            if row is not None and int(row.last_ts[0]) >= a:
                seeds[k] = _agg_values(row, data_type, columns)[0]
        else:
            previous = first - 1
            if own[previous] and last_ts[previous] >= a and start + previous * MINUTE_US >= floor_minute(a):
                seeds[k] = values[previous].copy()
    return seeds


def _ticker_seed(reader, key, columns, start, interval_start):
    """The ticker state carried into ``start``: each field's last value since the interval began (NaN if none).

    A ticker message carries only the fields that changed, so each field is looked up on its own, not in the
    last minute with data (that one may have updated one field only). Read backwards in chunks: memory stays
    flat whatever the distance to the interval's start.
    """
    seed = np.full(len(columns), np.nan)
    floor_a = floor_minute(interval_start)
    hi = start
    while hi > floor_a and np.isnan(seed).any():
        lo = max(floor_a, hi - CHUNK_US)
        agg = reader.store.read(key, lo, hi, columns, reader.overlay)
        if len(agg):
            # the minute where the interval began counts only if its last row is inside the interval
            inside = (agg.minutes > floor_a) | (agg.last_ts >= interval_start)
            for i, column in enumerate(columns):
                if np.isnan(seed[i]):
                    present = agg.column(column)[inside]
                    present = present[~np.isnan(present)]
                    if len(present):
                        seed[i] = float(present[-1])
        hi = lo
    return None if np.isnan(seed).all() else seed


def _carry(values, valid, block, seeds):
    """Each covered row that is not ``valid`` takes the last valid row of its block (or the block's seed).

    Blocks are contiguous runs of one coverage interval; nothing is carried into uncovered rows (NaN) or
    across two blocks.
    """
    n = len(block)
    rows = np.arange(n)
    starts = np.ones(n, dtype=bool)
    starts[1:] = block[1:] != block[:-1]
    run_start = np.maximum.accumulate(np.where(starts, rows, 0))
    last = np.maximum.accumulate(np.where(valid, rows, -1))
    have = (last >= run_start) & (block >= 0)
    out = np.full_like(values, np.nan)
    out[have] = values[last[have]]
    for k, seed in seeds.items():
        waiting = (block == k) & ~have
        if waiting.any():
            out[waiting] = seed
    out[block < 0] = np.nan
    return out


def _fill_book(values, columns, block, own, seeds):
    # the last snapshot of the minute is the state at its close, empty levels included: carried as a whole
    filled = _carry(values, own, block, seeds)
    quiet = ~own
    mid = [columns.index(c) for c in ("mid_open", "mid_high", "mid_low")]
    close = columns.index("mid_close")
    state = [i for i in range(len(columns)) if i not in mid]
    values[:, state] = filled[:, state]
    # an unchanged minute: open = high = low = close of the carried mid
    for i in mid:
        values[quiet, i] = values[quiet, close]
    values[block < 0] = np.nan
    bid, ask = columns.index("bid_price"), columns.index("ask_price")
    return (block >= 0) & ~(np.isnan(values[:, bid]) & np.isnan(values[:, ask]))


def _fill_trades(values, columns, block, own, seeds):
    quiet = (block >= 0) & ~own
    for column in ("volume", "buy_volume", "sell_volume", "trades"):
        values[quiet, columns.index(column)] = 0.0
    close = columns.index("close")
    carried = _carry(values[:, [close]], own, block, {k: s[[close]] for k, s in seeds.items()})[:, 0]
    for column in ("open", "high", "low", "close"):
        # a quiet minute: open = high = low = close = the last price (NaN if unknown inside coverage)
        values[quiet, columns.index(column)] = carried[quiet]
    values[block < 0] = np.nan
    return block >= 0


def _fill_counts(values, columns, block, own):
    # nothing carries: a covered minute without a liquidation is a true 0 (the trades channel was up), vwap NaN
    quiet = (block >= 0) & ~own
    for column in ("liquidations", "volume", "buy_volume", "sell_volume"):
        values[quiet, columns.index(column)] = 0.0
    values[block < 0] = np.nan
    return block >= 0


def _fill_state(values, block, own, seeds):
    # each message is the whole state: a quiet minute carries the last one as it is (no field from an older one)
    values[:] = _carry(values, own, block, seeds)
    return (block >= 0) & ~np.isnan(values).all(axis=1)


def _fill_tickers(values, block, seeds):
    # a ticker message carries only what changed: each field is carried on its own
    for i in range(values.shape[1]):
        column = values[:, [i]]
        values[:, i] = _carry(column, ~np.isnan(column[:, 0]), block, {k: s[[i]] for k, s in seeds.items()})[:, 0]
    return (block >= 0) & ~np.isnan(values).all(axis=1)


def stream_series(storage, exchange, symbol, data_type, start, end, source, reader=None):
    """The minute series of one stream from one source over ``[start, end)`` (µs).

    Returns a DataFrame indexed by minute start (tz-aware UTC) with the value columns of
    :func:`value_columns` plus ``source`` (the given source or ``"missing"``) and ``missing``.
    """
    data_type = _type(data_type)
    if reader is None:
        with Reader(storage, [(exchange, symbol, data_type.name)]) as reader:
            return stream_series(storage, exchange, symbol, data_type, start, end, source, reader)
    values, known = source_minutes(reader, exchange, symbol, data_type, start, end, source)
    frame = values.set_axis(minute_index(start, end))
    missing = ~known
    frame.loc[missing, :] = np.nan
    frame["source"] = np.where(missing, "missing", source)
    frame["missing"] = missing
    return frame


def to_long(frames, exchange):
    """One long frame: a row per (symbol, data type, minute) with ``minute`` as an ISO-8601 UTC column.

    Keys may be ``(symbol, data_type)`` (one exchange, given as ``exchange``) or
    ``(exchange, symbol, data_type)``.
    """
    parts = []
    for key, frame in frames.items():
        venue, symbol, data_type = key if len(key) == 3 else (exchange,) + tuple(key)
        part = frame.reset_index()
        part.insert(1, "exchange", venue)
        part.insert(2, "symbol", symbol)
        part.insert(3, "data_type", data_type)
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["minute", "exchange", "symbol", "data_type", "source", "missing"])
    long = pd.concat(parts, ignore_index=True, sort=False)
    ordered = ["minute", "exchange", "symbol", "data_type", "source", "missing"]
    return long[ordered + [c for c in long.columns if c not in ordered]]


# kept for callers that import the value groups from here
__all__ += ["QUOTE_VALUES", "TRADE_VALUES", "TICKER_VALUES"]
