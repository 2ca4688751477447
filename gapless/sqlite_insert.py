"""SQLite's bulk insert of a :class:`~gapless.rows.RowBlock`: many rows per statement, shared values bound once.

``executemany`` binds every value of every row and steps the statement once per row: for a replay of raw quotes
(twelve columns, five of them the same in every row of a batch) that costs about twice the insert itself. Here
one statement inserts up to a thousand rows::

    INSERT INTO "t" ("exchange", ..., "asks_0_amount")
    SELECT ?, ?, ?, ?, ?, column1, ..., column7 FROM (VALUES (?, ?, ?, ?, ?, ?, ?), (?, ...), ...)
    WHERE true ON CONFLICT DO NOTHING

The columns that are the same in every row (:class:`~gapless.rows.Const`) are bound once per statement, the
others row after row from one flat list. The rows, their order, their types (the table's column affinity applies
as to bound values), the ``ON CONFLICT DO NOTHING`` of the natural key and the count of inserted rows are those of
``executemany`` (``tests/test_sqlite_insert.py`` compares the two). ``WHERE true`` is SQLite's documented way to
let ``ON CONFLICT`` follow ``INSERT ... SELECT``. Statement sizes come from a short ladder (the largest that
keeps to :data:`MAX_PARAMETERS`, then 100, 10, 1 rows), so a connection prepares a handful of statements per table
and reuses them from its cache.
"""
import sqlite3

from .rows import Const

MAX_ROWS = 1000  # rows per statement: larger ones are not faster and cost more to prepare
# parameters per statement: a prepared statement stays in the connection's cache, and its program grows with
# them (book_snapshot_25's 108 columns: its statements of 318, 100, 10 and 1 rows added 23 MB of RSS, 4.7 MB
# under this cap); 100 rows of a quote already cost per row what 1,000 do
MAX_PARAMETERS = 2000
_DEFAULT_VARIABLES = 999  # SQLite's limit before 3.32, where the connection cannot tell its own


def variable_limit(connection):
    """The most ``?`` parameters one statement of ``connection`` may have."""
    try:
        return connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    except AttributeError:  # Python before 3.11
        return _DEFAULT_VARIABLES


class ValuesInserter:
    """Inserts row blocks into SQLite tables with multi-row ``VALUES`` statements (in the caller's transaction)."""

    def __init__(self, connection):
        self.variables = variable_limit(connection)
        self._sql = {}

    def insert(self, cursor, table, columns, block):
        """Insert the rows of ``block`` (a RowBlock in ``columns`` order) into ``table``, duplicates of the
        natural key skipped. Returns nothing: the caller counts changes on the connection."""
        n = len(block)
        if not n:
            return
        shared = [i for i, column in enumerate(block.columns) if column.__class__ is Const]
        varying = [i for i in range(len(columns)) if i not in shared]
        width = len(varying)
        shared_values = [block.columns[i].value for i in shared]
        flat = [None] * (width * n)
        for j, i in enumerate(varying):
            values = block.column(i)
            flat[j::width] = values if isinstance(values, list) else list(values)
        layout = tuple(shared)
        start = 0
        for size in self._ladder(len(shared), width):
            while n - start >= size:
                cursor.execute(self._statement(table, columns, layout, size),
                               shared_values + flat[start * width:(start + size) * width])
                start += size

    def _ladder(self, shared, width):
        """Statement sizes, largest first, that fit the variable limit; ends with 1 so any count is reached."""
        largest = max(1, min(MAX_ROWS, (min(self.variables, MAX_PARAMETERS) - shared) // max(1, width)))
        return [largest] + [size for size in (100, 10, 1) if size < largest]

    def _statement(self, table, columns, shared, size):
        key = (table, shared, size)
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = values_sql(table, columns, shared, size)
        return sql


def values_sql(table, columns, shared, size):
    """``INSERT ... SELECT ... FROM (VALUES ...) ... ON CONFLICT DO NOTHING`` of ``size`` rows; the columns whose
    index is in ``shared`` are bound once (the first parameters, in column order), the others per row.

    Every parameter is an anonymous ``?``, numbered by SQLite in the order it reads them (the select list comes
    first): a numbered ``?NNN`` costs SQLite a scan of the numbers seen so far, quadratic in a statement of
    thousands of them (0.2 s to prepare 100 rows of ``book_snapshot_25``).
    """
    picked = []
    varying = 0
    for i in range(len(columns)):
        if i in shared:
            picked.append("?")
        else:
            varying += 1
            picked.append("column%d" % varying)
    row = "(%s)" % ", ".join(["?"] * varying) if varying else "(NULL)"
    rows = [row] * (size if varying else 1)  # every column shared (one distinct row): one VALUES row to select
    return 'INSERT INTO "%s" (%s) SELECT %s FROM (VALUES %s) WHERE true ON CONFLICT DO NOTHING' % (
        table, ", ".join('"%s"' % c for c in columns), ", ".join(picked), ", ".join(rows))
