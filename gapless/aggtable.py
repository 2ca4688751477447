"""Minute aggregates of one stream and source as column arrays (:class:`Aggregates`).

What :mod:`gapless.aggregate` computes, what the minute store writes and reads back, and what the series reads.
Plain numpy columns, not a DataFrame: a publishing pass handles a few minutes of hundreds of streams, and building
small DataFrames cost more than the queries and the arithmetic together.
"""
from dataclasses import dataclass

import numpy as np

META = ("n", "first_ts", "last_ts")


@dataclass
class Aggregates:
    """Per-minute aggregates: the minutes (µs, ascending), each minute's row count and first and last row
    timestamps, the value columns as floats (NaN: no value), and ``levels`` (the deeper book levels as JSON texts,
    None where there are none) when the data type has them."""

    minutes: np.ndarray
    n: np.ndarray
    first_ts: np.ndarray
    last_ts: np.ndarray
    values: np.ndarray  # minutes x columns
    columns: list
    levels: list = None

    def __len__(self):
        return len(self.minutes)

    def column(self, name):
        """One value column (floats)."""
        return self.values[:, self.columns.index(name)]

    def take(self, which):
        """The minutes selected by a boolean mask or positions."""
        levels = None if self.levels is None else np.asarray(self.levels, dtype=object)[which].tolist()
        return Aggregates(self.minutes[which], self.n[which], self.first_ts[which], self.last_ts[which],
                          self.values[which], self.columns, levels)

    def select(self, columns):
        """The same minutes with ``columns`` (in that order; NaN where these aggregates lack one; ``levels`` kept
        when asked)."""
        numeric = [c for c in columns if c != "levels"]
        if numeric == self.columns:
            values = self.values
        else:
            values = np.full((len(self), len(numeric)), np.nan)
            for i, c in enumerate(numeric):
                if c in self.columns:
                    values[:, i] = self.values[:, self.columns.index(c)]
        levels = None
        if "levels" in columns:
            levels = self.levels if self.levels is not None else [None] * len(self)
        return Aggregates(self.minutes, self.n, self.first_ts, self.last_ts, values, numeric, levels)

    def renamed(self, names):
        """The same aggregates with columns renamed by ``names`` ({old: new})."""
        return Aggregates(self.minutes, self.n, self.first_ts, self.last_ts, self.values,
                          [names.get(c, c) for c in self.columns], self.levels)

    @classmethod
    def empty(cls, columns=()):
        """No minute."""
        return cls.from_rows([], columns, meta=False)

    @classmethod
    def from_groups(cls, label_array, first, last, ts, columns, levels=None):
        """From rows grouped by minute: ``first``/``last`` positions of each minute's rows, ``ts`` their timestamps,
        ``columns`` {name: one value per minute}."""
        n = len(first)
        values = np.empty((n, len(columns)))
        for i, column in enumerate(columns.values()):
            values[:, i] = column
        return cls(np.asarray(label_array[first], dtype=np.int64), (last - first + 1).astype(np.int64),
                   np.asarray(ts[first], dtype=np.int64), np.asarray(ts[last], dtype=np.int64), values,
                   list(columns), levels)

    @classmethod
    def from_rows(cls, rows, columns, meta=True):
        """From query rows ``(minute, n, first_ts, last_ts, *columns)`` (``meta``) or ``(minute, last_ts,
        *columns)``."""
        numeric = [c for c in columns if c != "levels"]
        skip = 4 if meta else 2
        positions = [skip + i for i, c in enumerate(columns) if c != "levels"]
        count = len(rows)
        minutes = np.fromiter((r[0] for r in rows), dtype=np.int64, count=count)
        last_ts = np.fromiter((r[skip - 1] for r in rows), dtype=np.int64, count=count)
        if meta:
            n = np.fromiter((r[1] for r in rows), dtype=np.int64, count=count)
            first_ts = np.fromiter((r[2] for r in rows), dtype=np.int64, count=count)
        else:  # not read: the series needs the last row's timestamp only
            n = first_ts = np.zeros(count, dtype=np.int64)
        # a None (no value that minute) becomes NaN
        values = np.array([[r[p] for p in positions] for r in rows], dtype=float).reshape(count, len(numeric))
        levels = [r[skip + columns.index("levels")] for r in rows] if "levels" in columns else None
        return cls(minutes, n, first_ts, last_ts, values, numeric, levels)

    @classmethod
    def concat(cls, parts, columns):
        """Several parts (each with ``columns``) in minute order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(columns)
        if len(parts) == 1:
            return parts[0]
        joined = cls(*(np.concatenate([getattr(p, a) for p in parts]) for a in ("minutes", "n", "first_ts",
                                                                                 "last_ts")),
                     np.vstack([p.values for p in parts]), parts[0].columns,
                     None if parts[0].levels is None else [v for p in parts for v in p.levels])
        return joined.take(np.argsort(joined.minutes, kind="stable"))

    def to_rows(self, prefix):
        """Row tuples ``prefix + (minute, n, first_ts, last_ts, *columns[, levels])`` (NaN: None) and their column
        names after the prefix, for an insert."""
        lists = [self.minutes.tolist(), self.n.tolist(), self.first_ts.tolist(), self.last_ts.tolist()]
        for column in self.values.T.tolist():
            lists.append([None if v != v else v for v in column])
        names = ["minute"] + list(META) + list(self.columns)
        if self.levels is not None:
            lists.append(self.levels)
            names.append("levels")
        return [tuple(prefix) + row for row in zip(*lists)], names
