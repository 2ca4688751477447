"""Stitching history and live data: the one place that decides where each minute comes from.

For each stream, a minute takes replay where replay knows it (covers it whole and knows its state),
else live where live knows it, else the minute is missing. :func:`stitch_stream` is the only function
that makes this decision; the series (library and command line, :func:`series`), the published series,
``status`` and ``gaps``, and healing all read it, so they can never disagree about a minute. Imports flow one
way: this module reads per-source minutes from :mod:`gapless.series`, never the other way round.

Where both sources know a minute their values are compared (tardis-machine computes both the same way);
disagreements are counted and reported, not hidden.
"""
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .contract import clip_to_life, option_contract
from .datatypes import parse_data_type
from .series import SOURCES, Reader, minute_index, source_values, stream_series
from .timeutil import MINUTE_US, ceil_minute, floor_minute

log = logging.getLogger(__name__)

COMPARED = {
    "book_snapshot": ("bid_price", "bid_amount", "ask_price", "ask_amount"),
    "trade": ("open", "high", "low", "close", "volume", "trades"),
    "trade_bar": ("open", "high", "low", "close", "volume", "trades"),
    "derivative_ticker": ("last_price", "open_interest", "funding_rate", "index_price", "mark_price"),
    "liquidation": ("liquidations", "volume", "buy_volume", "sell_volume"),
    "book_ticker": ("bid_price", "bid_amount", "ask_price", "ask_amount"),
    "option_summary": ("best_bid_price", "best_ask_price", "mark_price", "mark_iv", "underlying_price"),
}
RELATIVE_TOLERANCE = 1e-9
PRIORITY = ("replay", "live")


@dataclass
class Comparison:
    """Replay vs live over the minutes both know: how many disagree and by how much."""

    compared: int = 0
    disagreements: int = 0
    max_difference: float = 0.0
    worst_minute: object = None
    worst_column: str = None


@dataclass
class Stitched:
    """One stream over a range: the combined frame, the per-minute comparison, and what each source knows."""

    frame: pd.DataFrame
    differences: pd.DataFrame  # per compared minute: ``differs``, ``difference`` and the ``column``
    comparison: Comparison
    known: dict = field(default_factory=dict)  # {source: boolean array per minute}


def combine(frames):
    """Stitch per-source frames of one stream (priority order, e.g. replay then live) minute by minute.

    Each minute takes the first source that knows it; a minute no source knows stays missing.
    """
    frames = [f for f in frames if f is not None]
    result = frames[0].copy()
    for frame in frames[1:]:
        take = result["missing"].to_numpy() & ~frame["missing"].to_numpy()
        if take.any():
            result.loc[take, :] = frame.loc[take, :].to_numpy()
    result["missing"] = result["missing"].astype(bool)
    return result


@dataclass
class StitchedValues:
    """One stream over ``[start, end)`` as arrays: the combined values (minutes x ``columns``), what each source
    knows, and the comparison of the minutes both know (``compared``: their positions). What the publisher
    writes; :class:`Stitched` is the same as DataFrames."""

    start: int
    values: np.ndarray
    columns: list
    known: dict
    compared: np.ndarray  # positions of the minutes both sources know
    differs: np.ndarray
    difference: np.ndarray
    column: np.ndarray  # the column that differs most (None where the minute agrees)

    @property
    def minutes(self):
        """Minute starts (µs)."""
        return self.start + np.arange(len(self.values), dtype=np.int64) * MINUTE_US

    @property
    def source(self):
        """Per minute: ``replay``, ``live`` or ``missing``."""
        return np.where(self.known["replay"], "replay", np.where(self.known["live"], "live", "missing"))

    @property
    def missing(self):
        """Per minute: no source knows it."""
        return ~(self.known["replay"] | self.known["live"])


def stitch_values(reader, exchange, symbol, data_type, start, end):
    """The combined minute values of one stream over ``[start, end)`` and its replay/live comparison, as arrays."""
    data_type = parse_data_type(data_type) if isinstance(data_type, str) else data_type
    start, end = floor_minute(start), ceil_minute(end)
    values, known = {}, {}
    for source in PRIORITY:
        values[source], known[source], columns = source_values(reader, exchange, symbol, data_type, start, end,
                                                               source)
    replay, live = known["replay"], known["live"]
    combined = np.where(replay[:, None], values["replay"], np.where(live[:, None], values["live"], np.nan))
    both = np.flatnonzero(replay & live)
    differs, difference, column = _compare(values, both, columns, data_type)
    return StitchedValues(start, combined, columns, known, both, differs, difference, column)


def stitch_stream(reader, exchange, symbol, data_type, start, end):
    """The combined minute series of one stream over ``[start, end)`` and its replay/live comparison."""
    result = stitch_values(reader, exchange, symbol, data_type, start, end)
    index = minute_index(start, end)
    frame = pd.DataFrame(result.values, index=index, columns=result.columns)
    frame["source"] = result.source
    frame["missing"] = result.missing
    differences = pd.DataFrame({"differs": result.differs, "difference": result.difference,
                                "column": result.column}, index=index[result.compared])
    return Stitched(frame, differences, summarize(differences), known=result.known)


def _compare(values, both, columns, data_type):
    """For the minutes at positions ``both``: whether the sources differ, by how much, and in which column."""
    worst = np.zeros(len(both))
    worst_col = np.array([""] * len(worst), dtype=object)
    bad = np.zeros(len(worst), dtype=bool)
    if not len(both):
        return bad, worst, np.array([], dtype=object)
    for column in COMPARED[data_type.family]:
        i = columns.index(column)
        a = values["replay"][both, i]
        b = values["live"][both, i]
        diff = np.abs(a - b)
        both_nan = np.isnan(a) & np.isnan(b)
        one_nan = np.isnan(a) ^ np.isnan(b)
        tolerance = RELATIVE_TOLERANCE * np.maximum(1.0, np.maximum(np.abs(np.nan_to_num(a)),
                                                                    np.abs(np.nan_to_num(b))))
        differs = one_nan | (~both_nan & (diff > tolerance))
        first_bad = differs & ~bad
        bad |= differs
        diff = np.where(np.isnan(diff) | ~differs, 0.0, diff)
        # the column named is the one that differs most (or the first that differs at all)
        larger = (diff > worst) | (first_bad & (worst == 0))
        worst = np.where(larger, diff, worst)
        worst_col = np.where(larger, column, worst_col)
    return bad, np.where(bad, worst, 0.0), np.where(bad, worst_col, None)


def summarize(differences):
    """A :class:`Comparison` from per-minute differences."""
    result = Comparison(compared=len(differences))
    bad = differences[differences["differs"].astype(bool)]
    result.disagreements = len(bad)
    if len(bad):
        minute = bad["difference"].idxmax()
        result.max_difference = float(bad.at[minute, "difference"])
        result.worst_minute = minute
        result.worst_column = str(bad.at[minute, "column"])
    return result


def stitched(storage, exchange, symbols, data_types, start, end, reader=None):
    """Per stream ``(symbol, data_type)``: the combined frame and the comparison, computed from storage."""
    types = [parse_data_type(d) if isinstance(d, str) else d for d in data_types]
    if reader is None:
        with Reader(storage, [(exchange, s, d.name) for s in symbols for d in types]) as reader:
            return stitched(storage, exchange, symbols, types, start, end, reader)
    frames, comparisons = {}, {}
    for symbol in symbols:
        for data_type in types:
            result = stitch_stream(reader, exchange, symbol, data_type, *clip_to_life(exchange, symbol, start, end))
            frames[(symbol, data_type.name)] = result.frame
            comparisons[(symbol, data_type.name)] = result.comparison
    return frames, comparisons


def series(storage, exchange, symbols, data_types, start, end, sources=SOURCES, reader=None):
    """Minute series of several streams: ``{(symbol, data_type): DataFrame}`` (see :func:`stream_series`).

    With several ``sources`` (default replay then live) each minute comes from the first source that
    knows it (see :func:`combine`).
    """
    types = [parse_data_type(d) if isinstance(d, str) else d for d in data_types]
    if reader is None:
        with Reader(storage, [(exchange, s, d.name) for s in symbols for d in types]) as reader:
            return series(storage, exchange, symbols, types, start, end, sources, reader)
    result = {}
    for symbol in symbols:
        a, b = clip_to_life(exchange, symbol, start, end)  # an option's minutes end at its expiration
        for data_type in types:
            frames = [stream_series(storage, exchange, symbol, data_type, a, b, source, reader) for source in sources]
            frame = combine(frames)
            if data_type.family == "option_summary":
                frame = with_contract(frame, storage, exchange, symbol, sources)
            result[(symbol, data_type.name)] = frame
    return result


def with_contract(frame, storage, exchange, symbol, sources=SOURCES):
    """An option summary frame with its contract's columns: ``option_type``, ``strike_price`` and
    ``expiration_date`` (from the symbol, as tardis parses them too) and ``underlying_index`` (the last one stored),
    the same in every minute the stream knows (None where it is missing)."""
    contract = option_contract(exchange, symbol)
    index = None
    for source in sources:
        row = storage.last_row_before("option_summary", exchange, symbol, "option_summary", source, 2 ** 62, 0,
                                      columns=["underlying_index"])
        if row is not None and row[0] is not None:
            index = row[0]
            break
    known = ~frame["missing"].to_numpy(dtype=bool)
    values = {"option_type": contract.option_type if contract else None,
              "strike_price": contract.strike_price if contract else None,
              "expiration_date": pd.Timestamp(contract.expiration * 1000, tz="UTC") if contract else None,
              "underlying_index": index}
    frame = frame.copy()
    for column, value in values.items():
        frame[column] = pd.Series(np.where(known, value, None), index=frame.index, dtype=object)
    return frame
