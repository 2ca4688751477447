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
from .aggregate import value_columns
from .schema import SERIES_VALUES

PUBLISH_SEQ_KEY = "publish_seq"
NOTIFY_CHANNEL = "gapless_publish"
_HEAD = ("minute", "seq", "revision", "source", "missing")
_SERIES_COLUMNS = tuple(SERIES_VALUES) + ("levels",)  # a series row's columns after its missing flag


def _own_columns(data_type):
    """Positions (in :data:`_SERIES_COLUMNS`) of the columns a data type's series can fill: the others are NULL in
    every row of it, so comparing a minute needs these only (a full pass reads every minute of the window)."""
    names = [c for c in value_columns(data_type) if c in SERIES_VALUES] + ["levels"]
    return [_SERIES_COLUMNS.index(c) for c in names]


class PublishSequence:
    """The next publish sequence numbers of one pass (see the module docstring)."""

    def __init__(self, storage):
        self.storage = storage
        self.first = self.value = read_published_seq(storage)
        self._old_sql = {}
        self._own = {}

    def mark(self):
        """A point to come back to if a stream's savepoint is rolled back (its numbers are not used)."""
        return self.value

    def undo(self, mark):
        """Give back the numbers taken since ``mark``."""
        self.value = mark

    def old_rows(self, key, lo, hi):
        """``{minute: (minute, seq, revision, source, missing, *values)}``: one stream's published minutes in
        ``[lo, hi)``, with the values its data type can fill (see :meth:`stamp`)."""
        name = key[2]
        if name not in self._old_sql:
            m = self.storage.mark
            columns = list(_HEAD) + [_SERIES_COLUMNS[i] for i in self._columns(name)]
            self._old_sql[name] = ('SELECT {c} FROM "minute_series" WHERE "exchange" = {m} AND "symbol" = {m} AND '
                                   '"data_type" = {m} AND "minute" >= {m} AND "minute" < {m}'
                                   .format(c=", ".join('"%s"' % c for c in columns), m=m))
        rows = self.storage.db.execute_sql(self._old_sql[name], tuple(key) + (lo, hi)).fetchall()
        return {r[0]: r for r in rows}

    def _columns(self, name):
        if name not in self._own:
            self._own[name] = _own_columns(name)
        return self._own[name]

    def stamp(self, rows, old):
        """``rows`` (series rows: exchange, symbol, data_type, minute, source, missing, *values, levels) with their
        seq and revision appended; an unchanged minute keeps the ones it had. Returns ``(rows, events)``."""
        stamped, events = [], 0
        for row in rows:
            before = old.get(row[3])
            if before is not None and before[3] == row[4] and bool(before[4]) == row[5] and \
                    list(before[5:]) == [row[6 + i] for i in self._columns(row[2])]:
                stamped.append(row + (before[1], before[2]))
                continue
            self.value += 1
            events += 1
            stamped.append(row + (self.value, 0 if before is None else before[2] + 1))
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
