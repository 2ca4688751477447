"""Minute aggregates: what the rows inside one minute say, nothing carried (pure functions, no storage).

For books (and book tickers) the state after the minute's last snapshot and the mid's open/high/low/close over
its snapshots; for trades and bars the OHLC, volumes, count and vwap; for liquidations their count, volumes and
vwap; for tickers the last value of each field; for option summaries the minute's last message. Used only by the
minute store (:mod:`gapless.minutes`).

Labels: a row belongs to the minute that contains its timestamp; a sampled row (``quote_1m``,
``trade_bar_10s`` ...) is stamped at its interval's END, so a stamp of exactly 13:31:00 belongs to 13:30.
"""
import re

import numpy as np
import orjson

from .aggtable import Aggregates

from .datatypes import parse_data_type
from .schema import LIQUIDATION_VALUES, OPTION_VALUES, QUOTE_VALUES, TICKER_VALUES, TRADE_VALUES
from .timeutil import MINUTE_US

_BOOK_TICKER_LEVELS = {"bid_price": "bids_0_price", "bid_amount": "bids_0_amount", "ask_price": "asks_0_price",
                       "ask_amount": "asks_0_amount"}
_TOP_OF_BOOK = parse_data_type("quote")
_TRAILING_DIGITS = re.compile(r"(\d+)$")


def value_columns(data_type):
    """The value columns of a data type's minute series (deeper book levels after the top of book)."""
    data_type = _as_type(data_type)
    if data_type.family == "book_snapshot":
        return QUOTE_VALUES + deeper_level_columns(data_type.depth)
    if data_type.family == "book_ticker":
        return QUOTE_VALUES
    if data_type.family in ("trade", "trade_bar"):
        return TRADE_VALUES
    if data_type.family == "derivative_ticker":
        return TICKER_VALUES
    if data_type.family == "liquidation":
        return LIQUIDATION_VALUES
    if data_type.family == "option_summary":
        return OPTION_VALUES
    raise ValueError("no minute series for %s" % (data_type.name,))


def deeper_level_columns(depth):
    """``bids_1_price`` ... ``asks_<depth-1>_amount``: the book levels below the top."""
    extra = []
    for side in ("bids", "asks"):
        for i in range(1, depth):
            extra += ["%s_%d_price" % (side, i), "%s_%d_amount" % (side, i)]
    return tuple(extra)


def _as_type(data_type):
    return parse_data_type(data_type) if isinstance(data_type, str) else data_type


def labels(timestamps, sampled):
    """Minute (µs) each timestamp belongs to: its own, or for interval-end stamps the minute it closes."""
    ts = np.asarray(timestamps, dtype=np.int64)
    if sampled:
        return -(-ts // MINUTE_US) * MINUTE_US - MINUTE_US
    return ts - ts % MINUTE_US


def load_range(data_type, lo, hi):
    """The row timestamps ``[from, to)`` whose labels are the minutes ``[lo, hi)``."""
    if _as_type(data_type).interval:
        return lo + 1, hi + 1
    return lo, hi


def source_columns(data_type):
    """The stored columns the aggregation of a data type reads."""
    data_type = _as_type(data_type)
    if data_type.family == "book_snapshot":
        levels = ["bids_0_price", "bids_0_amount", "asks_0_price", "asks_0_amount"]
        return ["timestamp", "local_timestamp", "seq"] + levels + list(deeper_level_columns(data_type.depth))
    if data_type.family in ("trade", "liquidation"):
        return ["timestamp", "local_timestamp", "trade_id", "price", "amount", "side", "seq"]
    if data_type.family == "book_ticker":
        return ["timestamp", "local_timestamp", "seq"] + list(_BOOK_TICKER_LEVELS)
    if data_type.family == "option_summary":
        return ["timestamp", "local_timestamp", "seq"] + list(OPTION_VALUES)
    if data_type.family == "trade_bar":
        return ["timestamp", "open_timestamp", "open", "high", "low", "close", "volume", "buy_volume",
                "sell_volume", "trades", "vwap"]
    return ["timestamp", "local_timestamp", "seq"] + list(TICKER_VALUES)


# -- aggregation (pure) --------------------------------------------------------------------------------
def aggregate(data_type, rows):
    """Per-minute aggregates of one stream's rows (a DataFrame with :func:`source_columns`).

    Returns :class:`~gapless.aggtable.Aggregates`: per minute ``n``, ``first_ts``, ``last_ts``, the value columns
    that the family has, and for book snapshots ``levels`` (a JSON list of the deeper book levels).
    """
    data_type = _as_type(data_type)
    if rows is None or not len(rows):
        return _empty()
    family = data_type.family
    if family == "book_snapshot":
        return _book(data_type, rows)
    if family == "trade":
        return _trades(rows)
    if family == "trade_bar":
        return _bars(rows)
    if family == "liquidation":
        return _liquidations(rows)
    if family == "option_summary":
        return _last_message(rows, OPTION_VALUES)
    if family == "book_ticker":
        # the best levels of each ticker message, aggregated like a top-of-book snapshot: state at the close, mid
        # over the messages (a side the message omitted is NaN there)
        return _book(_TOP_OF_BOOK, rows.rename(columns=_BOOK_TICKER_LEVELS))
    return _tickers(rows)


def _empty():
    return Aggregates.empty()


def _groups(label_array):
    """First and last positions of each run of equal labels (labels are sorted)."""
    if not len(label_array):
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    change = np.flatnonzero(np.diff(label_array)) + 1
    first = np.concatenate(([0], change))
    last = np.concatenate((change - 1, [len(label_array) - 1]))
    return first, last


def _frame(label_array, first, last, ts, columns, levels=None):
    return Aggregates.from_groups(label_array, first, last, ts, columns, levels)


def _book(data_type, rows):
    rows = rows.sort_values(["timestamp", "local_timestamp", "seq"], kind="stable")
    ts = rows["timestamp"].to_numpy(dtype=np.int64)
    minute = labels(ts, data_type.interval > 0)
    first, last = _groups(minute)
    bid = rows["bids_0_price"].to_numpy(dtype=float)
    ask = rows["asks_0_price"].to_numpy(dtype=float)
    mid = (bid + ask) / 2.0
    with np.errstate(invalid="ignore"):
        columns = {
            "bid_price": bid[last], "bid_amount": rows["bids_0_amount"].to_numpy(dtype=float)[last],
            "ask_price": ask[last], "ask_amount": rows["asks_0_amount"].to_numpy(dtype=float)[last],
            "mid_open": _first_valid(mid, first, last), "mid_high": np.fmax.reduceat(mid, first),
            "mid_low": np.fmin.reduceat(mid, first), "mid_close": mid[last],
        }
    deeper = list(deeper_level_columns(data_type.depth))
    levels = None
    if deeper:
        values = rows[deeper].to_numpy(dtype=float)[last]
        levels = [orjson.dumps([None if v != v else v for v in row]).decode() for row in values.tolist()]
    return _frame(minute, first, last, ts, columns, levels)


def _first_valid(values, first, last):
    """The first non-NaN value of each group (NaN when a group has none)."""
    valid = ~np.isnan(values)
    out = np.full(len(first), np.nan)
    positions = np.flatnonzero(valid)
    if len(positions):
        k = np.searchsorted(positions, first)
        ok = k < len(positions)
        k = np.minimum(k, len(positions) - 1)
        ok &= positions[k] <= last
        out[ok] = values[positions[k[ok]]]
    return out


def _trade_order(ids):
    """A sort key for trade ids that orders ``ETH-99`` before ``ETH-100`` (the exchange's order)."""
    numbers = [int(m.group(1)) if m else -1 for m in map(_TRAILING_DIGITS.search, map(str, ids))]
    return np.asarray(numbers, dtype=np.int64)


def _trades(rows):
    # trades of one timestamp: without exchange ids in their arrival order (``seq``, the same from every
    # connection, see gapless.trade_keys), with ids in the exchange's order; ``seq`` is empty for those
    seq = rows["seq"].to_numpy(dtype=float, na_value=0.0) if "seq" in rows else 0.0
    rows = rows.assign(_order=_trade_order(rows["trade_id"]), _seq=seq)
    rows = rows.sort_values(["timestamp", "_seq", "local_timestamp", "_order", "trade_id"], kind="stable")
    ts = rows["timestamp"].to_numpy(dtype=np.int64)
    minute = labels(ts, False)
    first, last = _groups(minute)
    price = rows["price"].to_numpy(dtype=float)
    amount = rows["amount"].to_numpy(dtype=float)
    side = rows["side"].to_numpy()
    volume = np.add.reduceat(amount, first)
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap = np.add.reduceat(price * amount, first) / volume
    columns = {
        "open": price[first], "high": np.maximum.reduceat(price, first), "low": np.minimum.reduceat(price, first),
        "close": price[last], "volume": volume,
        "buy_volume": np.add.reduceat(np.where(side == "buy", amount, 0.0), first),
        "sell_volume": np.add.reduceat(np.where(side == "sell", amount, 0.0), first),
        "trades": (last - first + 1).astype(float), "vwap": vwap,
    }
    return _frame(minute, first, last, ts, columns)


def _liquidations(rows):
    # the fills that liquidated someone: counted, their volume by side and their vwap (no prices of their own:
    # the minute's prices are the trades')
    return _trades(rows).renamed({"trades": "liquidations"}).select(list(LIQUIDATION_VALUES))


def _bars(rows):
    # a bar cut short (a range start, a reconnect, a second recorder that joined mid-interval) shares its
    # stamp with the whole bar, which has at least as many trades: keep the fullest, whatever came first
    rows = rows.sort_values(["timestamp", "trades", "volume", "open_timestamp"], ascending=[True, True, True, False],
                            kind="stable").drop_duplicates("timestamp", keep="last")
    ts = rows["timestamp"].to_numpy(dtype=np.int64)
    minute = labels(ts, True)
    first, last = _groups(minute)
    volume = rows["volume"].to_numpy(dtype=float)
    vwap = rows["vwap"].to_numpy(dtype=float)
    weighted = np.where(volume > 0, np.nan_to_num(vwap) * volume, 0.0)
    total = np.add.reduceat(volume, first)
    with np.errstate(invalid="ignore", divide="ignore"):
        minute_vwap = np.where(total > 0, np.add.reduceat(weighted, first) / total, np.nan)
    single = last == first  # one bar a minute (trade_bar_1m): its own vwap, bit for bit
    minute_vwap = np.where(single, vwap[first], minute_vwap)
    columns = {
        "open": rows["open"].to_numpy(dtype=float)[first],
        "high": np.maximum.reduceat(rows["high"].to_numpy(dtype=float), first),
        "low": np.minimum.reduceat(rows["low"].to_numpy(dtype=float), first),
        "close": rows["close"].to_numpy(dtype=float)[last], "volume": total,
        "buy_volume": np.add.reduceat(rows["buy_volume"].to_numpy(dtype=float), first),
        "sell_volume": np.add.reduceat(rows["sell_volume"].to_numpy(dtype=float), first),
        "trades": np.add.reduceat(rows["trades"].to_numpy(dtype=float), first), "vwap": minute_vwap,
    }
    return _frame(minute, first, last, ts, columns)


def _last_message(rows, columns):
    # each message is the instrument's whole state (a field it omits is absent, e.g. no bid: NaN), so the state at
    # the close is the minute's last message as it is, nothing taken from earlier ones
    names = list(rows.columns)
    block = rows.to_numpy(dtype=float)  # numbers only (one block): column lookups cost more than the work
    ts = block[:, names.index("timestamp")].astype(np.int64)
    order = np.lexsort((block[:, names.index("seq")], block[:, names.index("local_timestamp")], ts))
    ts = ts[order]
    minute = labels(ts, False)
    first, last = _groups(minute)
    values = block[order[last]][:, [names.index(c) for c in columns]]
    return _frame(minute, first, last, ts, {c: values[:, i] for i, c in enumerate(columns)})


def _tickers(rows):
    rows = rows.sort_values(["timestamp", "local_timestamp", "seq"], kind="stable")
    ts = rows["timestamp"].to_numpy(dtype=np.int64)
    minute = labels(ts, False)
    first, last = _groups(minute)
    # each field's last known value in the minute (a ticker message carries only what changed)
    values = rows[list(TICKER_VALUES)].astype(float).groupby(minute, sort=True).last()
    return _frame(minute, first, last, ts, {c: values[c].to_numpy() for c in TICKER_VALUES})
