"""One conversion path for replay and live messages: tardis JSON -> rows for storage.

A normalized tardis message becomes one row tuple of its family's table: ``type`` becomes ``dtype``,
``timestamp``/``localTimestamp`` become integers of µs since epoch (datetimes at the API edge, see
:func:`normalize`), bids/asks are flattened to ``bids_0_price``, ``bids_0_amount``, ``asks_0_price`` ...
Anything that is not a valid message raises :class:`MalformedMessage`; callers count and log those
and never store them.
"""
import math
from itertools import chain, repeat

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


class Const:
    """A column whose value is the same in every row of a :class:`RowBlock` (stored once)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return Const, (self.value,)


class RowBlock:
    """Rows of one table kept as columns (in :func:`table_columns` order).

    Columns are lists, NumPy arrays or :class:`Const`. Keeping columns avoids building a tuple per row
    in the parsing process and makes batches cheap to send between processes; iterating a block
    yields the row tuples the database driver needs.
    """

    __slots__ = ("table", "columns", "n")

    def __init__(self, table, columns, n):
        self.table = table
        self.columns = list(columns)
        self.n = n

    @classmethod
    def from_rows(cls, table, rows):
        """A block from row tuples."""
        rows = list(rows)
        if not rows:
            return cls(table, [[] for _ in table_columns(table)], 0)
        return cls(table, [list(column) for column in zip(*rows)], len(rows))

    def __len__(self):
        return self.n

    def __bool__(self):
        return self.n > 0

    def __iter__(self):
        return zip(*(self.column(i) for i in range(len(self.columns))))

    def __reduce__(self):
        return RowBlock, (self.table, self.columns, self.n)

    def column(self, index):
        """Column ``index`` as a sequence of Python values."""
        column = self.columns[index]
        if column.__class__ is Const:
            return repeat(column.value, self.n)
        if isinstance(column, np.ndarray):
            return column.tolist()
        return column

    def distinct(self, index):
        """The set of values of column ``index``."""
        column = self.columns[index]
        if column.__class__ is Const:
            return {column.value} if self.n else set()
        return set(column.tolist() if isinstance(column, np.ndarray) else column)

    def array(self, index):
        """An integer column as a NumPy int64 array."""
        column = self.columns[index]
        if isinstance(column, np.ndarray):
            return column
        if column.__class__ is Const:
            return np.full(self.n, column.value, dtype=np.int64)
        return np.asarray(column, dtype=np.int64)

    def select(self, keep):
        """A block of the rows whose index is in ``keep`` (a boolean NumPy mask)."""
        indices = np.flatnonzero(keep)
        columns = []
        for column in self.columns:
            if column.__class__ is Const or isinstance(column, np.ndarray):
                columns.append(column if column.__class__ is Const else column[indices])
            else:
                columns.append([column[i] for i in indices.tolist()])
        return RowBlock(self.table, columns, len(indices))

    @classmethod
    def concat(cls, table, blocks):
        """One block with the rows of several."""
        blocks = [b for b in blocks if b.n]
        if len(blocks) == 1:
            return blocks[0]
        if not blocks:
            return cls.from_rows(table, [])
        columns = []
        for i in range(len(blocks[0].columns)):
            parts = [b.columns[i] for b in blocks]
            if all(p.__class__ is Const for p in parts) and len({repr(p.value) for p in parts}) == 1:
                columns.append(parts[0])
            else:
                merged = []
                for b in blocks:
                    merged.extend(b.column(i))
                columns.append(merged)
        return cls(table, columns, sum(b.n for b in blocks))


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
        """Convert data messages; returns ``({table: RowBlock}, malformed)``.

        ``malformed`` is a list of ``(message, reason)`` for messages that were not stored.
        """
        if not messages:
            return {}, []
        kinds = [m.get("type") for m in messages]
        names = [m.get("name") for m in messages]
        if len(set(kinds)) == 1 and len(set(names)) == 1:
            groups = {(kinds[0], names[0]): messages}  # the common case: one stream type per batch
        else:
            groups = {}
            for key, m in zip(zip(kinds, names), messages):
                group = groups.get(key)
                if group is None:
                    groups[key] = [m]
                else:
                    group.append(m)
        blocks = {}
        slow = {}
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
                    slow.setdefault(table, []).append(row)
            else:
                blocks.setdefault(table, []).append(rows)
        for table, rows in slow.items():
            blocks.setdefault(table, []).append(RowBlock.from_rows(table, rows))
        return {table: RowBlock.concat(table, parts) for table, parts in blocks.items()}, malformed

    def _common(self, group):
        exchanges = [m["exchange"] for m in group]
        symbols = [m["symbol"] for m in group]
        streams = set()
        for column in (exchanges, symbols):
            values = set(column)
            for value in values:
                if value.__class__ is not str or not value:
                    raise _FastPathMiss()
            streams.add(len(values))
        self._single_stream = streams == {1}
        ts = _timestamps([m["timestamp"] for m in group])
        lts = _timestamps([m["localTimestamp"] for m in group])
        return exchanges, symbols, ts, lts

    def _seqs(self, exchanges, symbols, name, ts, lts):
        """``seq`` of each row: 0 unless an earlier message of the stream had the same timestamps.

        The common case (no repeated (stream, timestamp, localTimestamp), nothing carried over from
        the previous batch) is checked with NumPy; anything else takes the exact per-row path.
        """
        n = len(ts)
        streams = {(exchanges[0], symbols[0])} if self._single_stream else set(zip(exchanges, symbols))
        ts_a, lts_a = ts.array, lts.array
        first_arrival = int(lts_a.min())
        carried = any(self._seq.get((e, s, name), (-1,))[0] >= first_arrival for e, s in streams)
        key = lts_a * 1_000_003 + ts_a  # a hash: equal keys are checked exactly below
        if len(streams) > 1:
            codes = {stream: i for i, stream in enumerate(streams)}
            key = key * 1_009 + np.fromiter((codes[x] for x in zip(exchanges, symbols)), dtype=np.int64, count=n)
        if carried:
            return [self._next_seq((e, s, name), t, a) for e, s, t, a in zip(exchanges, symbols, ts, lts)]
        order = np.argsort(key, kind="stable")
        sorted_keys = key[order]
        repeated = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        if repeated.size:
            # a few messages share both timestamps: number them exactly, in arrival order
            suspects = np.unique(np.concatenate([order[repeated], order[repeated + 1]])).tolist()
            seqs = np.zeros(n, dtype=np.int64)
            counts = {}
            for i in suspects:
                exact = (exchanges[i], symbols[i], ts[i], lts[i])
                seqs[i] = counts.get(exact, 0)
                counts[exact] = seqs[i] + 1
            column = seqs
        else:
            column = Const(0)
        # remember, per stream, how many messages it had at its last arrival time (the packet may go
        # on in the next batch)
        last, done = {}, set()
        for i in range(n - 1, -1, -1):
            stream = (exchanges[i], symbols[i])
            if stream in done:
                continue
            entry = last.get(stream)
            if entry is None:
                last[stream] = (lts[i], {ts[i]: 1})
            elif entry[0] == lts[i]:
                entry[1][ts[i]] = entry[1].get(ts[i], 0) + 1
            else:
                done.add(stream)
                if len(done) == len(streams):
                    break
        for stream, entry in last.items():
            self._seq[stream + (name,)] = entry
        return column

    def _snapshots_fast(self, group, name, depth):
        exchanges, symbols, ts, lts = self._common(group)
        n = len(group)
        seqs = self._seqs(exchanges, symbols, name, ts, lts)
        columns = []
        for side in ([m["bids"] for m in group], [m["asks"] for m in group]):
            if set(map(type, side)) != {list}:
                raise _FastPathMiss()
            for i in range(depth):
                levels = [s[i] if len(s) > i else _EMPTY for s in side]
                columns.append([level.get("price") for level in levels])
                columns.append([level.get("amount") for level in levels])
        _check_numbers(columns, optional=True)
        return RowBlock("book_snapshot_%d" % depth, [
            _column(exchanges), _column(symbols), Const("book_snapshot"), Const(name), Const(self.source),
            ts.array, lts.array, seqs] + columns, n)

    def _trades_fast(self, group):
        exchanges, symbols, ts, lts = self._common(group)
        n = len(group)
        ids = [m.get("id") for m in group]
        if set(map(type, ids)) != {str} or "" in set(ids):
            raise _FastPathMiss()
        prices = [m["price"] for m in group]
        amounts = [m["amount"] for m in group]
        _check_numbers([prices, amounts], optional=False)
        sides = [m.get("side") for m in group]
        if not set(sides) <= _SIDES:
            raise _FastPathMiss()
        return RowBlock("trade", [_column(exchanges), _column(symbols), Const("trade"), Const("trade"),
                                  Const(self.source), ts.array, lts.array, ids, prices, amounts, sides], n)

    def _tickers_fast(self, group):
        exchanges, symbols, ts, lts = self._common(group)
        n = len(group)
        name = "derivative_ticker"
        seqs = self._seqs(exchanges, symbols, name, ts, lts)
        columns = [[m.get(field) for m in group] for _, field in TICKER_FIELDS]
        _check_numbers(columns, optional=True)
        if any("fundingTimestamp" in m for m in group):
            raise _FastPathMiss()
        return RowBlock("derivative_ticker", [_column(exchanges), _column(symbols), Const(name), Const(name),
                                              Const(self.source), ts.array, lts.array, seqs] + columns
                        + [Const(None)], n)


class _FastPathMiss(Exception):
    """The vectorised path met something it does not handle; use the per-message path."""


_EMPTY = {}
_SIDES = frozenset(("buy", "sell", "unknown"))
_NUMBER_TYPES = frozenset((int, float))
_OPTIONAL_NUMBER_TYPES = frozenset((int, float, type(None)))


class _Stamps(list):
    """µs timestamps as a list (for row tuples) that also carries the NumPy array it came from."""

    __slots__ = ("array",)


def _timestamps(texts):
    """Vectorised :func:`parse_timestamp_us` for a list of tardis timestamps (strings)."""
    joined = "\n".join(texts)  # TypeError for anything that is not a string
    n = len(texts)
    # numpy parses ISO-8601 in C, but also dates without a time: insist on one 'T' and one final 'Z' each
    if joined.count("T") != n or joined.count("Z") != n or joined.count("Z\n") != n - 1 or joined[-1:] != "Z":
        raise _FastPathMiss()
    array = np.array(joined.replace("Z", "").split("\n"), dtype="datetime64[us]").astype(np.int64)
    stamps = _Stamps(array.tolist())
    stamps.array = array
    return stamps


def _column(values):
    """A column stored once when all its values are the same object (exchange, symbol of a batch)."""
    first = values[0]
    if values.count(first) == len(values):
        return Const(first)
    return values


def _check_numbers(columns, optional):
    """Every value a finite int/float (or None when ``optional``) below the sanity bound."""
    kinds = set(map(type, chain.from_iterable(columns)))
    if kinds <= _NUMBER_TYPES:
        array = np.array(columns, dtype=np.float64)  # one C call for all the columns
    elif optional and kinds <= _OPTIONAL_NUMBER_TYPES:
        array = np.array([v for v in chain.from_iterable(columns) if v is not None], dtype=np.float64)
    else:
        raise _FastPathMiss()
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
