"""PostgreSQL specifics: connecting, the bulk-insert hot path (COPY), and the schema lock.

Rows are COPYed (PostgreSQL's fast path) straight into their table; a batch that meets existing keys is
redone through a temporary staging table and ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` on the
natural key, which keeps the same idempotence as SQLite (re-inserting the same data is a no-op, several
writers never duplicate a row).
"""
from urllib.parse import parse_qsl, urlsplit

from peewee import PostgresqlDatabase

from .exceptions import DatabaseUrlError
from .pg_binary import binary_copy
from .rows import RowBlock
from .urls import redact_url

# pg_advisory_xact_lock key for schema changes: several services starting at once create tables in turn
SCHEMA_LOCK_KEY = 0x6761706C657373  # "gapless"
# pg_advisory_lock key of the publishing pass (with the schema's hash): one pass at a time per schema
PUBLISH_LOCK_KEY = 0x67706C73  # "gpls"


def connect_postgres(url, timeout):
    """A Peewee PostgreSQL database for ``postgresql://user:pass@host:port/db`` (not connected yet)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DatabaseUrlError("database URL: %s" % exc) from None
    database = parts.path.lstrip("/")
    if not database:
        raise DatabaseUrlError("database URL %s names no database (postgresql://user:pass@host:port/db)"
                               % (redact_url(url),))
    kwargs = {"host": parts.hostname or "localhost", "port": port or 5432,
              "connect_timeout": max(1, int(timeout))}
    if parts.username:
        kwargs["user"] = parts.username
    if parts.password:
        kwargs["password"] = parts.password
    for key, value in parse_qsl(parts.query):
        kwargs[key] = value
    return PostgresqlDatabase(database, autoconnect=True, **kwargs)


class advisory_lock:
    """``with advisory_lock(db):`` serialises schema creation between processes (transaction-scoped)."""

    def __init__(self, db):
        self.db = db
        self._atomic = None

    def __enter__(self):
        self._atomic = self.db.atomic()
        self._atomic.__enter__()
        self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        return self

    def __exit__(self, *exc):
        return self._atomic.__exit__(*exc)


class publisher_lock:
    """``with publisher_lock(db):`` one publishing pass at a time in this database schema, across processes.

    Session-scoped and taken BEFORE the pass's transaction begins: the pass reads from a REPEATABLE READ
    snapshot, which must be taken after the wait, or two services publishing the same stream would fail on
    each other's rows (could not serialize access).
    """

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute_sql("SELECT pg_advisory_lock(%s, hashtext(current_schema()))", (PUBLISH_LOCK_KEY,))
        return self

    def __exit__(self, *exc):
        self.db.execute_sql("SELECT pg_advisory_unlock(%s, hashtext(current_schema()))", (PUBLISH_LOCK_KEY,))
        return False


class CopyInserter:
    """Bulk insert with ``ON CONFLICT DO NOTHING`` semantics at close to raw ``COPY`` speed.

    A batch is first COPYed straight into its table inside a savepoint: new data (the common case, since
    downloads ask only for what coverage lacks) pays nothing more than COPY. When a row of the batch
    already exists, the savepoint is rolled back and the batch goes through a staging table and
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``; the next batches of that table take the staging way
    directly for a while (two services recording one stream conflict on every batch).
    """

    STAGING_BATCHES_AFTER_CONFLICT = 50

    def __init__(self):
        self._staging_left = {}

    def insert(self, cursor, table, columns, rows, kinds=None):
        """Insert ``rows`` (tuples in ``columns`` order, or a RowBlock) ; returns how many were new. In the
        caller's transaction. ``kinds``: the columns' binary kinds (:func:`gapless.pg_binary.column_kinds`), which
        let a RowBlock go as binary COPY."""
        if not rows:
            return 0
        if self._staging_left.get(table, 0) > 0:
            self._staging_left[table] -= 1
            return copy_rows(cursor, table, columns, rows, kinds)
        from psycopg.errors import UniqueViolation
        cursor.execute("SAVEPOINT gapless_copy")
        try:
            copy_into(cursor, table, columns, rows, kinds)
        except UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT gapless_copy")
            self._staging_left[table] = self.STAGING_BATCHES_AFTER_CONFLICT
            return copy_rows(cursor, table, columns, rows, kinds)
        cursor.execute("RELEASE SAVEPOINT gapless_copy")
        return len(rows)


def copy_into(cursor, table, columns, rows, kinds=None):
    """COPY ``rows`` into ``table``: a RowBlock that packs (see :mod:`gapless.pg_binary`) as one binary buffer,
    anything else row by row."""
    column_list = ", ".join('"%s"' % c for c in columns)
    data = None
    if kinds is not None and isinstance(rows, RowBlock):
        data = binary_copy(rows, kinds, cursor.connection.info.encoding)
    if data is not None:
        with cursor.copy('COPY "%s" (%s) FROM STDIN (FORMAT BINARY)' % (table, column_list)) as copy:
            copy.write(data)
        return
    with cursor.copy('COPY "%s" (%s) FROM STDIN' % (table, column_list)) as copy:
        for row in rows:
            copy.write_row(row)


def copy_rows(cursor, table, columns, rows, kinds=None):
    """Insert rows through COPY into a staging table, skipping rows whose key already exists.

    Returns the number of rows inserted. Runs inside the caller's transaction.
    """
    if not rows:
        return 0
    staging = "gapless_staging_%s" % table
    column_list = ", ".join('"%s"' % c for c in columns)
    # table and column names come from our own schema, never from user input
    cursor.execute('CREATE TEMP TABLE IF NOT EXISTS "%s" (LIKE "%s" INCLUDING DEFAULTS) ON COMMIT DELETE ROWS'
                   % (staging, table))
    copy_into(cursor, staging, columns, rows, kinds)
    cursor.execute('INSERT INTO "%s" (%s) SELECT %s FROM "%s" ON CONFLICT DO NOTHING'
                   % (table, column_list, column_list, staging))
    inserted = cursor.rowcount
    cursor.execute('TRUNCATE "%s"' % staging)
    return inserted
