"""Following the published series: every final minute from a past minute through now and on, with corrections.

A follower reads only the database: the service that publishes may run in another process or on another
host. It yields :class:`MinuteEvent` objects:

1. the backlog: every published minute from ``since`` on, in minute order, with every stream of a minute
   before the next minute. It is a snapshot as of publish sequence N, read page by page. A minute that
   changes while the backlog is read comes after the marker, with its new revision;
2. one :class:`CaughtUp` marker carrying N;
3. from then on, each minute as it is published, in publish-sequence order: a new minute with revision
   0, a changed minute (its source or any value) with a higher revision.

``resume=SEQ`` skips the backlog and delivers, in sequence order, every minute published or changed
after SEQ (its last revision only), then the marker, then what comes next. Resume from the marker's
seq or from any event after it. The backlog is in minute order, not sequence order, so a follower
stopped before the marker starts again with ``since``.

Waking up: on PostgreSQL, ``LISTEN gapless_publish`` (each pass notifies at commit); on SQLite, a
read of the sequence every ``poll`` seconds (0.5 s by default). Both are also read at least every few
seconds, so a lost notice costs only a short delay.
"""
import logging
import math
import time
from dataclasses import dataclass, field

import pandas as pd

from .aggregate import value_columns
from .contract import contract_values
from .follower_reasons import GapReasons
from .published import deeper_levels
from .schema import SERIES_VALUES
from .sequence import NOTIFY_CHANNEL, read_published_seq
from .timeutil import MINUTE_US, floor_minute

log = logging.getLogger(__name__)

PAGE_US = 24 * 60 * MINUTE_US  # the backlog is read a day of minutes at a time
BATCH = 5000  # at most this many events per read after the marker
SAFETY_POLL_S = 5.0  # PostgreSQL: read the sequence at least this often even without a notice
_COLUMNS = ("seq", "exchange", "symbol", "data_type", "minute", "source", "revision", "missing") + tuple(
    SERIES_VALUES) + ("levels",)


@dataclass(frozen=True)
class MinuteEvent:
    """One published minute of one stream: new (revision 0) or changed (a higher revision)."""

    seq: int
    exchange: str
    symbol: str
    data_type: str
    minute: pd.Timestamp  # the minute's start, UTC
    source: str  # "replay", "live" or "missing"
    revision: int
    values: dict = field(default_factory=dict)  # the stream's value columns, named as in series(); None if unknown
    reason: str = None  # why the minute is missing (a gap reason of gapless.status), else None

    def as_dict(self):
        """The JSON-line form: seq, exchange, symbol, data_type, minute (ISO UTC), source, revision, values,
        and reason for a missing minute."""
        line = {"seq": self.seq, "exchange": self.exchange, "symbol": self.symbol, "data_type": self.data_type,
                "minute": self.minute.strftime("%Y-%m-%dT%H:%M:%SZ"), "source": self.source,
                "revision": self.revision}
        line.update(self.values)
        if self.source == "missing":
            line["reason"] = self.reason
        return line


@dataclass(frozen=True)
class CaughtUp:
    """Everything published up to ``seq`` has been delivered; what follows is published after it."""

    seq: int

    def as_dict(self):
        """The JSON-line form: ``{"event": "caught_up", "seq": N}``."""
        return {"event": "caught_up", "seq": self.seq}


class Follower:
    """An iterator over the events of some streams of one database (see the module docstring).

    ``streams``: ``[(exchange, symbol, data_type)]``, or None for every published stream. ``since``: µs (the
    backlog starts at its minute); ``resume``: a seq. ``timeout``: stop after that many seconds without an
    event (None: never). ``stop``: a :class:`threading.Event` that ends the iteration when set. ``now``: the
    clock (µs) used for gap reasons.
    """

    def __init__(self, storage, streams=None, since=None, resume=None, timeout=None, stop=None, poll=0.5,
                 now=None, horizons=None):
        if since is None and resume is None:
            raise ValueError("follow: give since (a time) or resume (a seq)")
        self.storage = storage
        self.streams = {tuple(s) for s in streams} if streams else None
        self.since = floor_minute(since) if since is not None else None
        self.resume = resume
        self.timeout = timeout
        self.stop = stop
        self.poll = poll
        self.position = None  # the seq the follower has delivered everything up to (after the marker)
        self._reasons = GapReasons(storage, now or (lambda: int(time.time() * 1e6)), horizons)
        self._columns = {}
        self._waiter = None
        self._sql = {}

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self):
        try:
            if self.resume is None:
                upto = read_published_seq(self.storage)
                yield from self._backlog(upto)
                self.position = upto
            else:
                self.position = int(self.resume)
                while True:
                    events = self._after(self.position)
                    if not events:
                        break
                    yield from self._deliver(events)
            yield CaughtUp(self.position)
            yield from self._live()
        finally:
            self.close()

    def close(self):
        """Release the notice connection (PostgreSQL)."""
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None

    def _backlog(self, upto):
        first = self._first_minute(upto)
        if first is None:
            return
        start = max(self.since, first)
        last = self._last_minute(upto)
        for lo in range(start, last + MINUTE_US, PAGE_US):
            self._reasons.forget()
            rows = self._query("page", (lo, lo + PAGE_US, upto))
            yield from (self._event(row) for row in rows if self._wanted(row))

    def _live(self):
        self._waiter = _waiter(self.storage, self.poll)
        quiet_since = time.monotonic()
        while not self._stopped():
            events = self._after(self.position)
            if events:
                yield from self._deliver(events)
                quiet_since = time.monotonic()
                continue
            limit = None
            if self.timeout is not None:
                limit = self.timeout - (time.monotonic() - quiet_since)
                if limit <= 0:
                    return
            self._waiter.wait(self.position, limit, self.stop)

    def _deliver(self, events):
        for event in events:
            self.position = event.seq
            yield event

    def _stopped(self):
        return self.stop is not None and self.stop.is_set()

    # -- reading --------------------------------------------------------------------------------
    def _after(self, seq):
        """Events published after ``seq``, in sequence order (at most :data:`BATCH`)."""
        self._reasons.forget()
        while True:
            rows = self._query("after", (seq,))
            events = [self._event(row) for row in rows if self._wanted(row)]
            if events or not rows:
                return events
            # a batch of other streams' minutes only: move past them, or we would read them again
            seq = self.position = rows[-1][0]

    def _query(self, name, params):
        if not self._sql:
            m = self.storage.mark
            columns = ", ".join('"%s"' % c for c in _COLUMNS)
            self._sql["page"] = ('SELECT {c} FROM "minute_series" WHERE "minute" >= {m} AND "minute" < {m} AND '
                                 '"seq" <= {m} ORDER BY "minute", "exchange", "symbol", "data_type"'
                                 .format(c=columns, m=m))
            self._sql["after"] = ('SELECT {c} FROM "minute_series" WHERE "seq" > {m} ORDER BY "seq" LIMIT {n}'
                                  .format(c=columns, m=m, n=BATCH))
            self._sql["first"] = 'SELECT MIN("minute") FROM "minute_series" WHERE "seq" <= {m}'.format(m=m)
            self._sql["last"] = 'SELECT MAX("minute") FROM "minute_series" WHERE "seq" <= {m}'.format(m=m)
        if not self.storage.has_table("minute_series"):
            return []
        return self.storage.db.execute_sql(self._sql[name], params).fetchall()

    def _first_minute(self, upto):
        rows = self._query("first", (upto,))
        return rows[0][0] if rows and rows[0][0] is not None else None

    def _last_minute(self, upto):
        return self._query("last", (upto,))[0][0]

    def _wanted(self, row):
        return self.streams is None or (row[1], row[2], row[3]) in self.streams

    def _event(self, row):
        seq, exchange, symbol, data_type, minute, source, revision, missing = row[:8]
        values = dict(zip(SERIES_VALUES, row[8:-1]))
        values.update(deeper_levels(row[-1], data_type))
        columns = self._columns.get(data_type)
        if columns is None:
            columns = self._columns[data_type] = [c for c in value_columns(data_type) if c in values]
        picked = {c: (None if values[c] is None or (isinstance(values[c], float) and math.isnan(values[c]))
                      else values[c]) for c in columns}
        if data_type == "option_summary" and source != "missing":
            picked.update(contract_values(exchange, symbol))
        reason = self._reasons.reason((exchange, symbol, data_type), minute) if source == "missing" else None
        return MinuteEvent(seq=seq, exchange=exchange, symbol=symbol, data_type=data_type,
                           minute=pd.Timestamp(minute * 1000, tz="UTC"), source=source, revision=revision,
                           values=picked, reason=reason)


class _SequencePoll:
    """SQLite: wait by reading the publish sequence every ``poll`` seconds (one read of one row)."""

    def __init__(self, storage, poll):
        self.storage = storage
        self.poll = poll

    def wait(self, position, limit, stop):
        """Return once the sequence passed ``position``, ``limit`` seconds passed (None: no limit) or ``stop``."""
        deadline = None if limit is None else time.monotonic() + limit
        while read_published_seq(self.storage) <= position:
            step = self.poll if deadline is None else min(self.poll, deadline - time.monotonic())
            if step <= 0 or _pause(stop, step):
                return

    def close(self):
        """Nothing to release (it reads through the follower's own connection)."""


class _Notices:
    """PostgreSQL: wait for ``NOTIFY gapless_publish`` on a connection of its own (autocommit, LISTEN)."""

    def __init__(self, storage):
        import psycopg
        db = storage.db
        self.storage = storage
        self.connection = psycopg.connect(dbname=db.database, autocommit=True, **db.connect_params)
        self.connection.execute("LISTEN %s" % NOTIFY_CHANNEL)

    def wait(self, position, limit, stop):
        """Return at a notice, after ``limit`` seconds (None: :data:`SAFETY_POLL_S`), or soon after ``stop``."""
        if read_published_seq(self.storage) > position:
            return
        deadline = time.monotonic() + (SAFETY_POLL_S if limit is None else min(limit, SAFETY_POLL_S))
        while not (stop is not None and stop.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # slices of a second: a stop request is seen soon; a notice wakes us at once
            for _ in self.connection.notifies(timeout=min(left, 1.0), stop_after=1):
                return

    def close(self):
        try:
            self.connection.close()
        except Exception:  # closing a broken connection must not hide why we stop
            log.debug("closing the LISTEN connection failed", exc_info=True)


def _pause(stop, seconds):
    """Sleep ``seconds``; True if ``stop`` was set meanwhile."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


def _waiter(storage, poll):
    return _SequencePoll(storage, poll) if storage.is_sqlite else _Notices(storage)


def follow(streams=None, database_url=None, since=None, resume=None, timeout=None, poll=0.5, stop=None):
    """Follow a database a service writes (reader only): :class:`MinuteEvent` objects and one :class:`CaughtUp`.

    ``streams``: ``"exchange:symbols:data_types;..."`` text or ``(exchange, symbols, data_types)`` triples
    (default: ``GAPLESS_*`` settings, or every published stream when those name none). ``database_url``:
    default ``GAPLESS_DATABASE_URL``. ``since``: a time (datetime, ISO text, µs) to start the backlog at, or
    ``resume``: the seq to continue after. ``timeout``: stop after that many seconds without an event.
    ``stop``: a :class:`threading.Event` that ends the iteration. Blocks, for synchronous code.
    """
    from .config import load_settings
    from .storage import Storage
    from .streams import parse_streams
    if database_url is None or streams is None:
        settings = load_settings(database_url=database_url)
        database_url = database_url or settings.database_url
        streams = streams if streams is not None else settings.streams
    keys = [s for g in parse_streams(streams, "streams") for s in g.streams] if streams else None
    storage = Storage(database_url, create=False)
    try:
        yield from Follower(storage, keys, since=None if since is None else since_us(since), resume=resume,
                            timeout=timeout, stop=stop, poll=poll)
    finally:
        storage.close()


def since_us(value):
    """µs of a ``since`` given as µs, a datetime, a pandas Timestamp or ISO-8601 UTC text."""
    from .timeutil import parse_time_arg, to_us
    if isinstance(value, str):
        return parse_time_arg(value, "since")
    if isinstance(value, pd.Timestamp):
        return int(value.tz_localize("UTC").value // 1000) if value.tzinfo is None else int(value.value // 1000)
    return to_us(value)
