"""The publish sequence: each published minute's ``seq`` and ``revision``, which followers read.

A publishing pass replaces the minutes it recomputes. A minute that comes out the same (same source,
same missing flag, every value equal) keeps its seq and revision, so it is not an event. A new minute
gets revision 0. A changed minute gets its old revision + 1. Both take the next seq. Minutes that leave
the window are deleted; that is not an event.

The counter is kept in ``gapless_meta`` (``publish_seq``) and is read and written inside the pass's
transaction. Passes run one at a time (SQLite's write lock, PostgreSQL's publisher lock), and a pass
commits whole. So seq order is commit order, and a follower that has seen seq N has seen every change
published up to N. On PostgreSQL the pass also sends ``NOTIFY gapless_publish`` inside its transaction.
The notice is delivered at commit, so followers wake right away.
"""
from .schema import SERIES_VALUES

PUBLISH_SEQ_KEY = "publish_seq"
NOTIFY_CHANNEL = "gapless_publish"
_ROW_COLUMNS = ("minute", "seq", "revision", "source", "missing") + tuple(SERIES_VALUES) + ("levels",)


class PublishSequence:
    """The next publish sequence numbers of one pass (see the module docstring)."""

    def __init__(self, storage):
        self.storage = storage
        self.first = self.value = read_published_seq(storage)
        self._old_sql = None

    def mark(self):
        """A point to come back to if a stream's savepoint is rolled back (its numbers are not used)."""
        return self.value

    def undo(self, mark):
        """Give back the numbers taken since ``mark``."""
        self.value = mark

    def old_rows(self, key, lo, hi):
        """``{minute: (seq, revision, source, missing, *values)}`` of one stream's published minutes in ``[lo, hi)``."""
        if self._old_sql is None:
            m = "?" if self.storage.is_sqlite else "%s"
            self._old_sql = ('SELECT {c} FROM "minute_series" WHERE "exchange" = {m} AND "symbol" = {m} AND '
                             '"data_type" = {m} AND "minute" >= {m} AND "minute" < {m}'
                             .format(c=", ".join('"%s"' % c for c in _ROW_COLUMNS), m=m))
        rows = self.storage.db.execute_sql(self._old_sql, tuple(key) + (lo, hi)).fetchall()
        return {r[0]: (r[1], r[2], r[3], bool(r[4])) + tuple(r[5:]) for r in rows}

    def stamp(self, rows, old):
        """``rows`` (series rows: exchange, symbol, data_type, minute, source, missing, *values, levels) with their
        seq and revision appended; an unchanged minute keeps the ones it had. Returns ``(rows, events)``."""
        stamped, events = [], 0
        for row in rows:
            before = old.get(row[3])
            if before is not None and before[2] == row[4] and before[3] == bool(row[5]) and before[4:] == row[6:]:
                stamped.append(row + (before[0], before[1]))
                continue
            self.value += 1
            events += 1
            stamped.append(row + (self.value, 0 if before is None else before[1] + 1))
        return stamped, events

    def finish(self):
        """Keep the counter (inside the pass's transaction) and, on PostgreSQL, notify followers at commit."""
        if self.value == self.first:
            return
        self.storage.put_meta(PUBLISH_SEQ_KEY, str(self.value))
        if not self.storage.is_sqlite:
            self.storage.db.execute_sql("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(self.value)))


def read_published_seq(storage):
    """The newest publish sequence number of the database (0 before the first published minute)."""
    return int(storage.meta_value(PUBLISH_SEQ_KEY) or 0)
