"""Storage row layouts and the column container that carries converted rows.

Every data-type family has one table; :func:`table_columns` gives its columns in row-tuple order (the
order the converters produce and the storage writes). :class:`RowBlock` keeps a batch of rows of one
table as columns, which is cheap to build, to filter and to send between processes.
"""
from itertools import repeat

import numpy as np

COMMON_COLUMNS = ("exchange", "symbol", "dtype", "name", "source", "timestamp", "local_timestamp")
# seq: the arrival order among the trades of one timestamp, kept for trades without an exchange id
TRADE_COLUMNS = COMMON_COLUMNS + ("trade_id", "price", "amount", "side", "seq")
# a liquidation is a fill with Deribit's liquidation flag: a trade's fields, its trade id included
LIQUIDATION_COLUMNS = TRADE_COLUMNS
TRADE_BAR_COLUMNS = COMMON_COLUMNS + (
    "open_timestamp", "close_timestamp", "interval", "kind", "open", "high", "low", "close",
    "volume", "buy_volume", "sell_volume", "trades", "vwap")
BOOK_CHANGE_COLUMNS = COMMON_COLUMNS + ("seq", "is_snapshot", "bids", "asks")
TICKER_FIELDS = (("last_price", "lastPrice"), ("open_interest", "openInterest"),
                 ("funding_rate", "fundingRate"), ("index_price", "indexPrice"),
                 ("mark_price", "markPrice"), ("predicted_funding_rate", "predictedFundingRate"))
TICKER_COLUMNS = COMMON_COLUMNS + ("seq",) + tuple(c for c, _ in TICKER_FIELDS) + ("funding_timestamp",)
# book_ticker: the best bid and ask of one exchange ticker message (a side tardis omits, an empty best level, is NULL)
BOOK_TICKER_FIELDS = (("bid_price", "bidPrice"), ("bid_amount", "bidAmount"), ("ask_price", "askPrice"),
                      ("ask_amount", "askAmount"))
BOOK_TICKER_COLUMNS = COMMON_COLUMNS + ("seq",) + tuple(c for c, _ in BOOK_TICKER_FIELDS)
# option_summary: one option ticker message (IVs in percent, as Deribit sends them; an omitted field is NULL), then
# the contract's own fields (the same in every message of the instrument)
OPTION_FIELDS = (("best_bid_price", "bestBidPrice"), ("best_bid_amount", "bestBidAmount"), ("best_bid_iv", "bestBidIV"),
                 ("best_ask_price", "bestAskPrice"), ("best_ask_amount", "bestAskAmount"), ("best_ask_iv", "bestAskIV"),
                 ("last_price", "lastPrice"), ("open_interest", "openInterest"), ("mark_price", "markPrice"),
                 ("mark_iv", "markIV"), ("delta", "delta"), ("gamma", "gamma"), ("vega", "vega"), ("theta", "theta"),
                 ("rho", "rho"), ("underlying_price", "underlyingPrice"))
OPTION_CONTRACT_COLUMNS = ("option_type", "strike_price", "expiration_date", "underlying_index")
OPTION_SUMMARY_COLUMNS = COMMON_COLUMNS + ("seq",) + tuple(c for c, _ in OPTION_FIELDS) + OPTION_CONTRACT_COLUMNS
TIMESTAMP_COLUMNS = frozenset(("timestamp", "local_timestamp", "open_timestamp", "close_timestamp",
                               "funding_timestamp", "expiration_date"))


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
            "derivative_ticker": TICKER_COLUMNS, "liquidation": LIQUIDATION_COLUMNS,
            "book_ticker": BOOK_TICKER_COLUMNS, "option_summary": OPTION_SUMMARY_COLUMNS}[table]


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

    def first_rows(self, streams):
        """Index of the first row of each of ``streams`` (``(symbol, name)``)."""
        wanted = set(streams)
        found = {}
        for i, key in enumerate(zip(self.column(1), self.column(3))):
            if key in wanted and key not in found:
                found[key] = i
                if len(found) == len(wanted):
                    break
        return found

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
            elif all(isinstance(p, np.ndarray) for p in parts) and len({p.dtype for p in parts}) == 1:
                columns.append(np.concatenate(parts))  # numbers stay an array: cheap to send and to iterate
            else:
                merged = []
                for b in blocks:
                    merged.extend(b.column(i))
                columns.append(merged)
        return cls(table, columns, sum(b.n for b in blocks))
