"""The database schema: every table gapless keeps, as Peewee models, and the upgrade between versions.

Data tables, one per data-type family (``book_snapshot_<depth>``, ``trade``, ``trade_bar``, ``book_change``,
``derivative_ticker``, ``liquidation``, ``book_ticker``, ``option_summary``), keyed by their natural key so re-inserting is a no-op. Bookkeeping tables:

* ``coverage``: which ``[start, end)`` of which stream is stored, per source and segment (a download run
  or a live connection); written in the same transaction as the rows it covers;
* ``dirty_rows``: time ranges of streams whose rows or coverage changed since the minute store last
  looked (written by every storage write, in the same transaction);
* ``minute_agg``: the minute store, one row per (stream, source, minute) that has data (see
  :mod:`gapless.minutes`);
* ``dirty_series``: ranges whose minute aggregates changed since the published series last looked;
* ``replay_ledger``: ranges of history that were asked for and did not come back covered, with why and
  when to ask again (see :mod:`gapless.ledger`);
* ``healing_state``: per book-derived stream and UTC day, when history was last asked from 00:00, how far that
  request reached, why and how many times (see :mod:`gapless.healing_state`); a table of its own, made on older databases when a writer
  opens them (no schema version change), absent to readers of a database no writer has opened since;
* ``minute_series`` / ``minute_compare`` / ``stream_status``: the published series, its per-minute
  replay/live comparison, and per-stream results of the last pass; each published minute carries its
  publish sequence number (``seq``, database-wide, kept in ``gapless_meta`` as ``publish_seq``) and its
  ``revision`` (0 when first published, +1 each time its source or a value changed), which followers
  read (see :mod:`gapless.follower`, schema 4);
* ``gapless_meta``: schema version and small service state (history delay per exchange ...).
"""
from peewee import (AutoField, BigIntegerField, BooleanField, CharField, CompositeKey, DoubleField, IntegerField,
                    Model, SqliteDatabase, TextField)

from .convert import table_columns
from .rows import OPTION_FIELDS
from .trade_keys import rewrite_fallback_keys

SCHEMA_VERSION = 5
FAMILY_TABLES = ("trade", "trade_bar", "book_change", "derivative_ticker", "liquidation", "book_ticker",
                 "option_summary")
BOOKKEEPING_TABLES = ("coverage", "meta", "dirty_rows", "dirty_series", "minute_agg", "replay_ledger",
                      "minute_series", "minute_compare", "stream_status", "healing_state")

# value columns of the minute store and of the published series (the union over data-type families)
QUOTE_VALUES = ("bid_price", "bid_amount", "ask_price", "ask_amount", "mid_open", "mid_high", "mid_low",
                "mid_close")
TRADE_VALUES = ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "trades", "vwap")
TICKER_VALUES = ("last_price", "open_interest", "funding_rate", "index_price", "mark_price")
LIQUIDATION_VALUES = ("liquidations", "volume", "buy_volume", "sell_volume", "vwap")
OPTION_VALUES = tuple(c for c, _ in OPTION_FIELDS)
# new columns go at the end (schema 5: liquidations and option summaries): readers select them by name, followers
# by position
SCHEMA_5_VALUES = ("liquidations",) + tuple(c for c in OPTION_VALUES if c not in TICKER_VALUES)
SERIES_VALUES = QUOTE_VALUES + TRADE_VALUES + TICKER_VALUES + SCHEMA_5_VALUES


def make_models(database):
    """Fresh model classes bound to ``database`` (one set per Storage, so several can coexist).

    Returns ``(models, snapshot_factory)``; ``snapshot_factory(depth)`` makes the ``book_snapshot_<depth>``
    model on demand (depths are only known from the data types in use).
    """

    class Base(Model):
        class Meta:
            database = None
            legacy_table_names = False

    Base._meta.database = database
    without_rowid = isinstance(database, SqliteDatabase)

    def common():
        return {
            "exchange": CharField(max_length=64),
            "symbol": CharField(max_length=128),
            "dtype": CharField(max_length=32),
            "name": CharField(max_length=64),
            "source": CharField(max_length=8),
            "timestamp": BigIntegerField(),
            "local_timestamp": BigIntegerField(),
        }

    def model(table, fields, key, rowid=False):
        meta = type("Meta", (), {"table_name": table, "primary_key": CompositeKey(*key),
                                 "without_rowid": without_rowid and not rowid})
        return type(table.title().replace("_", ""), (Base,), dict(fields, Meta=meta))

    models = {}
    # trade_id is the exchange's id, or for an exchange without ids one made of the trade's content (see
    # gapless.trade_keys); seq is then its arrival order among the stream's trades of its timestamp (schema 3)
    models["trade"] = model("trade", dict(common(), trade_id=CharField(max_length=128), price=DoubleField(),
                                          amount=DoubleField(), side=CharField(max_length=8),
                                          seq=IntegerField(null=True)),
                            ("exchange", "symbol", "source", "timestamp", "trade_id"))
    # liquidations (schema 5): a trade's fields, keyed like trades; a liquidation is also a trade, stored apart
    models["liquidation"] = model("liquidation", dict(common(), trade_id=CharField(max_length=128),
                                                      price=DoubleField(), amount=DoubleField(),
                                                      side=CharField(max_length=8), seq=IntegerField(null=True)),
                                  ("exchange", "symbol", "source", "timestamp", "trade_id"))
    models["trade_bar"] = model("trade_bar", dict(
        common(), open_timestamp=BigIntegerField(), close_timestamp=BigIntegerField(), interval=DoubleField(),
        kind=CharField(max_length=16), open=DoubleField(), high=DoubleField(), low=DoubleField(),
        close=DoubleField(), volume=DoubleField(), buy_volume=DoubleField(), sell_volume=DoubleField(),
        trades=DoubleField(), vwap=DoubleField(null=True)),
        # open_timestamp is in the key: a bar cut short by a range start or a reconnect is another
        # bar than the full one stamped at the same time; the minute store picks the fullest
        ("exchange", "symbol", "name", "source", "timestamp", "open_timestamp"))
    seq_key = ("exchange", "symbol", "name", "source", "timestamp", "local_timestamp", "seq")
    models["book_change"] = model("book_change", dict(
        common(), seq=IntegerField(), is_snapshot=BooleanField(), bids=TextField(), asks=TextField()), seq_key)
    ticker_fields = {c: DoubleField(null=True) for c in table_columns("derivative_ticker")[8:-1]}
    models["derivative_ticker"] = model("derivative_ticker", dict(
        common(), seq=IntegerField(), funding_timestamp=BigIntegerField(null=True), **ticker_fields), seq_key)
    # option_summary (schema 5): an option ticker message's numbers (NULL: omitted), and the contract's fields
    option_numbers = {c: DoubleField(null=True) for c, _ in OPTION_FIELDS}
    models["option_summary"] = model("option_summary", dict(
        common(), seq=IntegerField(), **option_numbers, option_type=CharField(max_length=8),
        strike_price=DoubleField(), expiration_date=BigIntegerField(null=True),
        underlying_index=CharField(max_length=64, null=True)), seq_key)
    # book_ticker (schema 5): the best bid and ask of each exchange ticker message (NULL: the side was empty)
    models["book_ticker"] = model("book_ticker", dict(
        common(), seq=IntegerField(), **{c: DoubleField(null=True) for c in table_columns("book_ticker")[8:]}),
        seq_key)

    def stream():
        return {"exchange": CharField(max_length=64), "symbol": CharField(max_length=128),
                "data_type": CharField(max_length=64)}

    class Coverage(Base):
        exchange = CharField(max_length=64)
        symbol = CharField(max_length=128)
        data_type = CharField(max_length=64)
        source = CharField(max_length=8)
        segment = CharField(max_length=64)
        start = BigIntegerField()
        end = BigIntegerField()
        end_reason = CharField(max_length=32, null=True)
        is_open = BooleanField(default=False)
        owner = CharField(max_length=128, null=True)
        updated_at = BigIntegerField()
        # how far the run could have claimed (its claim end) and up to which local time it delivered every
        # line (a complete run: its request end); a quiet tail is closed later from these (schema 2)
        limit_end = BigIntegerField(null=True)
        sealed_until = BigIntegerField(null=True)

        class Meta:
            table_name = "coverage"
            indexes = ((("segment", "exchange", "symbol", "data_type", "source"), True),
                       (("exchange", "symbol", "data_type", "source", "start"), False))

    class GaplessMeta(Base):
        key = CharField(max_length=64, primary_key=True)
        value = TextField()

        class Meta:
            table_name = "gapless_meta"

    def bookkeeping(table, fields, key=None):
        meta = {"table_name": table}
        if key:
            meta.update(primary_key=CompositeKey(*key), without_rowid=without_rowid)
        return type(table.title().replace("_", ""), (Base,), dict(fields, Meta=type("Meta", (), meta)))

    models["dirty_rows"] = bookkeeping("dirty_rows", dict(
        id=AutoField(), **stream(), source=CharField(max_length=8), lo=BigIntegerField(), hi=BigIntegerField()))
    models["dirty_series"] = bookkeeping("dirty_series", dict(
        id=AutoField(), **stream(), lo=BigIntegerField(), hi=BigIntegerField()))
    values = {column: DoubleField(null=True) for column in SERIES_VALUES}
    models["minute_agg"] = bookkeeping("minute_agg", dict(
        **stream(), source=CharField(max_length=8), minute=BigIntegerField(), n=IntegerField(),
        first_ts=BigIntegerField(), last_ts=BigIntegerField(), **values,
        levels=TextField(null=True)),  # deeper book levels (depth > 1) as a JSON list
        ("exchange", "symbol", "data_type", "source", "minute"))
    models["replay_ledger"] = bookkeeping("replay_ledger", dict(
        **stream(), start=BigIntegerField(), end=BigIntegerField(), reason=CharField(max_length=32),
        attempts=IntegerField(default=1), asked_at=BigIntegerField(), asked_end=BigIntegerField(),
        retry_at=BigIntegerField(),
        anchored=BooleanField(default=False)), ("exchange", "symbol", "data_type", "start"))
    models["healing_state"] = bookkeeping("healing_state", dict(
        **stream(), day=BigIntegerField(), asked_at=BigIntegerField(), asked_until=BigIntegerField(),
        reason=CharField(max_length=32), requests=IntegerField(default=0)), ("exchange", "symbol", "data_type", "day"))
    models["minute_series"] = bookkeeping("minute_series", dict(
        **stream(), minute=BigIntegerField(), source=CharField(max_length=8), missing=BooleanField(), **values,
        levels=TextField(null=True),  # deeper book levels (depth > 1) as a JSON list, as in minute_agg
        seq=BigIntegerField(default=0), revision=IntegerField(default=0)),
        ("exchange", "symbol", "data_type", "minute"))
    models["minute_compare"] = bookkeeping("minute_compare", dict(
        **stream(), minute=BigIntegerField(), differs=BooleanField(), difference=DoubleField(),
        column=CharField(max_length=32, null=True)), ("exchange", "symbol", "data_type", "minute"))
    models["stream_status"] = bookkeeping("stream_status", dict(
        **stream(), window_start=BigIntegerField(), window_end=BigIntegerField(), minutes_replay=IntegerField(),
        minutes_live=IntegerField(), minutes_missing=IntegerField(), compared=IntegerField(),
        disagreements=IntegerField(), max_difference=DoubleField(), worst_minute=BigIntegerField(null=True),
        worst_column=CharField(max_length=32, null=True), rebuilt_at=BigIntegerField(),
        error=TextField(null=True)),  # why this stream could not be rebuilt (the others still are)
        ("exchange", "symbol", "data_type"))
    models.update(coverage=Coverage, meta=GaplessMeta)

    def snapshot(depth):
        fields = dict(common(), seq=IntegerField())
        for column in table_columns("book_snapshot_%d" % depth)[8:]:
            fields[column] = DoubleField(null=True)
        return model("book_snapshot_%d" % depth, fields, seq_key)

    return models, snapshot


def upgrade_statements(version, is_sqlite):
    """SQL that brings an existing database from ``version`` to :data:`SCHEMA_VERSION` (new tables are made
    by ``create_tables``; this is what ``create_tables`` cannot do: new columns on existing tables). Rows
    that must change go through :func:`upgrade_rows` after these."""
    statements = []
    if version < 2:
        for column in ("limit_end", "sealed_until"):
            statements.append('ALTER TABLE "coverage" ADD COLUMN "%s" BIGINT' % column)
        if not is_sqlite:
            statements.append('ALTER TABLE "stream_status" ADD COLUMN IF NOT EXISTS "error" TEXT')
        else:
            statements.append('ALTER TABLE "stream_status" ADD COLUMN "error" TEXT')
    if version < 3:
        statements.append('ALTER TABLE "trade" ADD COLUMN "seq" INTEGER')
    if version < 4:
        # minutes published before followers existed: sequence 0, revision 0 (a follower's backlog has them)
        statements.append('ALTER TABLE "minute_series" ADD COLUMN "seq" BIGINT NOT NULL DEFAULT 0')
        statements.append('ALTER TABLE "minute_series" ADD COLUMN "revision" INTEGER NOT NULL DEFAULT 0')
        # deeper book levels were not published before (exports and the picture of book_snapshot_<d> with d > 1
        # failed on them); the upgrade's first pass publishes every stream afresh (dirty_rows)
        statements.append('ALTER TABLE "minute_series" ADD COLUMN "levels" TEXT')
    if version < 5:
        # liquidations and option summaries (issue 19): the minute columns they do not share with other types
        for table in ("minute_agg", "minute_series"):
            for column in SCHEMA_5_VALUES:
                statements.append('ALTER TABLE "%s" ADD COLUMN "%s" DOUBLE PRECISION' % (table, column))
    return statements


# indexes made on every open (after any upgrade added their columns): followers read by sequence; the minute store
# consumes a stream's dirty marks up to an id (a chain's recorder leaves one per stream and write)
INDEX_STATEMENTS = ('CREATE INDEX IF NOT EXISTS "minute_series_seq" ON "minute_series" ("seq")',
                    'CREATE INDEX IF NOT EXISTS "dirty_rows_stream_id" ON "dirty_rows" ("exchange", "symbol", '
                    '"data_type", "source", "id")')


def upgrade_rows(version, db, is_sqlite, existing):
    """Rewrite stored rows from ``version`` to :data:`SCHEMA_VERSION` (after :func:`upgrade_statements`, in
    the same transaction). Returns ``{what: rows changed}``."""
    changed = {}
    if version < 3 and "trade" in existing:
        # id-less trades were keyed by the receiving connection's localTimestamp: key them by content, or
        # the same trades recorded again would be stored a second time under the new key
        changed["id-less trade keys"] = rewrite_fallback_keys(db, is_sqlite)
    return changed
