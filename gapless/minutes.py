"""The minute store: each stream's own per-minute aggregates, per source, kept up to date incrementally.

A minute's *own* aggregate is what the rows inside it say, nothing carried: for books the state after
its last snapshot and the mid's open/high/low/close over its snapshots; for trades and bars the OHLC,
volumes, count and vwap; for tickers the last value of each field. Only minutes that have rows get an
aggregate, once its source's claims have passed its end (before that it is not final, and a live minute
would be aggregated again on every write). What a quiet minute carries (the last book, the last price) and
whether a minute is covered at all is decided later, when the series is stitched (:mod:`gapless.series`), from
these aggregates and the coverage table: that is what makes the store incremental.

Every storage write records the time ranges it changed in ``dirty_rows`` (same transaction).
:meth:`MinuteStore.refresh` recomputes the aggregates of those ranges only, in chunks of at most
:data:`CHUNK_US` (memory stays flat whatever the lookback), records them in ``dirty_series`` for the
publisher, and consumes the dirty marks. Readers that must not write (``status``, ``series`` on the
command line) refresh *in memory* instead: the result is an overlay that wins over the stored aggregates.

The aggregates themselves are computed by :mod:`gapless.aggregate`.
"""
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .aggregate import aggregate, load_range, source_columns
from .aggtable import Aggregates
from .datatypes import parse_data_type
from .intervals import merge, subtract
from .exceptions import GaplessError
from .timeutil import MINUTE_US, ceil_minute, floor_minute

log = logging.getLogger(__name__)

CHUNK_US = 6 * 60 * MINUTE_US
ID_CHUNK = 900  # ids per DELETE: under SQLite's oldest limit of 999 parameters
WRITE_MINUTES = 20_000  # aggregates written per transaction, at most (memory stays flat)
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
        """Dirty ranges waiting, merged: ``{(exchange, symbol, data_type, source): ([(lo, hi)], last id)}``.

        ``streams`` limits it to those (exchange, symbol, data_type); others are left for their owners. The marks
        of a key are consumed up to its last id read (:meth:`_consume`): later ones stay.
        """
        if not self.storage.has_table("dirty_rows"):
            return {}
        wanted = None if streams is None else {tuple(s) for s in streams}
        ours = {}  # data type name: whether it is one of ours
        spans, last_ids = {}, {}
        # grouped by the minute each mark starts in, in SQL: with hundreds of streams the recorder leaves a mark per
        # stream and write, over 30,000 a minute, and reading each into Python was most of a publishing tick
        rows = self.storage.db.execute_sql(
            'SELECT "exchange", "symbol", "data_type", "source", ("lo" / {m}) * {m}, MAX("hi"), MAX("id") '
            'FROM "dirty_rows" GROUP BY 1, 2, 3, 4, 5'.format(m=MINUTE_US)).fetchall()
        for exchange, symbol, data_type, source, lo, hi, last in rows:
            if wanted is not None and (exchange, symbol, data_type) not in wanted:
                continue
            if data_type not in ours:
                try:
                    parse_data_type(data_type)
                    ours[data_type] = True
                except GaplessError:
                    ours[data_type] = False  # not a data type of ours (written by something else): leave it
            if not ours[data_type]:
                continue
            key = (exchange, symbol, data_type, source)
            spans.setdefault(key, []).append((int(lo), ceil_minute(int(hi))))
            last_ids[key] = max(last_ids.get(key, 0), int(last))
        return {key: (merge(ranges), last_ids[key]) for key, ranges in spans.items()}

    def refresh(self, streams=None, persist=True):
        """Recompute the aggregates of the dirty ranges of ``streams`` (all when None).

        ``persist``: write them (and the ranges to ``dirty_series``) and consume the dirty marks; else keep
        them in the returned overlay and write nothing (readers). A stream whose rows cannot be aggregated
        (e.g. a value that is not a number) is reported in ``errors`` and keeps its dirty marks; the others
        are refreshed all the same. Writes go in transactions of many streams (a commit per stream cost more
        than its work, with hundreds of streams), each at most :data:`WRITE_MINUTES` minutes of aggregates.
        """
        import time
        began = time.monotonic()
        result = RefreshResult()
        writes, consumed, later, held = [], [], [], [0]  # held: minutes of aggregates waiting in ``writes``

        def write():
            if writes or consumed:
                with self.storage.write_transaction():
                    for key, a, b, aggregates in writes:
                        self._store(key, a, b, aggregates)
                    self._consume(consumed)
                    self._mark_later(later)
                del writes[:], consumed[:], later[:]
                held[0] = 0

        pending = self.pending(streams)
        final_ends = self.final_ends() if pending else {}
        for key, (ranges, last_id) in pending.items():
            data_type = parse_data_type(key[2])
            if data_type.family == "book_change":
                continue  # stored for download users; it has no minute series (see datatypes.series_problem)
            # a minute its source's claims have not passed yet is not final: computed once they pass it, not on
            # every write before (a live minute was aggregated three times over, 500 options each second)
            final_end = final_ends.get(key, 0)
            waiting = [(max(lo, final_end), hi) for lo, hi in ranges if hi > final_end]
            ranges = [(lo, min(hi, final_end)) for lo, hi in ranges if lo < final_end]
            if not ranges:
                continue  # its marks stay
            try:
                for lo, hi in ranges:
                    for a in range(lo, hi, CHUNK_US):
                        b = min(hi, a + CHUNK_US)
                        aggregates = self._compute(key, data_type, a, b)
                        if persist:
                            writes.append((key, a, b, aggregates))
                            held[0] += len(aggregates) + 1
                            if held[0] >= WRITE_MINUTES:
                                write()
                        else:
                            result.overlay.setdefault(key, []).append((a, b, aggregates))
            except Exception as exc:  # one stream's bad rows must not keep the others from being refreshed
                log.exception("aggregating %s %s %s (%s) failed", *key)
                result.errors[key[:3]] = "%s: %s" % (exc.__class__.__name__, exc)
                continue  # its marks stay (what of it was computed may be written: it is recomputed anyway)
            result.ranges[key] = ranges
            if persist:
                consumed.append((key, last_id))
                later.extend((key, lo, hi) for lo, hi in waiting)  # the marks of what waits, in the same write
        if persist:
            write()
        result.seconds = time.monotonic() - began
        return result

    def _compute(self, key, data_type, lo, hi):
        exchange, symbol, name, source = key
        a, b = load_range(data_type, lo, hi)
        columns, rows = self.storage.read_rows(data_type.table, exchange, symbol, name, source, a, b,
                                               columns=source_columns(data_type))
        if not rows:
            return aggregate(data_type, None)
        if data_type.family in ("trade", "liquidation"):  # ids and sides are text
            frame = pd.DataFrame.from_records(rows, columns=columns)
        else:  # numbers only (NULL: NaN), one block: inferring each column's type cost more than the aggregation
            frame = pd.DataFrame(np.array(rows, dtype=float), columns=pd.Index(columns, dtype=object))
        return aggregate(data_type, frame)

    def _store(self, key, lo, hi, aggregates):
        """Replace the aggregates of ``key`` in ``[lo, hi)`` and tell the publisher (in the caller's transaction)."""
        exchange, symbol, name, source = key
        rows, names = aggregates.to_rows((exchange, symbol, name, source))
        columns = ["exchange", "symbol", "data_type", "source"] + names
        m = self.storage.mark
        # plain SQL: these run for every chunk of every stream on every pass
        self.storage.db.execute_sql(
            'DELETE FROM "minute_agg" WHERE "exchange" = {m} AND "symbol" = {m} AND "data_type" = {m} AND '
            '"source" = {m} AND "minute" >= {m} AND "minute" < {m}'.format(m=m),
            (exchange, symbol, name, source, lo, hi))
        self.storage.bulk_insert(self.models["minute_agg"], columns, rows)
        self.storage.db.execute_sql(
            'INSERT INTO "dirty_series" ("exchange", "symbol", "data_type", "lo", "hi") VALUES '
            '({m}, {m}, {m}, {m}, {m})'.format(m=m), (exchange, symbol, name, lo, hi))

    def final_ends(self):
        """``{(exchange, symbol, data_type, source): minute}``: the minutes before it may be final (its claims end
        at or past their ends); a minute at or after it is not covered whole by any claim of its source yet."""
        rows = self.storage.db.execute_sql('SELECT "exchange", "symbol", "data_type", "source", MAX("end") FROM '
                                           '"coverage" WHERE "end" > "start" GROUP BY "exchange", "symbol", '
                                           '"data_type", "source"').fetchall()
        return {tuple(row[:4]): floor_minute(row[4]) for row in rows}

    def _mark_later(self, later):
        """Mark again what a refresh left for later (in the caller's transaction)."""
        if later:
            model = self.models["dirty_rows"]
            self.storage.bulk_insert(model, ["exchange", "symbol", "data_type", "source", "lo", "hi"],
                                     [key + (lo, hi) for key, lo, hi in later])

    def _consume(self, consumed):
        """Delete each key's dirty marks up to its last id read, ``[(key, last id)]`` (in the caller's transaction).
        A mark written since has a higher id: the rowid of a new row is above every row still there, and the key's
        last mark read is among them until this very delete."""
        m = self.storage.mark
        for key, last_id in consumed:
            self.storage.db.execute_sql(
                'DELETE FROM "dirty_rows" WHERE "exchange" = {m} AND "symbol" = {m} AND "data_type" = {m} AND '
                '"source" = {m} AND "id" <= {m}'.format(m=m), key + (last_id,))

    # -- reading -----------------------------------------------------------------------------------
    def read(self, key, lo, hi, columns, overlay=None):
        """Aggregates of ``key`` = (exchange, symbol, data_type, source) for minutes ``[lo, hi)``, in minute order.

        :class:`Aggregates` with ``columns`` (``levels`` kept as texts); overlay ranges (an in-memory refresh)
        replace what the table holds there. Column-wise arrays, not a DataFrame: the publisher reads a few
        minutes of hundreds of streams on every tick, and building a DataFrame cost more than the query.
        """
        parts = []
        covered = []
        for a, b, aggregates in (overlay or {}).get(key, ()):
            if b > lo and a < hi:
                part = aggregates.select(columns)
                parts.append(part.take((part.minutes >= max(a, lo)) & (part.minutes < min(b, hi))))
                covered.append((max(a, lo), min(b, hi)))
        for a, b in subtract([(lo, hi)], covered):
            parts.append(self._select(key, a, b, columns, order="ASC"))
        return Aggregates.concat(parts, columns)

    def last_before(self, key, before, not_before, columns, overlay=None):
        """The latest aggregate of ``key`` with ``not_before <= minute < before`` (:class:`Aggregates` of one
        minute) or None."""
        candidates = []
        for a, b, aggregates in (overlay or {}).get(key, ()):
            part = aggregates.select(columns)
            part = part.take((part.minutes >= not_before) & (part.minutes < before))
            if len(part):
                candidates.append(part.take(np.arange(len(part) - 1, len(part))))
        # the table, outside the overlay's ranges (they replace it there)
        spans = [(a, b) for a, b, _ in (overlay or {}).get(key, ())]
        for a, b in reversed(subtract([(not_before, before)], spans)):
            found = self._select(key, a, b, columns, order="DESC", limit=1)
            if len(found):
                candidates.append(found)
                break
        if not candidates:
            return None
        best = Aggregates.concat(candidates, columns)
        return best.take(np.arange(len(best) - 1, len(best)))

    def first_at_or_after(self, key, lo, hi):
        """The first minute in ``[lo, hi)`` with an aggregate of ``key`` in the table (or None)."""
        found = self._select(key, lo, hi, [], limit=1)
        return int(found.minutes[0]) if len(found) else None

    def _select(self, key, lo, hi, columns, order="ASC", limit=None):
        exchange, symbol, name, source = key
        storage = self.storage
        if not storage.has_table("minute_agg") or hi <= lo:
            return Aggregates.from_rows([], columns, meta=False)
        mark = storage.mark
        sql = ('SELECT "minute", "last_ts"%s FROM "minute_agg" WHERE "exchange" = %s AND "symbol" = %s AND '
               '"data_type" = %s AND "source" = %s AND "minute" >= %s AND "minute" < %s ORDER BY "minute" %s%s' % (
                   "".join(', "%s"' % c for c in columns), mark, mark, mark, mark, mark, mark, order,
                   " LIMIT %d" % limit if limit else ""))
        rows = storage.db.execute_sql(sql, (exchange, symbol, name, source, lo, hi)).fetchall()
        if order == "DESC":
            rows.reverse()
        return Aggregates.from_rows(rows, columns, meta=False)

