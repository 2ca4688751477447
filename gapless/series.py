"""Minute series from stored data, with every minute's source known and holes never filled.

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
"""
import numpy as np
import pandas as pd

from .datatypes import parse_data_type
from .exceptions import UsageError
from .timeutil import MINUTE_US, ceil_minute, floor_minute

QUOTE_VALUES = ("bid_price", "bid_amount", "ask_price", "ask_amount", "mid_open", "mid_high", "mid_low",
                "mid_close")
TRADE_VALUES = ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "trades", "vwap")
TICKER_VALUES = ("last_price", "open_interest", "funding_rate", "index_price", "mark_price")
SOURCES = ("replay", "live")


def value_columns(data_type):
    """The value columns of the minute series of a data type."""
    data_type = _as_type(data_type)
    if data_type.family == "book_snapshot":
        extra = []
        for side in ("bids", "asks"):
            for i in range(1, data_type.depth):
                extra += ["%s_%d_price" % (side, i), "%s_%d_amount" % (side, i)]
        return QUOTE_VALUES + tuple(extra)
    if data_type.family in ("trade", "trade_bar"):
        return TRADE_VALUES
    if data_type.family == "derivative_ticker":
        return TICKER_VALUES
    raise UsageError("no minute series for %s: use quote, quote_<interval> or book_snapshot_* for the book"
                     % (data_type.name,))


def _as_type(data_type):
    return parse_data_type(data_type) if isinstance(data_type, str) else data_type


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


def stream_series(storage, exchange, symbol, data_type, start, end, source):
    """The minute series of one stream from one source over ``[start, end)`` (µs).

    Returns a DataFrame indexed by minute start (tz-aware UTC) with the value columns of
    :func:`value_columns` plus ``source`` (the given source or ``"missing"``) and ``missing``.
    """
    data_type = _as_type(data_type)
    columns = value_columns(data_type)
    start, end = floor_minute(start), ceil_minute(end)
    index = minute_index(start, end)
    intervals = storage.covered(exchange, symbol, data_type.name, source)
    block = covered_minutes(intervals, start, end)
    if data_type.family == "book_snapshot":
        values, known = _quote_minutes(storage, exchange, symbol, data_type, start, end, source, block, intervals)
    elif data_type.family == "trade":
        values, known = _trade_minutes(storage, exchange, symbol, start, end, source, block, intervals)
    elif data_type.family == "trade_bar":
        values, known = _bar_minutes(storage, exchange, symbol, data_type, start, end, source, block, intervals)
    else:
        values, known = _ticker_minutes(storage, exchange, symbol, start, end, source, block, intervals)
    frame = pd.DataFrame(values, index=index, columns=list(columns))
    missing = ~known
    frame.loc[missing, :] = np.nan
    frame["source"] = np.where(missing, "missing", source)
    frame["missing"] = missing
    return frame


# -- loading -------------------------------------------------------------------------------------
def _load(storage, table, exchange, symbol, name, source, lo, hi, columns):
    cols, rows = storage.read_rows(table, exchange, symbol, name, source, lo, hi, columns=columns)
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in cols})
    return pd.DataFrame.from_records(rows, columns=cols)


def _prior_state(storage, table, exchange, symbol, name, source, start, intervals, columns, sampled):
    """The last row before ``start`` inside the coverage interval that contains ``start``."""
    for a, b in intervals:
        if a < start <= b:
            # a sample stamped exactly at ``start`` closes the previous minute: it is prior state
            before = start + 1 if sampled else start
            row = storage.last_row_before(table, exchange, symbol, name, source, before, a, columns=columns)
            return row
    return None


def _labels(ts, sampled):
    """Minute label (µs) of each timestamp: its minute, or for interval-end stamps the minute it closes."""
    ts = np.asarray(ts, dtype=np.int64)
    if sampled:
        return -(-ts // MINUTE_US) * MINUTE_US - MINUTE_US
    return ts - ts % MINUTE_US


def _positions(labels, start, n):
    pos = (labels - start) // MINUTE_US
    keep = (pos >= 0) & (pos < n)
    return pos, keep


def _ffill_within_blocks(frame, block):
    """Forward-fill each column, restarting at every coverage block and never into uncovered minutes."""
    keys = pd.Series(block, index=frame.index)
    filled = frame.groupby(keys.values).ffill()
    filled[block < 0] = np.nan
    return filled


# -- quotes and snapshots ------------------------------------------------------------------------
def _quote_minutes(storage, exchange, symbol, data_type, start, end, source, block, intervals):
    n = len(block)
    table = data_type.table
    level_cols = ["bids_0_price", "bids_0_amount", "asks_0_price", "asks_0_amount"]
    deeper = list(value_columns(data_type)[len(QUOTE_VALUES):])
    load_cols = ["timestamp", "local_timestamp", "seq"] + level_cols + deeper
    sampled = data_type.interval
    df = _load(storage, table, exchange, symbol, data_type.name, source, start, end + (1 if sampled else 0),
               load_cols)
    prior = _prior_state(storage, table, exchange, symbol, data_type.name, source, start, intervals,
                         load_cols, sampled)
    out = pd.DataFrame(np.nan, index=range(n), columns=list(value_columns(data_type)))
    if len(df):
        df = df.sort_values(["timestamp", "local_timestamp", "seq"], kind="stable")
        labels = _labels(df["timestamp"].to_numpy(), sampled)
        pos, keep = _positions(labels, start, n)
        df = df[keep].assign(pos=pos[keep])
        mid = (df["bids_0_price"] + df["asks_0_price"]) / 2.0
        grouped = df.assign(mid=mid).groupby("pos")
        # the actual last snapshot (groupby.last would skip NaNs and mix an empty level with older ones)
        last = grouped.nth(-1).set_index("pos")
        first_mid = grouped["mid"].first()
        idx = last.index.to_numpy()
        out.loc[idx, "bid_price"] = last["bids_0_price"].to_numpy()
        out.loc[idx, "bid_amount"] = last["bids_0_amount"].to_numpy()
        out.loc[idx, "ask_price"] = last["asks_0_price"].to_numpy()
        out.loc[idx, "ask_amount"] = last["asks_0_amount"].to_numpy()
        for column in deeper:
            out.loc[idx, column] = last[column].to_numpy()
        out.loc[idx, "mid_open"] = first_mid.to_numpy()
        out.loc[idx, "mid_high"] = grouped["mid"].max().to_numpy()
        out.loc[idx, "mid_low"] = grouped["mid"].min().to_numpy()
        out.loc[idx, "mid_close"] = last["mid"].to_numpy()
    state_cols = ["bid_price", "bid_amount", "ask_price", "ask_amount", "mid_close"] + deeper
    observed = out["bid_price"].notna() | out["ask_price"].notna()
    if prior is not None and n and block[0] >= 0 and not observed.iloc[0]:
        row = dict(zip(load_cols, prior))
        out.loc[0, ["bid_price", "bid_amount", "ask_price", "ask_amount"]] = [
            row["bids_0_price"], row["bids_0_amount"], row["asks_0_price"], row["asks_0_amount"]]
        for column in deeper:
            out.loc[0, column] = row[column]
        out.loc[0, "mid_close"] = _mid(row["bids_0_price"], row["asks_0_price"])
    filled = _ffill_within_blocks(out[state_cols], block)
    out[state_cols] = filled.to_numpy()
    quiet = ~observed.to_numpy()
    for column in ("mid_open", "mid_high", "mid_low"):
        # an unchanged minute: open = high = low = close of the carried mid
        out.loc[quiet, column] = out.loc[quiet, "mid_close"]
    known = (block >= 0) & (out["bid_price"].notna() | out["ask_price"].notna()).to_numpy()
    return out.to_numpy(), known


def _mid(bid, ask):
    if bid is None or ask is None:
        return np.nan
    return (bid + ask) / 2.0


# -- trades --------------------------------------------------------------------------------------
def _trade_minutes(storage, exchange, symbol, start, end, source, block, intervals):
    n = len(block)
    cols = ["timestamp", "price", "amount", "side"]
    df = _load(storage, "trade", exchange, symbol, "trade", source, start, end, cols)
    prior = _prior_state(storage, "trade", exchange, symbol, "trade", source, start, intervals, cols, False)
    out = pd.DataFrame(np.nan, index=range(n), columns=list(TRADE_VALUES))
    out["volume"] = 0.0
    out["buy_volume"] = 0.0
    out["sell_volume"] = 0.0
    out["trades"] = 0.0
    if len(df):
        df = df.sort_values("timestamp", kind="stable")
        pos, keep = _positions(_labels(df["timestamp"].to_numpy(), False), start, n)
        df = df[keep].assign(pos=pos[keep])
        df["notional"] = df["price"] * df["amount"]
        df["buy"] = np.where(df["side"] == "buy", df["amount"], 0.0)
        df["sell"] = np.where(df["side"] == "sell", df["amount"], 0.0)
        g = df.groupby("pos")
        idx = g.size().index.to_numpy()
        out.loc[idx, "open"] = g["price"].first().to_numpy()
        out.loc[idx, "high"] = g["price"].max().to_numpy()
        out.loc[idx, "low"] = g["price"].min().to_numpy()
        out.loc[idx, "close"] = g["price"].last().to_numpy()
        volume = g["amount"].sum().to_numpy()
        out.loc[idx, "volume"] = volume
        out.loc[idx, "buy_volume"] = g["buy"].sum().to_numpy()
        out.loc[idx, "sell_volume"] = g["sell"].sum().to_numpy()
        out.loc[idx, "trades"] = g.size().to_numpy().astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.loc[idx, "vwap"] = g["notional"].sum().to_numpy() / volume
    _flat_bars(out, block, prior[1] if prior is not None else None)
    return out.to_numpy(), block >= 0


def _flat_bars(out, block, prior_close):
    """Quiet covered minutes: volume 0 and open = high = low = close = the last close (if known)."""
    traded = out["trades"].to_numpy() > 0
    close = out["close"].copy()
    if prior_close is not None and len(close) and block[0] >= 0 and not traded[0]:
        close.iloc[0] = prior_close
    carried = _ffill_within_blocks(close.to_frame(), block)["close"].to_numpy()
    quiet = ~traded
    for column in ("open", "high", "low", "close"):
        out.loc[quiet, column] = carried[quiet]


# -- trade bars ----------------------------------------------------------------------------------
def _bar_minutes(storage, exchange, symbol, data_type, start, end, source, block, intervals):
    n = len(block)
    cols = ["timestamp", "open_timestamp", "open", "high", "low", "close", "volume", "buy_volume", "sell_volume",
            "trades", "vwap"]
    df = _load(storage, "trade_bar", exchange, symbol, data_type.name, source, start, end + 1, cols)
    prior = _prior_state(storage, "trade_bar", exchange, symbol, data_type.name, source, start, intervals,
                         cols, True)
    out = pd.DataFrame(np.nan, index=range(n), columns=list(TRADE_VALUES))
    for column in ("volume", "buy_volume", "sell_volume", "trades"):
        out[column] = 0.0
    if len(df):
        # a bar cut short by a range start or a reconnect shares its stamp with the full bar: keep the fullest
        df = df.sort_values(["timestamp", "trades", "volume"], kind="stable").drop_duplicates("timestamp", keep="last")
        pos, keep = _positions(_labels(df["timestamp"].to_numpy(), True), start, n)
        df = df[keep].assign(pos=pos[keep]).groupby("pos").last()
        idx = df.index.to_numpy()
        for column in TRADE_VALUES:
            out.loc[idx, column] = df[column].to_numpy()
    _flat_bars(out, block, prior[5] if prior is not None else None)
    return out.to_numpy(), block >= 0


# -- derivative tickers --------------------------------------------------------------------------
def _ticker_minutes(storage, exchange, symbol, start, end, source, block, intervals):
    n = len(block)
    cols = ["timestamp", "local_timestamp", "seq"] + list(TICKER_VALUES)
    df = _load(storage, "derivative_ticker", exchange, symbol, "derivative_ticker", source, start, end, cols)
    prior = _prior_state(storage, "derivative_ticker", exchange, symbol, "derivative_ticker", source, start,
                         intervals, cols, False)
    out = pd.DataFrame(np.nan, index=range(n), columns=list(TICKER_VALUES))
    if len(df):
        df = df.sort_values(["timestamp", "local_timestamp", "seq"], kind="stable")
        pos, keep = _positions(_labels(df["timestamp"].to_numpy(), False), start, n)
        last = df[keep].assign(pos=pos[keep]).groupby("pos")[list(TICKER_VALUES)].last()
        out.loc[last.index.to_numpy(), list(TICKER_VALUES)] = last.to_numpy()
    if prior is not None and n and block[0] >= 0:
        row = dict(zip(cols, prior))
        for column in TICKER_VALUES:
            if pd.isna(out.loc[0, column]) and row[column] is not None:
                out.loc[0, column] = row[column]
    out[:] = _ffill_within_blocks(out, block).to_numpy()
    known = (block >= 0) & out.notna().any(axis=1).to_numpy()
    return out.to_numpy(), known


# -- several streams and sources -------------------------------------------------------------------
def combine(frames):
    """Stitch per-source frames of one stream (priority order, e.g. replay then live) minute by minute.

    Each minute takes the first source that knows it; a minute no source knows stays missing.
    """
    frames = [f for f in frames if f is not None]
    result = frames[0].copy()
    for frame in frames[1:]:
        take = result["missing"].to_numpy() & ~frame["missing"].to_numpy()
        if take.any():
            result.loc[take, :] = frame.loc[take, :].to_numpy()
    result["missing"] = result["missing"].astype(bool)
    return result


def series(storage, exchange, symbols, data_types, start, end, sources=SOURCES):
    """Minute series of several streams: ``{(symbol, data_type): DataFrame}`` (see :func:`stream_series`).

    With several ``sources`` (default replay then live) each minute comes from the first source that
    covers it.
    """
    result = {}
    for symbol in symbols:
        for data_type in data_types:
            data_type = _as_type(data_type)
            frames = [stream_series(storage, exchange, symbol, data_type, start, end, source) for source in sources]
            result[(symbol, data_type.name)] = combine(frames)
    return result


def to_long(frames, exchange):
    """One long frame: a row per (symbol, data type, minute) with ``minute`` as an ISO-8601 UTC column."""
    parts = []
    for (symbol, data_type), frame in frames.items():
        part = frame.reset_index()
        part.insert(1, "exchange", exchange)
        part.insert(2, "symbol", symbol)
        part.insert(3, "data_type", data_type)
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["minute", "exchange", "symbol", "data_type", "source", "missing"])
    long = pd.concat(parts, ignore_index=True, sort=False)
    ordered = ["minute", "exchange", "symbol", "data_type", "source", "missing"]
    return long[ordered + [c for c in long.columns if c not in ordered]]
