"""Ground truth minute series straight from the fake market model (never from gapless code).

:func:`minute_truth` computes, for one (exchange, symbol, data type), what a perfect minute
series must hold, from the :class:`~tests.fake_tardis.market.Market` arrays themselves (the
segments' trades, book changes and tickers), not from the normalizer's output lines:

* ``trade`` and time bars whose interval divides a minute (``trade_bar_1m``,
  ``trade_bar_10s`` ...): open, high, low, close, volume, buy_volume, sell_volume, trades
  and vwap of the trades with exchange time in the minute. A minute without trades has
  volume 0 and open = high = low = close = the last trade price before it (NaN only if
  the symbol never traded).
* ``quote``, ``quote_<N>``, ``book_snapshot_<depth>_<N>``: the book after every change
  with exchange time BEFORE the minute's end (the tardis rule: a snapshot stamped T is the
  book as of the last change before T): level 0 as bid/ask price/amount, ``mid_close``,
  and the deeper levels as ``bids_<k>_price`` ... (NaN where the book is shallower).
* ``liquidation``: the trades the model marks as liquidations (``market.liquidation_kind``), with tardis'
  side rule (``market.liquidation_side``): their count (``liquidations``), volume, buy/sell volume and vwap. A
  minute without one has count and volumes 0 and vwap NaN.
* ``derivative_ticker``: the last value of each field stamped before the minute's end.
  Like the book (and like gapless, which files a message stamped exactly at 13:31:00
  under the 13:31 row), the end is exclusive: an update stamped on the minute belongs
  to the next row.
* ``book_ticker`` (one message per ticker event of the symbol, no change detection): ``bid_price``,
  ``bid_amount``, ``ask_price``, ``ask_amount`` of the LAST message stamped before the minute's end (a side
  the message leaves out is NaN: not carried from earlier messages); ``mid_open``/``mid_high``/``mid_low``/
  ``mid_close`` of ``mid = (bid + ask) / 2`` over the messages stamped inside the minute, open/high/low ignoring
  the NaN mids of one-sided messages (open = first non-NaN; NaN if the minute has no two-sided message), close
  the mid at the close: the last message's (NaN when it is one-sided). A minute without messages: bid/ask of the last message before it and
  open = high = low = close = its mid. A perpetual's top of book at a ticker is recomputed here from the
  segments' book arrays (every change of the same day strictly before the ticker; empty before the day's
  snapshot); an option's is its quotes (``option_model``). An option's minutes from its expiry on are NaN.
* ``option_summary``: every value column (``OPTION_SUMMARY_COLUMNS``) of the last message stamped before the
  minute's end, NaN where that message leaves the field out (no bid, no ask, no trade yet); minutes at or after
  the expiry (08:00 UTC of its date) are all NaN. :func:`option_contract` gives the static fields.

Everything is in exchange time: a clock skew only moves local times, and quiet windows
are already in the model (their events do not exist). Prices are the floats the double
prints (``render.price_str``), so they compare exactly with stored values; vwap is
``sum(price * amount) / volume`` and may differ from a bar's running vwap in the last bits.
Perturbations (``machine.perturb``) are faults, not truth: they are ignored.

:func:`whole_minutes` / :func:`served_whole_minutes` say which exchange minutes a local time
range (a replay request or a live connection the double served) could have delivered
whole, for raw events (trades, ticker updates, book changes).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tests.fake_tardis import option_model
from tests.fake_tardis.market import (KIND_TICKER, KIND_TRADE, OPTION_BLOCK_MS, SEGMENT_MS, SEGMENTS_PER_DAY, Market,
                                      MarketConfig, liquidation_kind, liquidation_side, symbol_params)
from tests.fake_tardis.options import parse_data_type
from tests.fake_tardis.render import cents_str, price_str
from tests.fake_tardis.streams import reconnect_snapshot_ms

__all__ = ["minute_truth", "trades_truth", "truth_columns", "whole_minutes", "served_whole_minutes", "option_contract",
           "TRADE_COLUMNS", "QUOTE_COLUMNS", "TICKER_COLUMNS", "BOOK_TICKER_COLUMNS", "OPTION_SUMMARY_COLUMNS"]

MINUTE_MS = 60_000
MINUTE_US = 60_000_000
TRADE_COLUMNS = ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "trades", "vwap")
QUOTE_COLUMNS = ("bid_price", "bid_amount", "ask_price", "ask_amount", "mid_close")
TICKER_COLUMNS = ("last_price", "open_interest", "funding_rate", "index_price", "mark_price")
LIQUIDATION_COLUMNS = ("liquidations", "volume", "buy_volume", "sell_volume", "vwap")
BOOK_TICKER_COLUMNS = ("bid_price", "bid_amount", "ask_price", "ask_amount", "mid_open", "mid_high", "mid_low",
                       "mid_close")
OPTION_SUMMARY_COLUMNS = ("best_bid_price", "best_bid_amount", "best_bid_iv", "best_ask_price", "best_ask_amount",
                          "best_ask_iv", "last_price", "open_interest", "mark_price", "mark_iv", "delta", "gamma",
                          "vega", "theta", "rho", "underlying_price")
assert OPTION_SUMMARY_COLUMNS == option_model.OPTION_COLUMNS  # the model stores its values in this order


# -- data types ------------------------------------------------------------------------------
def _family(data_type: str):
    """-> ("trade", None) | ("book", depth) | ("ticker" | "liquidation" | "book_ticker" | "option_summary", None), or
    ValueError."""
    kind, spec = parse_data_type(data_type)
    if kind == "trade":
        return "trade", None
    if kind == "bar":
        if spec.kind != "time" or MINUTE_MS % spec.interval:
            raise ValueError(f"{data_type}: only time bars whose interval divides a minute have minute truth")
        return "trade", None
    if kind == "book":
        return "book", spec.depth
    if kind == "ticker":
        return "ticker", None
    if kind == "liquidation":
        return "liquidation", None
    if kind in ("book_ticker", "option_summary"):
        return kind, None
    raise ValueError(f"{data_type}: no minute truth (book_change is not a minute series)")


def truth_columns(data_type: str) -> tuple[str, ...]:
    """The value columns :func:`minute_truth` returns for ``data_type``."""
    family, depth = _family(data_type)
    if family == "trade":
        return TRADE_COLUMNS
    if family == "ticker":
        return TICKER_COLUMNS
    if family == "liquidation":
        return LIQUIDATION_COLUMNS
    if family == "book_ticker":
        return BOOK_TICKER_COLUMNS
    if family == "option_summary":
        return OPTION_SUMMARY_COLUMNS
    deeper = [f"{side}_{k}_{field}" for side in ("bids", "asks") for k in range(1, depth) for field in ("price", "amount")]
    return QUOTE_COLUMNS + tuple(deeper)


# -- arrays of one segment ---------------------------------------------------------------------
def _prices(ticks: np.ndarray, tick_h: int) -> np.ndarray:
    """Tick counts -> the floats the double prints (via the exact decimal text)."""
    if not len(ticks):
        return np.zeros(0)
    uniq, inverse = np.unique(ticks, return_inverse=True)
    return np.array([float(price_str(int(t), tick_h)) for t in uniq])[inverse]


def _kind_times(seg, kind: int, n: int) -> np.ndarray:
    """Exchange ms of each item ``0..n-1`` of one kind (trade messages or tickers) of a segment."""
    mask = seg.ev_kind == kind
    out = np.empty(n, dtype=np.int64)
    out[seg.ev_idx[mask]] = seg.ev_ex[mask]
    return out


def _segment_trades(seg) -> dict:
    """Every trade of a segment in exchange-time order: ex ms, price, amount, buy, id."""
    groups = len(seg.g_off) - 1
    t_ex = np.repeat(_kind_times(seg, KIND_TRADE, groups), np.diff(seg.g_off))
    return {"ex": t_ex, "price": _prices(seg.t_px, seg.params.tick_h), "amount": seg.t_amt.astype(np.float64),
            "buy": seg.t_buy.astype(bool), "id": seg.t_id}


def _segment_tickers(seg) -> tuple[np.ndarray, np.ndarray]:
    """(ex ms, rows of TICKER_COLUMNS) of a segment's ticker updates, in time order."""
    n = len(seg.k_last)
    ex = _kind_times(seg, KIND_TICKER, n)
    rows = np.column_stack([
        _prices(seg.k_last, seg.params.tick_h),
        seg.k_oi.astype(np.float64),
        seg.k_fund / 1e8,  # what js_number(fund / 1e8) prints reads back as this float
        [float(cents_str(int(c))) for c in seg.k_index],
        [float(cents_str(int(c))) for c in seg.k_mark],
    ]) if n else np.zeros((0, len(TICKER_COLUMNS)))
    order = np.argsort(ex, kind="stable")
    return ex[order], rows[order]


def _segments(market: Market, exchange: str, symbol: str, lo_ms: int, hi_ms: int):
    for index in range(lo_ms // SEGMENT_MS, (hi_ms - 1) // SEGMENT_MS + 1):
        yield market.segment(exchange, symbol, index)


def _last_before(market: Market, exchange: str, symbol: str, t_ms: int, rows_of):
    """The last row (``rows_of(seg) -> (ex, rows)``) stamped before ``t_ms``, searching back as far as needed.

    Quiet windows are skipped without generating them; None if there is nothing before
    (never before the epoch).
    """
    windows = market.config.quiet_windows(symbol)
    t = t_ms
    while t > 0:
        moved = True
        while moved:  # jump over quiet time that ends at or after t
            moved = False
            for a, b in windows:
                if a < t <= b:
                    t, moved = a, True
        if t <= 0:
            return None
        index = (t - 1) // SEGMENT_MS
        ex, rows = rows_of(market.segment(exchange, symbol, index))
        k = int(np.searchsorted(ex, t, side="left"))
        if k > 0:
            return rows[k - 1]
        t = index * SEGMENT_MS
    return None


# -- the truth ---------------------------------------------------------------------------------
def _as_market(market) -> Market:
    if isinstance(market, MarketConfig):
        return Market(market)
    return getattr(market, "market", market)  # a FakeTardisMachine works too


def _minutes(start_us: int, end_us: int) -> np.ndarray:
    if start_us % MINUTE_US or end_us % MINUTE_US or end_us < start_us:
        raise ValueError("start_us and end_us must be minute aligned, start <= end")
    return np.arange(start_us // 1000, end_us // 1000, MINUTE_MS, dtype=np.int64)


def minute_truth(market, exchange: str, symbol: str, data_type: str, start_us: int, end_us: int) -> pd.DataFrame:
    """The true minute series of one stream over ``[start_us, end_us)`` (µs, minute aligned).

    ``market`` is a :class:`Market` (or a MarketConfig, or a FakeTardisMachine). Returns a
    DataFrame of float columns (:func:`truth_columns`) indexed by minute start (tz-aware
    UTC DatetimeIndex named ``minute``). See the module docstring for the rules.
    """
    market = _as_market(market)
    minutes = _minutes(start_us, end_us)
    family, depth = _family(data_type)
    if family == "trade":
        values = _trade_minutes(market, exchange, symbol, minutes)
    elif family == "book":
        values = _book_minutes(market, exchange, symbol, minutes, depth)
    elif family == "liquidation":
        values = _liquidation_minutes(market, exchange, symbol, minutes)
    elif family == "book_ticker":
        values = _book_ticker_minutes(market, exchange, symbol, minutes)
    elif family == "option_summary":
        values = _option_summary_minutes(market, exchange, symbol, minutes)
    else:
        values = _ticker_minutes(market, exchange, symbol, minutes)
    index = pd.DatetimeIndex(pd.to_datetime(minutes * 1000, unit="us", utc=True), name="minute")
    return pd.DataFrame(values, index=index, columns=list(truth_columns(data_type)), dtype=np.float64)


def trades_truth(market, exchange: str, symbol: str, start_us: int, end_us: int) -> pd.DataFrame:
    """Every trade with exchange time in ``[start_us, end_us)``: id, price, amount, side, timestamp (ms).

    ``id`` is None on an exchange without trade ids (``MarketConfig.no_trade_ids``)."""
    market = _as_market(market)
    lo, hi = start_us // 1000, -(-end_us // 1000)
    prefix = symbol_params(symbol).id_prefix
    with_ids = exchange not in market.config.no_trade_ids
    parts = []
    for seg in (_segments(market, exchange, symbol, lo, hi) if hi > lo else ()):
        t = _segment_trades(seg)
        keep = (t["ex"] >= lo) & (t["ex"] < hi)
        ids = [prefix + str(int(i)) if with_ids else None for i in t["id"][keep]]
        parts.append(pd.DataFrame({"id": ids, "price": t["price"][keep],
                                   "amount": t["amount"][keep].astype(np.int64),
                                   "side": np.where(t["buy"][keep], "buy", "sell"),
                                   "timestamp": t["ex"][keep]}))
    if not parts:
        return pd.DataFrame({"id": [], "price": [], "amount": [], "side": [], "timestamp": []})
    return pd.concat(parts, ignore_index=True)


def _trade_minutes(market, exchange, symbol, minutes) -> np.ndarray:
    n = len(minutes)
    out = np.full((n, len(TRADE_COLUMNS)), np.nan)
    out[:, 4:8] = 0.0  # volume, buy_volume, sell_volume, trades
    if not n:
        return out
    lo, hi = int(minutes[0]), int(minutes[-1]) + MINUTE_MS
    parts = [_segment_trades(seg) for seg in _segments(market, exchange, symbol, lo, hi)]
    t = {k: np.concatenate([p[k] for p in parts]) for k in ("ex", "price", "amount", "buy")}
    keep = (t["ex"] >= lo) & (t["ex"] < hi)
    ex, price, amount, buy = t["ex"][keep], t["price"][keep], t["amount"][keep], t["buy"][keep]
    if len(ex):
        df = pd.DataFrame({"pos": (ex - lo) // MINUTE_MS, "price": price, "amount": amount,
                           "buy": np.where(buy, amount, 0.0), "sell": np.where(buy, 0.0, amount),
                           "notional": price * amount})
        g = df.groupby("pos", sort=True)  # rows are in time order within each minute
        pos = g.size().index.to_numpy()
        volume = g["amount"].sum().to_numpy()
        out[pos, 0] = g["price"].first().to_numpy()
        out[pos, 1] = g["price"].max().to_numpy()
        out[pos, 2] = g["price"].min().to_numpy()
        out[pos, 3] = g["price"].last().to_numpy()
        out[pos, 4] = volume
        out[pos, 5] = g["buy"].sum().to_numpy()
        out[pos, 6] = g["sell"].sum().to_numpy()
        out[pos, 7] = g.size().to_numpy()
        out[pos, 8] = g["notional"].sum().to_numpy() / volume
    # minutes without trades: flat at the last price before them
    last = None
    for i in range(n):
        if out[i, 7] > 0:
            last = out[i, 3]
            continue
        if last is None:
            found = _last_before(market, exchange, symbol, int(minutes[i]),
                                 lambda seg: (lambda tr: (tr["ex"], tr["price"]))(_segment_trades(seg)))
            last = math.nan if found is None else float(found)
        out[i, 0:4] = last
    return out


def _liquidation_minutes(market, exchange, symbol, minutes) -> np.ndarray:
    n = len(minutes)
    out = np.full((n, len(LIQUIDATION_COLUMNS)), np.nan)
    out[:, 0:4] = 0.0  # liquidations, volume, buy_volume, sell_volume
    if not n:
        return out
    lo, hi = int(minutes[0]), int(minutes[-1]) + MINUTE_MS
    prefix = symbol_params(symbol).id_prefix
    for seg in _segments(market, exchange, symbol, lo, hi):
        t = _segment_trades(seg)
        for j in np.flatnonzero((t["ex"] >= lo) & (t["ex"] < hi)).tolist():
            kind = liquidation_kind(symbol, prefix + str(int(t["id"][j])))
            if kind is None:
                continue
            i = (int(t["ex"][j]) - lo) // MINUTE_MS
            amount, price = float(t["amount"][j]), float(t["price"][j])
            side = liquidation_side(kind, bool(t["buy"][j]))
            out[i, 0] += 1
            out[i, 1] += amount
            out[i, 2 if side == "buy" else 3] += amount
            out[i, 4] = (0.0 if out[i, 0] == 1 else out[i, 4]) + price * amount  # the notional until divided below
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, 4] = np.where(out[:, 0] > 0, out[:, 4] / out[:, 1], np.nan)
    return out


def _book_minutes(market, exchange, symbol, minutes, depth: int) -> np.ndarray:
    tick_h = symbol_params(symbol).tick_h
    cols = len(QUOTE_COLUMNS) + 4 * (depth - 1)
    out = np.full((len(minutes), cols), np.nan)
    px = {}

    def price(ticks):
        if ticks not in px:
            px[ticks] = float(price_str(ticks, tick_h))
        return px[ticks]

    for i, m in enumerate(minutes.tolist()):
        end = m + MINUTE_MS
        bids, asks = _book_before(market, exchange, symbol, end)  # every change before the minute's end
        if bids:
            out[i, 0], out[i, 1] = price(bids[0][0]), bids[0][1]
        if asks:
            out[i, 2], out[i, 3] = price(asks[0][0]), asks[0][1]
        out[i, 4] = (out[i, 0] + out[i, 2]) / 2
        c = len(QUOTE_COLUMNS)
        for levels in (bids, asks):
            for k in range(1, depth):
                if k < len(levels):
                    out[i, c], out[i, c + 1] = price(levels[k][0]), levels[k][1]
                c += 2
    return out


_BOOKS: dict = {}


def _book_before(market, exchange, symbol, ms):
    """``market.book_before``, remembered (the harness checks the same minutes again and again)."""
    key = (market.config, exchange, symbol, ms)
    book = _BOOKS.get(key)
    if book is None:
        if len(_BOOKS) > 200_000:
            _BOOKS.clear()
        book = _BOOKS[key] = market.book_before(exchange, symbol, ms)
    return book


def _ticker_minutes(market, exchange, symbol, minutes) -> np.ndarray:
    n = len(minutes)
    out = np.full((n, len(TICKER_COLUMNS)), np.nan)
    if not n:
        return out
    lo, hi = int(minutes[0]), int(minutes[-1]) + MINUTE_MS
    parts = [_segment_tickers(seg) for seg in _segments(market, exchange, symbol, lo, hi)]
    ex = np.concatenate([p[0] for p in parts])
    rows = np.concatenate([p[1] for p in parts])
    before = ...  # searched back only if a minute needs it (it may generate earlier days)
    for i, m in enumerate(minutes.tolist()):
        k = int(np.searchsorted(ex, m + MINUTE_MS, side="left"))  # stamped before the minute's end
        if k > 0:
            out[i] = rows[k - 1]
            continue
        if before is ...:
            before = _last_before(market, exchange, symbol, lo, _segment_tickers)
        if before is not None:
            out[i] = before
    return out


# -- the ticker channel: book_ticker and option_summary ------------------------------------------------
def option_contract(symbol: str) -> dict | None:
    """The static fields of an option instrument (None if ``symbol`` names none): ``option_type`` ("call"/"put"),
    ``strike_price`` (float), ``expiration_date`` (pd.Timestamp, 08:00 UTC of the expiry date) and
    ``underlying_index`` (``"BTC-29JAN27"``, or ``"SYN.BTC-8DEC26"`` when no future expires that day)."""
    c = option_model.option_contract(symbol.upper())
    if c is None:
        return None
    return {"option_type": c.option_type, "strike_price": float(c.strike),
            "expiration_date": pd.Timestamp(c.expiry_ms, unit="ms", tz="UTC"), "underlying_index": c.underlying_index}


def _segment_book_tickers(market, exchange, symbol, index):
    """(ex ms, rows of bid px, bid amount, ask px, ask amount) of a perpetual's ticker events in one segment,
    NaN for an empty side: the top of the book after every change of the day strictly before each ticker."""
    seg = market.segment(exchange, symbol, index)
    n = len(seg.k_last)
    ex = np.sort(_kind_times(seg, KIND_TICKER, n))
    if index % SEGMENTS_PER_DAY == 0:
        opening = None  # the day's book is empty until its snapshot
    else:
        opening, back = None, index - 1
        while opening is None:  # the best in force when the segment starts: the last change before it, that day
            prev = market.segment(exchange, symbol, back)
            if len(prev.b_best):
                opening = prev.b_best[-1]
            back -= 1
    i = np.searchsorted(seg.b_ex, ex, side="left")  # book events strictly before each ticker
    rows = np.full((n, 4), np.nan)
    has = i > 0
    top = seg.b_best[np.maximum(i - 1, 0)] if len(seg.b_best) else np.zeros((n, 4), dtype=np.int64)
    if opening is not None:
        top = np.where(has[:, None], top, np.asarray(opening)[None, :])
        has = np.ones(n, dtype=bool)
    tick_h = seg.params.tick_h
    rows[has, 0], rows[has, 1] = _prices(top[has, 0], tick_h), top[has, 1]
    rows[has, 2], rows[has, 3] = _prices(top[has, 2], tick_h), top[has, 3]
    for px, amt in ((0, 1), (2, 3)):  # a zero level is an empty side
        empty = ~(rows[:, amt] > 0)
        rows[empty, px] = rows[empty, amt] = np.nan
    return ex, rows


def _option_rows(market, exchange, symbol, index, columns):
    block = market.option_block(exchange, symbol, index)
    return block.ev_ex, block.values[:, columns]


def _ticker_channel_minutes(market, exchange, symbol, minutes, rows_of, unit_ms, expiry_ms):
    """For each minute: (rows of the messages stamped inside it, the last row stamped before its end or None)."""
    lo, hi = int(minutes[0]), int(minutes[-1]) + MINUTE_MS
    parts = [rows_of(i) for i in range(lo // unit_ms, (hi - 1) // unit_ms + 1)]
    ex = np.concatenate([p[0] for p in parts])
    rows = np.concatenate([p[1] for p in parts])
    before = ...  # the last row before ``lo``, searched back only if a minute needs it
    out = []
    for m in minutes.tolist():
        if m >= expiry_ms:
            out.append((None, None))
            continue
        a, b = np.searchsorted(ex, [m, m + MINUTE_MS], side="left")
        if b > 0:
            out.append((rows[a:b], rows[b - 1]))
            continue
        if before is ...:
            before = _last_row_before(market, symbol, lo, rows_of, unit_ms)
        out.append((rows[a:b], before))
    return out


def _last_row_before(market, symbol, t_ms, rows_of, unit_ms, limit_ms=30 * 86_400_000):
    """The last row stamped before ``t_ms`` (quiet windows skipped without generating them); None if nothing
    within ``limit_ms`` before."""
    windows = market.config.quiet_windows(symbol)
    t, floor = t_ms, max(0, t_ms - limit_ms)
    while t > floor:
        moved = True
        while moved:
            moved = False
            for a, b in windows:
                if a < t <= b:
                    t, moved = a, True
        if t <= floor:
            return None
        index = (t - 1) // unit_ms
        ex, rows = rows_of(index)
        k = int(np.searchsorted(ex, t, side="left"))
        if k > 0:
            return rows[k - 1]
        t = index * unit_ms
    return None


def _book_ticker_minutes(market, exchange, symbol, minutes) -> np.ndarray:
    n = len(minutes)
    out = np.full((n, len(BOOK_TICKER_COLUMNS)), np.nan)
    if not n:
        return out
    contract = option_model.option_contract(symbol)
    if contract is None:
        def rows_of(index):
            return _segment_book_tickers(market, exchange, symbol, index)
        unit, expiry = SEGMENT_MS, 1 << 62
    else:
        def rows_of(index):
            return _option_rows(market, exchange, symbol, index, [0, 1, 3, 4])
        unit, expiry = OPTION_BLOCK_MS, contract.expiry_ms
    for i, (inside, last) in enumerate(_ticker_channel_minutes(market, exchange, symbol, minutes, rows_of, unit,
                                                               expiry)):
        if last is None:
            continue
        out[i, 0:4] = last
        if len(inside):
            mids = (inside[:, 0] + inside[:, 2]) / 2
            valid = mids[~np.isnan(mids)]
            if len(valid):
                out[i, 4:7] = valid[0], valid.max(), valid.min()
            out[i, 7] = mids[-1]  # the mid at the close: undefined (NaN) when a side of the last message is empty
        else:
            out[i, 4:8] = (last[0] + last[2]) / 2
    return out


def _option_summary_minutes(market, exchange, symbol, minutes) -> np.ndarray:
    n = len(minutes)
    out = np.full((n, len(OPTION_SUMMARY_COLUMNS)), np.nan)
    contract = option_model.option_contract(symbol)
    if not n or contract is None:  # a perpetual sends no option_summary
        return out
    columns = list(range(len(OPTION_SUMMARY_COLUMNS)))

    def rows_of(index):
        return _option_rows(market, exchange, symbol, index, columns)

    for i, (_, last) in enumerate(_ticker_channel_minutes(market, exchange, symbol, minutes, rows_of,
                                                          OPTION_BLOCK_MS, contract.expiry_ms)):
        if last is not None:
            out[i] = last
    return out


# -- what a served range could hold ---------------------------------------------------------------
def whole_minutes(config: MarketConfig, local_start_us: int, local_end_us: int, exchange: str = "deribit",
                  outages=()) -> list[int]:
    """Exchange minutes (start µs) all of whose raw events arrive in local ``[start, end)``.

    An event stamped ``ex`` arrives at ``ex + skew + latency`` with latency in
    ``[0, latency_ms[1]]``; ``outages`` (local time, as given to the machine) hide the
    exchange time from their start to the reconnect snapshot. Raw events only: a bar or
    interval snapshot also needs the next event after the minute's end, and book types
    need the day's snapshot inside the range.
    """
    skew, late = config.skew_ms, int(math.ceil(config.latency_ms[1]))
    first = -(-(local_start_us // 1000 - skew) // MINUTE_MS) * MINUTE_MS  # first minute starting at or after
    stop = (-(-local_end_us // 1000) - skew - late) // MINUTE_MS * MINUTE_MS  # minutes ending by then
    holes = [(-(-o.start_us // 1000) - skew, reconnect_snapshot_ms(config.seed, exchange, o.end_us, skew))
             for o in outages]
    return [m * 1000 for m in range(first, stop, MINUTE_MS)
            if not any(a < m + MINUTE_MS and m < b for a, b in holes)]


def served_whole_minutes(machine, record) -> list[int]:
    """:func:`whole_minutes` of a replay ``RequestRecord`` or a live ``ConnectionRecord`` the machine served.

    A replay counts only if it completed without a fault (cut by availability: up to the
    limit). A live connection covers its opening to its close (or now); exchange drops
    made with ``machine.exchange_drop()`` are not recorded and so not accounted for.
    """
    config = machine.market.config

    def us(dt):
        return int(dt.timestamp()) * 1_000_000 + dt.microsecond

    if hasattr(record, "lines_sent"):  # a replay request
        if not record.completed or record.fault or record.status != 200 or record.from_ is None:
            return []
        end = us(record.to)
        if record.cut_by_availability:
            end = min(end, us(record.available_until))
        exchange = record.options[0].get("exchange", "deribit")
        return whole_minutes(config, us(record.from_), end, exchange, machine.replay_outages)
    end = us(record.closed_at) if record.closed_at is not None else machine.clock.now_us()
    exchange = record.options[0].get("exchange", "deribit") if record.options else "deribit"
    return whole_minutes(config, us(record.opened_at), end, exchange, machine.live_outages)
