"""Storage: the Peewee schema, batch writes, and coverage, on SQLite (default) or PostgreSQL.

One table per data-type family: ``book_snapshot_<depth>`` (quotes and snapshots, levels flattened),
``trade``, ``trade_bar``, ``book_change`` (levels as JSON text) and ``derivative_ticker``. Every row carries
exchange, symbol, ``dtype``, name, ``source`` (``replay`` or ``live``), ``timestamp`` and
``local_timestamp``. All times are integers of microseconds since the Unix epoch (UTC).

Each table's primary key is its natural key, so re-inserting the same data is a no-op
(``ON CONFLICT DO NOTHING``); on SQLite the tables are ``WITHOUT ROWID`` so the key is the only B-tree
(measured ~1.6x faster inserts than a rowid table plus a unique index).

The ``coverage`` table says which ``[start, end)`` of which (exchange, symbol, data type, source) is
really stored. It is written in the same transaction as the rows it covers, so it never claims more
than is stored. Coverage times are exchange time: "every message whose timestamp falls in
``[start, end)`` (for sampled types: every sample whose interval lies in it) is stored".
"""
import collections
import contextlib
import logging
import os
import sqlite3
import threading
import time

from peewee import SqliteDatabase

from .convert import table_columns
from .dberrors import DRIVER_ERRORS, clean_error
from .exceptions import DatabaseUrlError
from .runs import Claim  # noqa: F401 (defined with the runs that make claims; imported from here too)
from .storage_write import WritePath
from .schema import (BOOKKEEPING_TABLES, FAMILY_TABLES, INDEX_STATEMENTS, SCHEMA_VERSION, make_models, upgrade_rows,
                     upgrade_statements)
from .urls import redact_url

log = logging.getLogger(__name__)


SOURCES = ("replay", "live")


def _connect(url, timeout):
    """Create (not open) the Peewee database for a URL; raise :class:`DatabaseUrlError` naming the problem."""
    if not isinstance(url, str) or "://" not in url:
        raise DatabaseUrlError("database URL %r is not a URL (expected sqlite:///path.db or "
                               "postgresql://user:pass@host:port/db)" % (redact_url(str(url)),))
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else None
        if not path:
            raise DatabaseUrlError("database URL %r: expected sqlite:///relative/path.db or sqlite:////abs/path.db"
                                   % (url,))
        return SqliteDatabase(path, timeout=timeout, pragmas={
            "journal_mode": "wal",
            "synchronous": "normal",
            "busy_timeout": int(timeout * 1000),
            "cache_size": -16000,  # 16 MB: appends need little cache, and RSS stays flat
            "temp_store": "memory",
            # a checkpoint per 64 MB of WAL, not 4 MB: pages rewritten between two checkpoints are copied once
            # (a download of 500 options' summaries spent a fifth of its writer's time checkpointing)
            "wal_autocheckpoint": 16384,
        })
    if scheme in ("postgres", "postgresql"):
        from .pgstore import connect_postgres
        return connect_postgres(url, timeout)
    raise DatabaseUrlError("database URL %r: unsupported scheme %r (use sqlite or postgresql)"
                           % (redact_url(url), scheme))


class Storage(WritePath):
    """A gapless database: schema, batch writes, coverage and reads.

    ``Storage(url)`` opens (and on first use creates) the database. It refuses a database that has
    tables but is not a gapless database, and never changes anything before that check passes.
    Peewee gives each thread its own connection; several threads may share one ``Storage``.
    """

    def __init__(self, url, create=True, timeout=30.0):
        self.url = url
        self.redacted_url = redact_url(url)
        self.db = _connect(url, timeout)
        self.is_sqlite = isinstance(self.db, SqliteDatabase)
        self.mark = "?" if self.is_sqlite else "%s"  # the driver's placeholder of a bound parameter in plain SQL
        self.models, self._snapshot_factory = make_models(self.db)
        self._insert_sql = {}
        self._bulk_sql = {}
        self._read_sql = {}
        self._copy_inserter = None  # PostgreSQL bulk inserts (made on first use)
        self._values_inserter = None  # SQLite bulk inserts of row blocks (made on first use)
        self._copy_kinds = {}  # PostgreSQL: table -> its columns' binary COPY kinds
        self._lock = threading.Lock()
        self._tables = set()
        # rows inserted by this process per (exchange, source, table), for monitoring (gapless_rows_stored_total)
        self.rows_inserted = collections.Counter()
        self._tally_lock = threading.Lock()
        self._open(create)

    # -- setup ---------------------------------------------------------------------------------
    def _open(self, create):
        if self.is_sqlite:
            path = self.db.database
            if not create and not os.path.exists(path):
                raise DatabaseUrlError("database %s does not exist" % (self.redacted_url,))
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                raise DatabaseUrlError("database %s: directory %s does not exist" % (self.redacted_url, directory))
            if os.path.exists(path) and os.path.getsize(path) > 0:
                # look before connecting: our connection pragmas (WAL) would rewrite a foreign file's header
                self._inspect_sqlite_read_only(path)
        try:
            self._check_and_create(create)
        except DRIVER_ERRORS as exc:
            # a wrong host, port, database name or credentials, or a file damaged past its header: the
            # user's URL or file is what must change (exit 2)
            raise DatabaseUrlError("cannot open database %s: %s" % (self.redacted_url, clean_error(exc, self.url))) from None

    def _check_and_create(self, create):
        self.db.connect(reuse_if_open=True)
        existing = set(self.db.get_tables())
        meta = self.models["meta"]
        if existing and meta._meta.table_name not in existing:
            raise DatabaseUrlError("database %s is not a gapless database (it has tables %s but no gapless_meta)"
                                   % (self.redacted_url, ", ".join(sorted(existing)[:5])))
        if meta._meta.table_name in existing:
            version = self.meta_value("schema_version")
            if version is None or int(version) > SCHEMA_VERSION:
                raise DatabaseUrlError("database %s has gapless schema version %s; this gapless supports %d"
                                       % (self.redacted_url, version, SCHEMA_VERSION))
            if int(version) < SCHEMA_VERSION and not create:
                raise DatabaseUrlError("database %s has the older gapless schema version %s: run the service or "
                                       "'gapless download' once to upgrade it (readers never write)"
                                       % (self.redacted_url, version))
        elif not create:
            raise DatabaseUrlError("database %s is empty (not a gapless database yet)" % (self.redacted_url,))
        if create:
            self._create_base_schema()
        # readers (create=False: status, gaps, series) never write, so they never wait for a running service
        self._tables = set(self.db.get_tables())

    def _inspect_sqlite_read_only(self, path):
        try:
            connection = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=5)
            try:
                tables = {r[0] for r in connection.execute("select name from sqlite_master where type='table'")}
            finally:
                connection.close()
        except sqlite3.DatabaseError as exc:
            raise DatabaseUrlError("cannot open database %s: %s (corrupted, or not an SQLite file)"
                               % (self.redacted_url, exc)) from None
        if tables and "gapless_meta" not in tables:
            raise DatabaseUrlError("database %s is not a gapless database (it has tables %s but no gapless_meta)"
                                   % (self.redacted_url, ", ".join(sorted(tables)[:5])))

    def _create_base_schema(self):
        names = FAMILY_TABLES + BOOKKEEPING_TABLES
        with self._schema_lock():
            with self.write_transaction():
                existing = set(self.db.get_tables())
                meta = self.models["meta"]
                version = int(self.meta_value("schema_version") or SCHEMA_VERSION) if "gapless_meta" in existing \
                    else SCHEMA_VERSION
                self.db.create_tables([self.models[name] for name in names], safe=True)
                if version < SCHEMA_VERSION:
                    self._upgrade(version, existing)
                for statement in INDEX_STATEMENTS:
                    self.db.execute_sql(statement)
                self.put_meta("schema_version", str(SCHEMA_VERSION))
                meta.insert(key="created_at", value=str(int(time.time()))).on_conflict_ignore().execute()

    def _upgrade(self, version, existing):
        """Bring an older database up to date (inside the schema lock and transaction)."""
        for statement in upgrade_statements(version, self.is_sqlite):
            table = statement.split('"')[1]
            if table in existing:  # a table made just now by create_tables already has every column
                self.db.execute_sql(statement)
        for what, count in upgrade_rows(version, self.db, self.is_sqlite, existing).items():
            log.warning("database %s: %d row(s) rewritten (%s)", self.redacted_url, count, what)
        # the minute store starts empty: every stored stretch is dirty once, so the first pass fills it
        self.db.execute_sql(
            'INSERT INTO "dirty_rows" ("exchange", "symbol", "data_type", "source", "lo", "hi") '
            'SELECT "exchange", "symbol", "data_type", "source", MIN("start"), MAX("end") FROM "coverage" '
            'GROUP BY "exchange", "symbol", "data_type", "source"')
        log.warning("database %s upgraded from gapless schema version %d to %d", self.redacted_url, version,
                    SCHEMA_VERSION)

    def write_transaction(self):
        """A transaction that takes the write lock at BEGIN on SQLite (``BEGIN IMMEDIATE``).

        A deferred transaction that reads first and writes later fails with "database is locked" at once,
        without waiting, when another connection wrote in between; taking the lock up front makes it
        wait (busy timeout) instead.
        """
        return self._transaction(self.db.atomic("IMMEDIATE") if self.is_sqlite else self.db.atomic())

    def publisher_lock(self):
        """One publishing pass (minute store refresh and publish) at a time per database, across processes:
        a PostgreSQL advisory lock; SQLite serialises writers by itself."""
        if self.is_sqlite:
            return contextlib.nullcontext()
        from .pgstore import publisher_lock
        return publisher_lock(self.db)

    @contextlib.contextmanager
    def publish_transaction(self):
        """A write transaction whose reads all come from one consistent view.

        SQLite: ``BEGIN IMMEDIATE`` holds the write lock, so nobody commits while it reads. PostgreSQL:
        REPEATABLE READ (other writers keep committing; this transaction keeps seeing its first snapshot).
        """
        with self.write_transaction():
            if not self.is_sqlite:
                self.db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield

    @contextlib.contextmanager
    def snapshot(self):
        """One consistent view for several reads: another connection's transaction is seen whole or not at all.

        Rows and the coverage claiming them are written together, so a reader that reads coverage, rows and
        minute aggregates in separate statements must read them from one snapshot, or it could see a claim
        without its rows. SQLite (WAL) and PostgreSQL (REPEATABLE READ) both give one for a transaction.
        Inside a transaction already, the caller's is used. Never write inside a snapshot.
        """
        if self.db.in_transaction():
            yield
            return
        with self.db.atomic():
            if not self.is_sqlite:
                self.db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    @staticmethod
    @contextlib.contextmanager
    def _transaction(atomic):
        try:
            with atomic:
                yield
        except DRIVER_ERRORS as exc:
            # SQLite rolls back by itself on some errors (SQLITE_FULL: "database or disk is full"); peewee's
            # own ROLLBACK then fails with "no transaction is active" and would hide the real cause
            original = exc
            while original is not None and "no transaction is active" in str(original):
                original = original.__cause__ or original.__context__
            if original is not None and original is not exc and isinstance(original, DRIVER_ERRORS):
                raise original from None
            raise

    def _schema_lock(self):
        """Serialise schema changes between processes starting at once (PostgreSQL advisory lock)."""
        if self.is_sqlite:
            return _NullContext()
        from .pgstore import advisory_lock
        return advisory_lock(self.db)

    def meta_value(self, key):
        """The text kept under ``key`` in the bookkeeping table, or None."""
        meta = self.models["meta"]
        row = meta.get_or_none(meta.key == key)
        return row.value if row else None

    def put_meta(self, key, value):
        """Keep ``value`` (text) under ``key`` in the bookkeeping table, replacing what was there."""
        meta = self.models["meta"]
        meta.insert(key=key, value=value).on_conflict(conflict_target=[meta.key], preserve=[meta.value]).execute()

    def snapshot_model(self, depth):
        """The model of the ``book_snapshot_<depth>`` table."""
        key = "book_snapshot_%d" % depth
        model = self.models.get(key)
        if model is None:
            model = self.models[key] = self._snapshot_factory(depth)
        return model

    def model(self, table):
        """The model for a table name (``trade``, ``book_snapshot_5``, ``coverage`` ...)."""
        if table.startswith("book_snapshot_"):
            return self.snapshot_model(int(table.rsplit("_", 1)[1]))
        return self.models[table]

    def ensure_tables(self, tables):
        """Create the tables (e.g. ``book_snapshot_5``) needed for some data types, if missing."""
        missing = [t for t in tables if t not in self._tables]
        if not missing:
            return
        with self._lock:
            with self._schema_lock():
                self.db.create_tables([self.model(t) for t in missing], safe=True)
            self._tables.update(missing)

    def has_table(self, table):
        """True when the table exists (tables are created on first use)."""
        if table not in self._tables:
            self._tables = set(self.db.get_tables())
        return table in self._tables

    def close(self):
        """Close this thread's connection."""
        if not self.db.is_closed():
            self.db.close()

    # -- coverage reads ------------------------------------------------------------------------
    def coverage_rows(self, exchange=None, symbol=None, data_type=None, source=None):
        """Raw coverage rows (dicts), optionally filtered, ordered by start."""
        coverage = self.models["coverage"]
        query = coverage.select()
        for field, value in ((coverage.exchange, exchange), (coverage.symbol, symbol),
                             (coverage.data_type, data_type), (coverage.source, source)):
            if value is not None:
                query = query.where(field == value)
        return list(query.order_by(coverage.start).dicts())

    def covered(self, exchange, symbol, data_type, source):
        """Merged ``[(start, end), ...]`` this stream has stored from this source."""
        from .intervals import merge
        m = self.mark
        # plain SQL: every reader asks this for every stream and source, on every pass
        rows = self.db.execute_sql(
            'SELECT "start", "end" FROM "coverage" WHERE "exchange" = {m} AND "symbol" = {m} AND "data_type" = {m} '
            'AND "source" = {m} AND "end" > "start" ORDER BY "start"'.format(m=m),
            (exchange, symbol, data_type, source)).fetchall()
        return merge((start, end) for start, end in rows)

    def open_segments(self, source="live"):
        """Coverage rows still marked open (a recorder that is running, or one that crashed)."""
        coverage = self.models["coverage"]
        return list(coverage.select().where((coverage.source == source) & (coverage.is_open == True))  # noqa: E712
                    .dicts())

    # -- row reads -----------------------------------------------------------------------------
    def read_rows(self, table, exchange, symbol, name, source, start, end, columns=None):
        """Rows of one stream with ``start <= timestamp < end`` as ``(columns, list of tuples)``."""
        if not self.has_table(table):
            return list(columns or table_columns(table)), []
        columns = list(columns or table_columns(table))
        sql, params = self._rows_sql(table, columns, "ASC", exchange, symbol, name, source, start, end)
        return columns, self.db.execute_sql(sql, params).fetchall()

    def last_row_before(self, table, exchange, symbol, name, source, before, not_before, columns=None):
        """The latest row of a stream with ``not_before <= timestamp < before`` (or None)."""
        if not self.has_table(table):
            return None
        columns = list(columns or table_columns(table))
        sql, params = self._rows_sql(table, columns, "DESC LIMIT 1", exchange, symbol, name, source, not_before,
                                     before)
        return self.db.execute_sql(sql, params).fetchone()

    def _rows_sql(self, table, columns, order, exchange, symbol, name, source, start, end):
        """One stream's rows in a timestamp range, as SQL text built once per (table, columns, order): building
        it with the ORM on every read cost more than the read, with hundreds of streams per pass."""
        key = (table, tuple(columns), order)
        sql = self._read_sql.get(key)
        if sql is None:
            model = self.model(table)
            m = self.mark
            names = ", ".join('"%s"' % model._meta.fields[c].column_name for c in columns)
            # the trade table holds one channel for trade-derived types: its rows are not per data type name
            by_name = "" if table == "trade" else ' AND "name" = %s' % m
            sql = ('SELECT {names} FROM "{table}" WHERE "exchange" = {m} AND "symbol" = {m} AND "source" = {m} '
                   'AND "timestamp" >= {m} AND "timestamp" < {m}{by_name} ORDER BY "timestamp" {order}').format(
                names=names, table=model._meta.table_name, m=m, by_name=by_name, order=order)
            self._read_sql[key] = sql
        params = (exchange, symbol, source, start, end) + (() if table == "trade" else (name,))
        return sql, params

    def count_rows(self, table, **where):
        """Number of rows in a table matching equality filters (used by status and tests)."""
        if not self.has_table(table):
            return 0
        model = self.model(table)
        query = model.select()
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return query.count()


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
