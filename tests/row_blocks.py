"""Randomized row blocks of the storage tables, for the bulk-insert tests."""
import math

import numpy as np

from gapless.rows import Const, RowBlock, table_columns

TABLES = ("book_snapshot_1", "book_snapshot_25", "trade", "book_ticker", "option_summary", "derivative_ticker")
TEXT = {"exchange", "symbol", "dtype", "name", "source", "trade_id", "side", "option_type", "underlying_index"}
INTEGER = {"timestamp", "local_timestamp", "seq", "funding_timestamp", "expiration_date"}
KEY = ("exchange", "symbol", "name", "source", "timestamp", "local_timestamp")


def _value(rng, column, row, nullable):
    if column in ("exchange", "source"):
        return rng.choice(["deribit", "replay"]) if column == "exchange" else "replay"
    if column == "symbol":
        return rng.choice(["BTC-PERPETUAL", "BTC-29JAN27-85000-C"])
    if column in TEXT:
        return rng.choice(["buy", "sell", "call", None, "t%d" % row, "é\u00a0x"]) if column != "dtype" else "x"
    if column in ("timestamp", "local_timestamp"):
        return 1_796_428_800_000_000 + rng.randrange(0, 40) * rng.choice([1, 1000, 60_000_000])
    if column == "seq":  # INTEGER in PostgreSQL
        return rng.choice([0, 1, 7, 2 ** 31 - 1, -5, None])
    if column in INTEGER:
        return rng.choice([0, 1, 7, 2 ** 53 + 1, None])
    missing = [float("nan"), None] if nullable else []
    return rng.choice([0.0, 1930.0, 84011.5, -0.1, 1e-300, 2.5e300, rng.random()] + missing)


def random_block(rng, table, n, fields, packable=False):
    """A RowBlock of ``n`` random rows of ``table``, each column drawn as a Const, an array or a list (NULLs,
    NaN included, only where the column may be NULL). ``packable``: text columns the same in every row, numbers
    in arrays or the same in every row (what PostgreSQL's binary COPY packs)."""
    built = []
    for column in table_columns(table):
        shape = rng.choice(["const", "array"] if packable and column not in TEXT else
                           ["const"] if packable else ["const", "array", "list"])
        nullable = fields[column].null
        values = [_value(rng, column, row, nullable) for row in range(n)]
        if not nullable:
            values = [("0" if column in TEXT else 0) if v is None else v for v in values]
        if shape == "const" and n:
            built.append(Const(values[0]))
        elif shape == "array" and column in INTEGER and None not in values:
            built.append(np.asarray(values, dtype=np.int64))
        elif shape == "array" and column not in TEXT and column not in INTEGER:
            built.append(np.asarray([math.nan if v is None else v for v in values], dtype=np.float64))
        else:
            built.append(values)
    return RowBlock(table, built, n)
