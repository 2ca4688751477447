"""Per-message conversion: one normalized tardis message -> one row tuple of its family's table.

A normalized tardis message becomes one row tuple of its family's table: ``type`` becomes ``dtype``,
``timestamp``/``localTimestamp`` become integers of µs since epoch, bids/asks are flattened to
``bids_0_price``, ``bids_0_amount``, ``asks_0_price`` ... Anything that is not a valid message raises
:class:`MalformedMessage`; callers count and log those and never store them. The vectorised path for
whole batches (:mod:`gapless.convert_batch`) builds on :class:`Converter` and falls back to it.
"""
import math

import orjson

from .datatypes import FAMILY_OF_TYPE, DataTypeError, parse_data_type
from .rows import BOOK_TICKER_FIELDS, OPTION_FIELDS, TICKER_FIELDS
from .timeutil import parse_timestamp_us
from .trade_keys import IdlessCounter, trade_key

CONTROL_TYPES = ("disconnect", "error")
# prices and sizes beyond this are not market data but garbage (and would overflow SQLite integers)
MAX_ABS = 1e18


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
        if -MAX_ABS < value < MAX_ABS:  # also false for NaN
            return value
    elif cls is int:
        if -MAX_ABS < value < MAX_ABS:
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
        self._idless = IdlessCounter()
        self._idless_liquidations = IdlessCounter()

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
            if family == "liquidation":
                return self._liquidation(m, exchange, symbol, ts, lts)
            if family == "book_ticker":
                return self._book_ticker(m, exchange, symbol, ts, lts)
            if family == "option_summary":
                return self._option_summary(m, exchange, symbol, ts, lts)
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
        side = m.get("side") or "unknown"
        if side not in ("buy", "sell", "unknown"):
            raise MalformedMessage("bad trade side %r" % (side,))
        return "trade", (exchange, symbol, "trade", "trade", self.source, ts, lts) + \
            self._fill(m, exchange, symbol, ts, side, self._idless)

    def _liquidation(self, m, exchange, symbol, ts, lts):
        # a liquidation is also sent as a trade (when trades are asked): its own table, so nothing counts it twice
        side = m.get("side")
        if side not in ("buy", "sell"):
            raise MalformedMessage("bad liquidation side %r" % (side,))
        return "liquidation", (exchange, symbol, "liquidation", "liquidation", self.source, ts, lts) + \
            self._fill(m, exchange, symbol, ts, side, self._idless_liquidations)

    @staticmethod
    def _fill(m, exchange, symbol, ts, side, idless):
        """``(id, price, amount, side, seq)`` of a fill (a trade or a liquidation)."""
        price, amount = _req_num(m["price"]), _req_num(m["amount"])
        fill_id = m.get("id")
        seq = None
        if fill_id is None or fill_id == "":
            # no exchange id: a key made of what the exchange printed, the same whichever connection or
            # request received it (see gapless.trade_keys)
            n, seq = idless.number(exchange, symbol, ts, price, amount, side)
            fill_id = trade_key(price, amount, side, n)
        elif fill_id.__class__ is not str:
            fill_id = str(fill_id)
        return fill_id, price, amount, side, seq

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

    def _fields(self, m, name, exchange, symbol, ts, lts, fields):
        """The row of a message whose values are optional number fields (tickers): the common columns, ``seq``,
        one column per field (a field the message omits is NULL, never 0)."""
        seq = self._next_seq((exchange, symbol, name), ts, lts)
        return (exchange, symbol, name, name, self.source, ts, lts, seq) + tuple(_num(m.get(f)) for _, f in fields)

    def _ticker(self, m, exchange, symbol, ts, lts):
        funding = m.get("fundingTimestamp")
        return "derivative_ticker", self._fields(m, "derivative_ticker", exchange, symbol, ts, lts, TICKER_FIELDS) \
            + (_ts(funding) if funding is not None else None,)

    def _book_ticker(self, m, exchange, symbol, ts, lts):
        # one message per exchange ticker; a side tardis omits (its best level is empty) is NULL
        return "book_ticker", self._fields(m, "book_ticker", exchange, symbol, ts, lts, BOOK_TICKER_FIELDS)

    def _option_summary(self, m, exchange, symbol, ts, lts):
        return "option_summary", self._fields(m, "option_summary", exchange, symbol, ts, lts, OPTION_FIELDS) \
            + option_contract(m)

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


def option_contract(m):
    """``(option_type, strike_price, expiration_date µs, underlying_index)`` of an option_summary message."""
    option_type = m.get("optionType")
    if option_type not in ("call", "put"):
        raise MalformedMessage("bad optionType %r" % (option_type,))
    expiration = m.get("expirationDate")
    index = m.get("underlyingIndex")
    if index is not None and index.__class__ is not str:
        raise MalformedMessage("bad underlyingIndex %r" % (index,))
    return option_type, _req_num(m.get("strikePrice")), _ts(expiration) if expiration is not None else None, index


def is_server_error_line(message):
    """True for the error object tardis-machine appends to a replay when its upstream fails mid-stream."""
    return "message" in message and "type" not in message


def is_finite(value):
    """True for a finite int or float (used by validators outside the hot path)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
