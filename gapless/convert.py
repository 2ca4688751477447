"""One conversion path for replay and live messages: tardis JSON -> rows for storage.

A normalized tardis message becomes one row tuple of its family's table: ``type`` becomes ``dtype``,
``timestamp``/``localTimestamp`` become integers of µs since epoch (datetimes at the API edge, see
:func:`normalize`), bids/asks are flattened to ``bids_0_price``, ``bids_0_amount``, ``asks_0_price`` ...
Anything that is not a valid message raises :class:`MalformedMessage`; callers count and log those
and never store them.
"""
import math
from itertools import repeat

import numpy as np
import orjson

from .datatypes import FAMILY_OF_TYPE, DataTypeError, parse_data_type
from .timeutil import from_us, parse_timestamp_us

CONTROL_TYPES = ("disconnect", "error")
# prices and sizes beyond this are not market data but garbage (and would overflow SQLite integers)
_MAX_ABS = 1e18

COMMON_COLUMNS = ("exchange", "symbol", "dtype", "name", "source", "timestamp", "local_timestamp")
TRADE_COLUMNS = COMMON_COLUMNS + ("trade_id", "price", "amount", "side")
TRADE_BAR_COLUMNS = COMMON_COLUMNS + (
    "open_timestamp", "close_timestamp", "interval", "kind", "open", "high", "low", "close",
    "volume", "buy_volume", "sell_volume", "trades", "vwap")
BOOK_CHANGE_COLUMNS = COMMON_COLUMNS + ("seq", "is_snapshot", "bids", "asks")
TICKER_FIELDS = (("last_price", "lastPrice"), ("open_interest", "openInterest"),
                 ("funding_rate", "fundingRate"), ("index_price", "indexPrice"),
                 ("mark_price", "markPrice"), ("predicted_funding_rate", "predictedFundingRate"))
TICKER_COLUMNS = COMMON_COLUMNS + ("seq",) + tuple(c for c, _ in TICKER_FIELDS) + ("funding_timestamp",)
TIMESTAMP_COLUMNS = frozenset(("timestamp", "local_timestamp", "open_timestamp", "close_timestamp",
                               "funding_timestamp"))


def level_columns(depth):
    """Flattened level column names for a book of ``depth`` levels per side."""
    names = []
    for side in ("bids", "asks"):
        for i in range(depth):
            names.append("%s_%d_price" % (side, i))
            names.append("%s_%d_amount" % (side, i))
    return tuple(names)


def snapshot_columns(depth):
    """Columns of the ``book_snapshot_<depth>`` table."""
    return COMMON_COLUMNS + ("seq",) + level_columns(depth)


def table_columns(table):
    """Columns (in row-tuple order) of a storage table."""
    if table.startswith("book_snapshot_"):
        return snapshot_columns(int(table.rsplit("_", 1)[1]))
    return {"trade": TRADE_COLUMNS, "trade_bar": TRADE_BAR_COLUMNS, "book_change": BOOK_CHANGE_COLUMNS,
            "derivative_ticker": TICKER_COLUMNS}[table]


class MalformedMessage(ValueError):
    """A line or frame that is not a valid tardis message; the text says what is wrong."""


def parse_json(raw):
    """Parse one line or frame (bytes or str) into a dict, or raise :class:`MalformedMessage`."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage("not JSON (%s)" % exc) from None
    if message.__class__ is not dict:
        raise MalformedMessage("not a JSON object")
    return message


def _num(value):
    # bool is an int subclass: exclude it explicitly
    cls = value.__class__
    if cls is float:
        if -_MAX_ABS < value < _MAX_ABS:  # also false for NaN
            return value
    elif cls is int:
        if -_MAX_ABS < value < _MAX_ABS:
            return value
    elif value is None:
        return None
    raise MalformedMessage("bad number %r" % (value,))


def _req_num(value):
    if value is None:
        raise MalformedMessage("missing number")
    return _num(value)


def _ts(value):
    try:
        return parse_timestamp_us(value)
    except (ValueError, TypeError, IndexError):
        raise MalformedMessage("bad timestamp %r" % (value,)) from None


class Converter:
    """Turns messages into ``(table, row)`` pairs for one source (``replay`` or ``live``).

    It also numbers messages of one stream that share both timestamps (``seq``), so re-inserting the
    same data is idempotent while genuinely distinct messages never collide on the storage key.
    """

    def __init__(self, source):
        self.source = source
        self._types = {}
        self._seq = {}

    def data_type(self, name):
        """Cached :class:`~gapless.datatypes.DataType` for a message name."""
        data_type = self._types.get(name)
        if data_type is None:
            try:
                data_type = parse_data_type(name)
            except DataTypeError as exc:
                raise MalformedMessage(str(exc)) from None
            self._types[name] = data_type
        return data_type

    def convert(self, m):
        """Convert one data message (not ``disconnect``/``error``) to ``(table, row_tuple)``."""
        try:
            kind = m["type"]
            family = FAMILY_OF_TYPE.get(kind)
            if family is None:
                raise MalformedMessage("unknown message type %r" % (kind,))
            exchange = m["exchange"]
            symbol = m["symbol"]
            if exchange.__class__ is not str or symbol.__class__ is not str or not symbol or not exchange:
                raise MalformedMessage("bad exchange or symbol")
            ts = _ts(m["timestamp"])
            lts = _ts(m["localTimestamp"])
            if family == "book_snapshot":
                return self._snapshot(m, exchange, symbol, ts, lts)
            if family == "trade":
                return self._trade(m, exchange, symbol, ts, lts)
            if family == "trade_bar":
                return self._trade_bar(m, exchange, symbol, ts, lts)
            if family == "derivative_ticker":
                return self._ticker(m, exchange, symbol, ts, lts)
            return self._book_change(m, exchange, symbol, ts, lts)
        except KeyError as exc:
            raise MalformedMessage("missing field %s" % exc) from None
        except (TypeError, AttributeError, IndexError) as exc:
            raise MalformedMessage("bad field (%s)" % exc) from None

    def _next_seq(self, key, ts, lts):
        # messages of one stream with identical (timestamp, localTimestamp) get 0, 1, 2 ...
        state = self._seq.get(key)
        if state is None or state[0] != lts:
            self._seq[key] = (lts, {ts: 1})
            return 0
        counts = state[1]
        n = counts.get(ts, 0)
        counts[ts] = n + 1
        return n

    def _snapshot(self, m, exchange, symbol, ts, lts):
        name = m["name"]
        data_type = self.data_type(name)
        if data_type.family != "book_snapshot":
            raise MalformedMessage("name %r is not a book snapshot" % (name,))
        depth = data_type.depth
        row = [exchange, symbol, "book_snapshot", name, self.source, ts, lts,
               self._next_seq((exchange, symbol, name), ts, lts)]
        for side in (m["bids"], m["asks"]):
            if side.__class__ is not list:
                raise MalformedMessage("bids/asks is not a list")
            n = len(side)
            for i in range(depth):
                if i < n:
                    level = side[i]
                    row.append(_num(level.get("price")))
                    row.append(_num(level.get("amount")))
                else:
                    row.append(None)
                    row.append(None)
        return "book_snapshot_%d" % depth, tuple(row)

    def _trade(self, m, exchange, symbol, ts, lts):
        trade_id = m.get("id")
        if trade_id is None or trade_id == "":
            # no exchange id: fall back to what identifies the print within its stream
            trade_id = "~%d:%d" % (lts, self._next_seq((exchange, symbol, "trade"), ts, lts))
        elif trade_id.__class__ is not str:
            trade_id = str(trade_id)
        side = m.get("side") or "unknown"
        if side not in ("buy", "sell", "unknown"):
            raise MalformedMessage("bad trade side %r" % (side,))
        return "trade", (exchange, symbol, "trade", "trade", self.source, ts, lts, trade_id,
                         _req_num(m["price"]), _req_num(m["amount"]), side)

    def _trade_bar(self, m, exchange, symbol, ts, lts):
        name = m["name"]
        if self.data_type(name).family != "trade_bar":
            raise MalformedMessage("name %r is not a trade bar" % (name,))
        return "trade_bar", (
            exchange, symbol, "trade_bar", name, self.source, ts, lts,
            _ts(m["openTimestamp"]), _ts(m["closeTimestamp"]), _req_num(m["interval"]), m.get("kind") or "time",
            _req_num(m["open"]), _req_num(m["high"]), _req_num(m["low"]), _req_num(m["close"]),
            _req_num(m["volume"]), _req_num(m["buyVolume"]), _req_num(m["sellVolume"]),
            _req_num(m["trades"]), _num(m.get("vwap")))

    def _ticker(self, m, exchange, symbol, ts, lts):
        row = [exchange, symbol, "derivative_ticker", "derivative_ticker", self.source, ts, lts,
               self._next_seq((exchange, symbol, "derivative_ticker"), ts, lts)]
        for _, field in TICKER_FIELDS:
            row.append(_num(m.get(field)))
        funding = m.get("fundingTimestamp")
        row.append(_ts(funding) if funding is not None else None)
        return "derivative_ticker", tuple(row)

    def _book_change(self, m, exchange, symbol, ts, lts):
        sides = []
        for side in (m["bids"], m["asks"]):
            if side.__class__ is not list:
                raise MalformedMessage("bids/asks is not a list")
            sides.append(orjson.dumps([[_req_num(level["price"]), _req_num(level["amount"])]
                                       for level in side]).decode())
        return "book_change", (exchange, symbol, "book_change", "book_change", self.source, ts, lts,
                               self._next_seq((exchange, symbol, "book_change"), ts, lts),
                               bool(m.get("isSnapshot", False)), sides[0], sides[1])


class BatchConverter(Converter):
    """:class:`Converter` with a vectorised path for whole batches of messages.

    Per-message conversion costs several µs in Python; converting a batch column by column (list
    comprehensions, NumPy for timestamps and number checks) is ~4x cheaper, which is what lets the
    replay path ingest >150k messages/s. Any surprise in a group (a bad field, a wrong type) sends
    that group through the per-message path, which isolates the bad messages.
    """

    def convert_many(self, messages):
        """Convert data messages; returns ``(rows_by_table, malformed)``.

        ``malformed`` is a list of ``(message, reason)`` for messages that were not stored.
        """
        groups = {}
        for m in messages:
            key = (m.get("type"), m.get("name"))
            group = groups.get(key)
            if group is None:
                groups[key] = [m]
            else:
                group.append(m)
        rows_by_table = {}
        malformed = []
        for (kind, name), group in groups.items():
            table = rows = None
            try:
                if kind == "book_snapshot":
                    depth = self.data_type(name).depth
                    table, rows = "book_snapshot_%d" % depth, self._snapshots_fast(group, name, depth)
                elif kind == "trade":
                    table, rows = "trade", self._trades_fast(group)
                elif kind == "derivative_ticker":
                    table, rows = "derivative_ticker", self._tickers_fast(group)
            except (_FastPathMiss, MalformedMessage, KeyError, TypeError, ValueError, AttributeError,
                    IndexError, OverflowError):
                table = rows = None
            if rows is None:
                for m in group:
                    try:
                        table, row = self.convert(m)
                    except MalformedMessage as exc:
                        malformed.append((m, str(exc)))
                        continue
                    rows_by_table.setdefault(table, []).append(row)
            else:
                rows_by_table.setdefault(table, []).extend(rows)
        return rows_by_table, malformed

    def _common(self, group):
        exchanges = [m["exchange"] for m in group]
        symbols = [m["symbol"] for m in group]
        for column in (exchanges, symbols):
            kinds = set(map(type, column))
            if kinds != {str} or "" in set(column):
                raise _FastPathMiss()
        ts = _timestamps([m["timestamp"] for m in group])
        lts = _timestamps([m["localTimestamp"] for m in group])
        return exchanges, symbols, ts, lts

    def _seqs(self, keys, lts):
        """``seq`` for each row: 0 unless an earlier message of the stream had the same timestamps."""
        first = keys[0]
        state = self._seq.get(first[:3])
        if len(set(keys)) == len(keys) and (state is None or state[0] != lts[0]):
            # the common case: all distinct and no group carried over from the previous batch
            last = {}
            for key in keys:
                last[key[:3]] = key
            for stream, key in last.items():
                self._seq[stream] = (key[4], {key[3]: 1})
            return [0] * len(keys)
        return [self._next_seq(key[:3], key[3], key[4]) for key in keys]

    def _snapshots_fast(self, group, name, depth):
        exchanges, symbols, ts, lts = self._common(group)
        n = len(group)
        names = repeat(name, n)
        seqs = self._seqs(list(zip(exchanges, symbols, repeat(name, n), ts, lts)), lts)
        columns = []
        for side in ([m["bids"] for m in group], [m["asks"] for m in group]):
            if set(map(type, side)) != {list}:
                raise _FastPathMiss()
            for i in range(depth):
                levels = [s[i] if len(s) > i else _EMPTY for s in side]
                prices = [level.get("price") for level in levels]
                amounts = [level.get("amount") for level in levels]
                _check_numbers(prices, optional=True)
                _check_numbers(amounts, optional=True)
                columns.append(prices)
                columns.append(amounts)
        return list(zip(exchanges, symbols, repeat("book_snapshot", n), names, repeat(self.source, n),
                        ts, lts, seqs, *columns))

    def _trades_fast(self, group):
        exchanges, symbols, ts, lts = self._common(group)
        n = len(group)
        ids = [m.get("id") for m in group]
        if set(map(type, ids)) != {str} or "" in set(ids):
            raise _FastPathMiss()
        prices = [m["price"] for m in group]
        amounts = [m["amount"] for m in group]
        _check_numbers(prices, optional=False)
        _check_numbers(amounts, optional=False)
        sides = [m.get("side") for m in group]
        if not set(sides) <= _SIDES:
            raise _FastPathMiss()
        return list(zip(exchanges, symbols, repeat("trade", n), repeat("trade", n), repeat(self.source, n),
                        ts, lts, ids, prices, amounts, sides))

    def _tickers_fast(self, group):
        exchanges, symbols, ts, lts = self._common(group)
        n = len(group)
        name = "derivative_ticker"
        seqs = self._seqs(list(zip(exchanges, symbols, repeat(name, n), ts, lts)), lts)
        columns = []
        for _, field in TICKER_FIELDS:
            values = [m.get(field) for m in group]
            _check_numbers(values, optional=True)
            columns.append(values)
        if any("fundingTimestamp" in m for m in group):
            raise _FastPathMiss()
        return list(zip(exchanges, symbols, repeat(name, n), repeat(name, n), repeat(self.source, n),
                        ts, lts, seqs, *columns, repeat(None, n)))


class _FastPathMiss(Exception):
    """The vectorised path met something it does not handle; use the per-message path."""


_EMPTY = {}
_SIDES = frozenset(("buy", "sell", "unknown"))
_NUMBER_TYPES = frozenset((int, float))
_OPTIONAL_NUMBER_TYPES = frozenset((int, float, type(None)))


def _timestamps(texts):
    """Vectorised :func:`parse_timestamp_us` for a list of tardis timestamps."""
    # numpy parses ISO-8601 in C but also accepts dates without time: insist on the tardis shape
    stripped = [t[:-1] if t[-1:] == "Z" and t[10:11] == "T" else "x" for t in texts]
    return np.array(stripped, dtype="datetime64[us]").astype(np.int64).tolist()


def _check_numbers(values, optional):
    kinds = set(map(type, values))
    if not kinds <= (_OPTIONAL_NUMBER_TYPES if optional else _NUMBER_TYPES):
        raise _FastPathMiss()
    if kinds - {type(None)}:
        array = np.array([v for v in values if v is not None] if type(None) in kinds else values,
                         dtype=np.float64)
        if array.size and not (np.abs(array) < _MAX_ABS).all():  # false for NaN and inf too
            raise _FastPathMiss()


def is_server_error_line(message):
    """True for the error object tardis-machine appends to a replay when its upstream fails mid-stream."""
    return "message" in message and "type" not in message


def normalize(message, source="replay"):
    """Convert one message to the documented record format (a dict).

    ``type`` becomes ``dtype``, timestamps become aware UTC datetimes, levels are flattened.
    Raises :class:`MalformedMessage` for anything that is not a data message.
    """
    table, row = Converter(source).convert(message)
    record = {}
    for column, value in zip(table_columns(table), row):
        if column in TIMESTAMP_COLUMNS and value is not None:
            value = from_us(value)
        record[column] = value
    return record


def is_finite(value):
    """True for a finite int or float (used by validators outside the hot path)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
