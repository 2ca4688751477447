"""The vectorised conversion path: whole batches of messages -> :class:`~gapless.rows.RowBlock` s.

Per-message conversion (:class:`~gapless.convert_message.Converter`) costs several µs in Python; this
path converts a batch column by column and falls back to the per-message path for any group it does
not handle.
"""
from itertools import chain, repeat

import numpy as np

from .convert_message import MAX_ABS, Converter, MalformedMessage, option_contract
from .typed_lines import RECORDS, BookSnapshot
from .rows import BOOK_TICKER_FIELDS, OPTION_FIELDS, TICKER_FIELDS, Const, RowBlock


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
        record = messages[0].__class__
        typed = record in RECORDS and set(map(type, messages)) == {record}
        if typed:  # decoded by gapless.typed_lines: types checked, fields read as attributes
            kinds = [record.type] * len(messages)
            names = [m.name for m in messages] if record is BookSnapshot else [None] * len(messages)
        else:
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
                    table, rows = "book_snapshot_%d" % depth, (
                        self._snapshots_typed if typed else self._snapshots_fast)(group, name, depth)
                elif kind == "trade":
                    table, rows = "trade", (self._trades_typed if typed else self._trades_fast)(group)
                elif kind == "derivative_ticker":
                    table, rows = "derivative_ticker", self._tickers_fast(group)
                elif kind == "book_ticker":
                    table, rows = "book_ticker", self._fields_fast(group, "book_ticker", BOOK_TICKER_FIELDS)
                elif kind == "option_summary":
                    table, rows = "option_summary", self._options_fast(group)
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

    def _common_typed(self, group):
        """:meth:`_common` of records (gapless.typed_lines): their strings are strings already."""
        exchanges = [m.exchange for m in group]
        symbols = [m.symbol for m in group]
        distinct = (set(exchanges), set(symbols))
        if "" in distinct[0] or "" in distinct[1]:
            raise _FastPathMiss()
        self._single_stream = len(distinct[0]) == 1 and len(distinct[1]) == 1
        return exchanges, symbols, _timestamps([m.timestamp for m in group]), \
            _timestamps([m.localTimestamp for m in group])

    def _snapshots_typed(self, group, name, depth):
        """:meth:`_snapshots_fast` of records: levels are typed, a side shorter than ``depth`` takes the general
        path."""
        exchanges, symbols, ts, lts = self._common_typed(group)
        seqs = self._seqs(exchanges, symbols, name, ts, lts)
        columns = []
        for side in ([m.bids for m in group], [m.asks for m in group]):
            for i in range(depth):
                levels = [s[i] for s in side]  # IndexError for a shorter side: the per-message path pads it
                columns.append([level.price for level in levels])
                columns.append([level.amount for level in levels])
        numbers = _finite(columns)
        return RowBlock("book_snapshot_%d" % depth, [
            _column(exchanges), _column(symbols), Const("book_snapshot"), Const(name), Const(self.source),
            ts.array, lts.array, seqs] + list(numbers), len(group))

    def _trades_typed(self, group):
        """:meth:`_trades_fast` of records."""
        ids = [m.id for m in group]
        sides = [m.side for m in group]
        if set(map(type, ids)) != {str} or "" in set(ids) or not set(sides) <= _SIDES:
            raise _FastPathMiss()  # trades without ids, or without a side: the per-message path
        exchanges, symbols, ts, lts = self._common_typed(group)
        prices, amounts = _finite([[m.price for m in group], [m.amount for m in group]])
        return RowBlock("trade", [_column(exchanges), _column(symbols), Const("trade"), Const("trade"),
                                  Const(self.source), ts.array, lts.array, ids, prices, amounts, sides,
                                  Const(None)], len(group))

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
        checked = _check_numbers(columns, optional=True)
        return RowBlock("book_snapshot_%d" % depth, [
            _column(exchanges), _column(symbols), Const("book_snapshot"), Const(name), Const(self.source),
            ts.array, lts.array, seqs] + (list(checked) if checked is not None else columns), n)

    def _trades_fast(self, group):
        exchanges, symbols, ts, lts = self._common(group)
        n = len(group)
        ids = [m.get("id") for m in group]
        if set(map(type, ids)) != {str} or "" in set(ids):
            raise _FastPathMiss()
        prices = [m["price"] for m in group]
        amounts = [m["amount"] for m in group]
        prices, amounts = _check_numbers([prices, amounts], optional=False)
        sides = [m.get("side") for m in group]
        if not set(sides) <= _SIDES:
            raise _FastPathMiss()
        # trades without exchange ids take the per-message path (their keys are numbered in order); ``seq``
        # is only kept for those
        return RowBlock("trade", [_column(exchanges), _column(symbols), Const("trade"), Const("trade"),
                                  Const(self.source), ts.array, lts.array, ids, prices, amounts, sides,
                                  Const(None)], n)

    def _tickers_fast(self, group):
        if any("fundingTimestamp" in m for m in group):
            raise _FastPathMiss()
        block = self._fields_fast(group, "derivative_ticker", TICKER_FIELDS)
        block.columns.append(Const(None))  # funding_timestamp
        return block

    def _options_fast(self, group):
        block = self._fields_fast(group, "option_summary", OPTION_FIELDS)
        # the contract's fields are the same in every message of an instrument: each distinct combination is
        # checked and converted once (the strike's type is part of the key: True == 1, but True is no strike)
        known = {}
        contracts = []
        for key in zip(*(map(dict.get, group, repeat(field)) for field in _CONTRACT_FIELDS)):
            key += (key[1].__class__,)
            contract = known.get(key)
            if contract is None:  # MalformedMessage: the per-message path isolates the message
                contract = known[key] = option_contract(dict(zip(_CONTRACT_FIELDS, key)))
            contracts.append(contract)
        block.columns += [list(column) for column in zip(*contracts)]
        return block

    def _fields_fast(self, group, name, fields):
        """Messages of a type whose row is its optional number fields (tickers): one column per field."""
        exchanges, symbols, ts, lts = self._common(group)
        seqs = self._seqs(exchanges, symbols, name, ts, lts)
        columns = [list(map(dict.get, group, repeat(field))) for _, field in fields]
        _check_numbers(columns, optional=True)
        return RowBlock(name, [_column(exchanges), _column(symbols), Const(name), Const(name),
                               Const(self.source), ts.array, lts.array, seqs] + columns, len(group))


class _FastPathMiss(Exception):
    """The vectorised path met something it does not handle; use the per-message path."""


_EMPTY = {}
_CONTRACT_FIELDS = ("optionType", "strikePrice", "expirationDate", "underlyingIndex")
_SIDES = frozenset(("buy", "sell", "unknown"))
_NUMBER_TYPES = frozenset((int, float))
_OPTIONAL_NUMBER_TYPES = frozenset((int, float, type(None)))


class _Stamps(list):
    """µs timestamps as a list (for row tuples) that also carries the NumPy array it came from."""

    __slots__ = ("array",)


def _timestamps(texts):
    """Vectorised :func:`parse_timestamp_us` for a list of tardis timestamps (strings)."""
    array = _fixed_width_us(texts)
    if array is not None:
        stamps = _Stamps(array.tolist())
        stamps.array = array
        return stamps
    joined = "\n".join(texts)  # TypeError for anything that is not a string
    n = len(texts)
    # numpy parses ISO-8601 in C, but also dates without a time: insist on one 'T' and one final 'Z' each
    if joined.count("T") != n or joined.count("Z") != n or joined.count("Z\n") != n - 1 or joined[-1:] != "Z":
        raise _FastPathMiss()
    array = np.array(joined.replace("Z", "").split("\n"), dtype="datetime64[us]").astype(np.int64)
    stamps = _Stamps(array.tolist())
    stamps.array = array
    return stamps


_DIGITS = (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)  # YYYY-MM-DDTHH:MM:SS
_SEPARATORS = ((4, b"-"), (7, b"-"), (10, b"T"), (13, b":"), (16, b":"))
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _fixed_width_us(texts):
    """:func:`parse_timestamp_us` of timestamps that all have one width (``YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z``,
    ASCII), as an int64 array computed on their bytes; None for anything else (the caller parses it the general
    way, which also reports what is wrong). numpy's own ISO parser costs about 10 % of a download worker."""
    if not texts or texts[0].__class__ is not str:
        return None
    width, n = len(texts[0]), len(texts)
    try:
        data = "".join(texts).encode("ascii")
    except (UnicodeEncodeError, TypeError):
        return None
    if len(data) != width * n or not (width == 20 or 22 <= width <= 30):
        return None
    chars = np.frombuffer(data, dtype=np.uint8).reshape(n, width)
    for at, mark in _SEPARATORS + ((width - 1, b"Z"),) + (((19, b"."),) if width > 20 else ()):
        if (chars[:, at] != mark[0]).any():
            return None
    digits = chars[:, list(_DIGITS) + list(range(20, min(width - 1, 26)))].astype(np.int64) - ord("0")
    if width > 26 and not ((chars[:, 26:width - 1] >= ord("0")) & (chars[:, 26:width - 1] <= ord("9"))).all():
        return None  # nanosecond digits: checked, then cut to microseconds
    if ((digits < 0) | (digits > 9)).any():
        return None
    year = digits[:, 0] * 1000 + digits[:, 1] * 100 + digits[:, 2] * 10 + digits[:, 3]
    month, day = digits[:, 4] * 10 + digits[:, 5], digits[:, 6] * 10 + digits[:, 7]
    hour, minute = digits[:, 8] * 10 + digits[:, 9], digits[:, 10] * 10 + digits[:, 11]
    second = digits[:, 12] * 10 + digits[:, 13]
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    if ((year < 1) | (month < 1) | (month > 12) | (hour > 23) | (minute > 59) | (second > 59)).any():
        return None
    month_days = _MONTH_DAYS[np.clip(month, 1, 12)] + ((month == 2) & leap)
    if ((day < 1) | (day > month_days)).any():
        return None
    # days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    us = (((days * 24 + hour) * 60 + minute) * 60 + second) * 1_000_000
    fraction = digits[:, 14:]
    for place in range(fraction.shape[1]):  # the first six fraction digits: microseconds (padded, or cut)
        us += fraction[:, place] * 10 ** (5 - place)
    return us


def _column(values):
    """A column stored once when all its values are the same object (exchange, symbol of a batch)."""
    first = values[0]
    if values.count(first) == len(values):
        return Const(first)
    return values


def _finite(columns):
    """Float columns (already typed) as one array, a row per column; a value beyond the sanity bound (or inf)
    sends the group down the per-message path, which reports it."""
    return _bounded(np.array(columns, dtype=np.float64))


def _bounded(array):
    """``array`` when every value is below the sanity bound; NaN, inf or a value beyond it raise _FastPathMiss."""
    if array.size and not (np.abs(array) < MAX_ABS).all():  # false for NaN and inf too
        raise _FastPathMiss()
    return array


def _check_numbers(columns, optional):
    """Every value a finite int/float (or None when ``optional``) below the sanity bound.

    Returns the columns as one float array (a row per column) when no value is None, else None. The array is
    what a block should carry: the storage columns are REAL (an int is stored as the same float), and an array
    crosses to the writer process as one buffer instead of a pickled number per row.
    """
    kinds = set(map(type, chain.from_iterable(columns)))
    if kinds <= _NUMBER_TYPES:
        array = checked = np.array(columns, dtype=np.float64)  # one C call for all the columns
    elif optional and kinds <= _OPTIONAL_NUMBER_TYPES:
        array = np.array([v for v in chain.from_iterable(columns) if v is not None], dtype=np.float64)
        checked = None
    else:
        raise _FastPathMiss()
    _bounded(array)
    return checked
