"""The minute store: each stream's own per-minute aggregates, per source, kept up to date incrementally.

A minute's *own* aggregate is what the rows inside it say, nothing carried: for books the state after
its last snapshot and the mid's open/high/low/close over its snapshots; for trades and bars the OHLC,
volumes, count and vwap; for tickers the last value of each field. Only minutes that have rows get an
aggregate. What a quiet minute carries (the last book, the last price) and whether a minute is covered
at all is decided later, when the series is stitched (:mod:`gapless.series`), from these aggregates and
the coverage table: that is what makes the store incremental.

Every storage write records the time ranges it changed in ``dirty_rows`` (same transaction).
:meth:`MinuteStore.refresh` recomputes the aggregates of those ranges only, in chunks of at most
:data:`CHUNK_US` (memory stays flat whatever the lookback), records them in ``dirty_series`` for the
publisher, and consumes the dirty marks. Readers that must not write (``status``, ``series`` on the
command line) refresh *in memory* instead: the result is an overlay that wins over the stored aggregates.

Labels: a row belongs to the minute that contains its timestamp; a sampled row (``quote_1m``,
``trade_bar_10s`` ...) is stamped at its interval's END, so a stamp of exactly 13:31:00 belongs to 13:30.
"""
import logging
import re
from dataclasses import dataclass, field

import numpy as np
import orjson
import pandas as pd

from .datatypes import parse_data_type
from .exceptions import GaplessError
from .schema import QUOTE_VALUES, TICKER_VALUES, TRADE_VALUES
from .timeutil import MINUTE_US, ceil_minute, floor_minute

log = logging.getLogger(__name__)

CHUNK_US = 6 * 60 * MINUTE_US
AGG_META = ("n", "first_ts", "last_ts")
_TRAILING_DIGITS = re.compile(r"(\d+)$")


def value_columns(data_type):
    """The value columns of a data type's minute series (deeper book levels after the top of book)."""
    data_type = _as_type(data_type)
    if data_type.family == "book_snapshot":
        return QUOTE_VALUES + deeper_level_columns(data_type.depth)
    if data_type.family in ("trade", "trade_bar"):
        return TRADE_VALUES
    if data_type.family == "derivative_ticker":
        return TICKER_VALUES
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
    if data_type.family == "trade":
        return ["timestamp", "local_timestamp", "trade_id", "price", "amount", "side"]
    if data_type.family == "trade_bar":
        return ["timestamp", "open_timestamp", "open", "high", "low", "close", "volume", "buy_volume",
                "sell_volume", "trades", "vwap"]
    return ["timestamp", "local_timestamp", "seq"] + list(TICKER_VALUES)


# -- aggregation (pure) --------------------------------------------------------------------------------
def aggregate(data_type, rows):
    """Per-minute aggregates of one stream's rows (a DataFrame with :func:`source_columns`).

    Returns a DataFrame indexed by minute (int µs) with ``n``, ``first_ts``, ``last_ts``, the value columns
    that the family has, and ``levels`` (a JSON list of the deeper book levels, or None).
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
    return _tickers(rows)


def _empty():
    return pd.DataFrame(columns=list(AGG_META) + ["levels"], index=pd.Index([], dtype=np.int64, name="minute"))


def _groups(label_array):
    """First and last positions of each run of equal labels (labels are sorted)."""
    if not len(label_array):
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    change = np.flatnonzero(np.diff(label_array)) + 1
    first = np.concatenate(([0], change))
    last = np.concatenate((change - 1, [len(label_array) - 1]))
    return first, last


def _frame(label_array, first, last, ts, columns):
    out = pd.DataFrame(columns, index=pd.Index(label_array[first], name="minute"))
    out.insert(0, "last_ts", ts[last])
    out.insert(0, "first_ts", ts[first])
    out.insert(0, "n", last - first + 1)
    return out


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
    out = _frame(minute, first, last, ts, columns)
    deeper = list(deeper_level_columns(data_type.depth))
    if deeper:
        values = rows[deeper].to_numpy(dtype=float)[last]
        out["levels"] = [orjson.dumps([None if v != v else v for v in row]).decode() for row in values.tolist()]
    else:
        out["levels"] = None
    return out


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
    rows = rows.assign(_order=_trade_order(rows["trade_id"]))
    rows = rows.sort_values(["timestamp", "local_timestamp", "_order", "trade_id"], kind="stable")
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
    out = _frame(minute, first, last, ts, columns)
    out["levels"] = None
    return out


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
    out = _frame(minute, first, last, ts, columns)
    out["levels"] = None
    return out


def _tickers(rows):
    rows = rows.sort_values(["timestamp", "local_timestamp", "seq"], kind="stable")
    ts = rows["timestamp"].to_numpy(dtype=np.int64)
    minute = labels(ts, False)
    first, last = _groups(minute)
    # each field's last known value in the minute (a ticker message carries only what changed)
    values = rows[list(TICKER_VALUES)].astype(float).groupby(minute, sort=True).last()
    out = _frame(minute, first, last, ts, {c: values[c].to_numpy() for c in TICKER_VALUES})
    out["levels"] = None
    return out


# -- the store -----------------------------------------------------------------------------------------
@dataclass
class RefreshResult:
    """What a refresh did: the ranges recomputed per (exchange, symbol, data_type, source), and for an
    in-memory refresh the overlay of recomputed aggregates."""

    ranges: dict = field(default_factory=dict)
    overlay: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)  # {(exchange, symbol, data_type): why it could not be refreshed}
    seconds: float = 0.0

    @property
    def minutes(self):
        """Minutes recomputed in all."""
        return sum((hi - lo) // MINUTE_US for spans in self.ranges.values() for lo, hi in spans)


class MinuteStore:
    """Per-minute aggregates of every stream and source, in the ``minute_agg`` table of a Storage."""

    def __init__(self, storage):
        self.storage = storage
        self.models = storage.models

    # -- refreshing --------------------------------------------------------------------------------
    def pending(self, streams=None):
        """Dirty ranges waiting, merged: ``{(exchange, symbol, data_type, source): ([(lo, hi)], ids)}``.

        ``streams`` limits it to those (exchange, symbol, data_type); others are left for their owners.
        """
        if not self.storage.has_table("dirty_rows"):
            return {}
        dirty = self.models["dirty_rows"]
        wanted = None if streams is None else {tuple(s) for s in streams}
        spans = {}
        for row in dirty.select().tuples().iterator():
            ident, exchange, symbol, data_type, source, lo, hi = row
            if wanted is not None and (exchange, symbol, data_type) not in wanted:
                continue
            try:
                parse_data_type(data_type)
            except GaplessError:
                continue  # not a data type of ours (written by something else): leave it
            ranges, ids = spans.setdefault((exchange, symbol, data_type, source), ([], []))
            ranges.append((floor_minute(lo), ceil_minute(hi)))
            ids.append(ident)
        return {key: (_merge(ranges), ids) for key, (ranges, ids) in spans.items()}

    def refresh(self, streams=None, persist=True):
        """Recompute the aggregates of the dirty ranges of ``streams`` (all when None).

        ``persist``: write them (and the ranges to ``dirty_series``) and consume the dirty marks; else keep
        them in the returned overlay and write nothing (readers). A stream whose rows cannot be aggregated
        (e.g. a value that is not a number) is reported in ``errors`` and keeps its dirty marks; the others
        are refreshed all the same.
        """
        import time
        began = time.monotonic()
        result = RefreshResult()
        for key, (ranges, ids) in self.pending(streams).items():
            data_type = parse_data_type(key[2])
            if data_type.family == "book_change":
                continue  # stored for download users; it has no minute series (see datatypes.series_problem)
            try:
                for lo, hi in ranges:
                    for a in range(lo, hi, CHUNK_US):
                        b = min(hi, a + CHUNK_US)
                        frame = self._compute(key, data_type, a, b)
                        if persist:
                            self._store(key, a, b, frame)
                        else:
                            result.overlay.setdefault(key, []).append((a, b, frame))
            except Exception as exc:  # one stream's bad rows must not keep the others from being refreshed
                log.exception("aggregating %s %s %s (%s) failed", *key)
                result.errors[key[:3]] = "%s: %s" % (exc.__class__.__name__, exc)
                continue
            result.ranges[key] = ranges
            if persist and ids:
                self._consume(ids)
        result.seconds = time.monotonic() - began
        return result

    def _compute(self, key, data_type, lo, hi):
        exchange, symbol, name, source = key
        a, b = load_range(data_type, lo, hi)
        columns, rows = self.storage.read_rows(data_type.table, exchange, symbol, name, source, a, b,
                                               columns=source_columns(data_type))
        frame = pd.DataFrame.from_records(rows, columns=columns) if rows else None
        return aggregate(data_type, frame)

    def _store(self, key, lo, hi, frame):
        exchange, symbol, name, source = key
        agg = self.models["minute_agg"]
        columns = ["exchange", "symbol", "data_type", "source", "minute"] + list(AGG_META) + list(
            c for c in frame.columns if c not in AGG_META)
        rows = []
        if len(frame):
            prefix = [exchange, symbol, name, source]
            values = frame.reset_index()
            for record in values.itertuples(index=False, name=None):
                rows.append(tuple(prefix) + tuple(None if (isinstance(v, float) and v != v) else v
                                                  for v in record))
            columns = ["exchange", "symbol", "data_type", "source"] + list(values.columns)
        m = "?" if self.storage.is_sqlite else "%s"
        with self.storage.write_transaction():
            # plain SQL: these run for every chunk of every stream on every pass
            self.storage.db.execute_sql(
                'DELETE FROM "minute_agg" WHERE "exchange" = {m} AND "symbol" = {m} AND "data_type" = {m} AND '
                '"source" = {m} AND "minute" >= {m} AND "minute" < {m}'.format(m=m), (exchange, symbol, name, source,
                                                                                    lo, hi))
            self.storage.bulk_insert(agg, columns, rows)
            self.storage.db.execute_sql(
                'INSERT INTO "dirty_series" ("exchange", "symbol", "data_type", "lo", "hi") VALUES '
                '({m}, {m}, {m}, {m}, {m})'.format(m=m), (exchange, symbol, name, lo, hi))

    def _consume(self, ids):
        m = "?" if self.storage.is_sqlite else "%s"
        with self.storage.write_transaction():
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                self.storage.db.execute_sql('DELETE FROM "dirty_rows" WHERE "id" IN (%s)' % ", ".join([m] * len(chunk)),
                                            chunk)

    # -- reading -----------------------------------------------------------------------------------
    def read(self, key, lo, hi, columns, overlay=None):
        """Aggregates of ``key`` = (exchange, symbol, data_type, source) for minutes ``[lo, hi)``.

        A DataFrame indexed by minute with ``n``, ``first_ts``, ``last_ts`` and ``columns``; overlay ranges
        (an in-memory refresh) replace what the table holds there.
        """
        wanted = list(AGG_META) + list(columns)
        parts = []
        covered = []
        for a, b, frame in (overlay or {}).get(key, ()):
            if b > lo and a < hi:
                part = frame[(frame.index >= max(a, lo)) & (frame.index < min(b, hi))]
                parts.append(part.reindex(columns=wanted))
                covered.append((max(a, lo), min(b, hi)))
        for a, b in _complement(_merge(covered), lo, hi):
            parts.append(self._select(key, a, b, wanted, order="ASC"))
        parts = [p for p in parts if len(p)]
        if not parts:
            return pd.DataFrame(columns=wanted, index=pd.Index([], dtype=np.int64, name="minute"))
        return pd.concat(parts).sort_index()

    def last_before(self, key, before, not_before, columns, overlay=None):
        """The latest aggregate of ``key`` with ``not_before <= minute < before`` (a Series) or None."""
        wanted = list(AGG_META) + list(columns)
        candidates = []
        for a, b, frame in (overlay or {}).get(key, ()):
            part = frame[(frame.index >= not_before) & (frame.index < before)]
            if len(part):
                candidates.append(part.reindex(columns=wanted).iloc[[-1]])
        # the table, outside the overlay's ranges (they replace it there)
        spans = [(a, b) for a, b, _ in (overlay or {}).get(key, ())]
        for a, b in reversed(_complement(_merge(spans), not_before, before)):
            found = self._select(key, a, b, wanted, order="DESC", limit=1)
            if len(found):
                candidates.append(found)
                break
        if not candidates:
            return None
        best = pd.concat(candidates).sort_index()
        return best.iloc[-1]

    def first_at_or_after(self, key, lo, hi):
        """The first minute in ``[lo, hi)`` with an aggregate of ``key`` in the table (or None)."""
        found = self._select(key, lo, hi, [], limit=1)
        return int(found.index[0]) if len(found) else None

    def _select(self, key, lo, hi, wanted, order="ASC", limit=None):
        exchange, symbol, name, source = key
        storage = self.storage
        if not storage.has_table("minute_agg") or hi <= lo:
            return pd.DataFrame(columns=wanted, index=pd.Index([], dtype=np.int64, name="minute"))
        mark = "?" if storage.is_sqlite else "%s"
        sql = ('SELECT "minute"%s FROM "minute_agg" WHERE "exchange" = %s AND "symbol" = %s AND "data_type" = %s '
               'AND "source" = %s AND "minute" >= %s AND "minute" < %s ORDER BY "minute" %s%s' % (
                   "".join(', "%s"' % c for c in wanted), mark, mark, mark, mark, mark, mark, order,
                   " LIMIT %d" % limit if limit else ""))
        rows = storage.db.execute_sql(sql, (exchange, symbol, name, source, lo, hi)).fetchall()
        frame = pd.DataFrame.from_records(rows, columns=["minute"] + wanted)
        frame.index = pd.Index(frame.pop("minute").to_numpy(dtype=np.int64), name="minute")
        return frame


def _merge(ranges):
    out = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _complement(ranges, lo, hi):
    out, cursor = [], lo
    for a, b in ranges:
        if a > cursor:
            out.append((cursor, min(a, hi)))
        cursor = max(cursor, b)
    if cursor < hi:
        out.append((cursor, hi))
    return [(a, b) for a, b in out if b > a]
