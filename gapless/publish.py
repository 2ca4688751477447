"""Publishing the stitched series into ``minute_series`` incrementally, and exporting it.

A pass recomputes only what can have changed since the last one: the minutes whose aggregates or
coverage changed (``dirty_series``, written by the minute store), the minutes whose carried state
depends on those (up to the next minute with data of its own), and the minutes that entered the
window; minutes that left the window are deleted. Every stream's changes, per-minute replay/live
comparison (``minute_compare``) and ``stream_status`` row are written in ONE transaction, so a reader
sees the series before or after a pass, never half of one.

A stream that fails to publish (a savepoint inside that transaction) is logged and reported in
``stream_status.error``; the others are published all the same.
"""
import logging
import time
from dataclasses import dataclass, field

import pandas as pd

from .contract import clip_to_life
from .datatypes import parse_data_type
from .intervals import merge
from .minutes import CHUNK_US, ID_CHUNK
from .schema import SERIES_VALUES
from .published import export_frames, published_frames
from .sequence import PublishSequence
from .series import Reader
from .stitch import Comparison, stitch_values
from .timeutil import MINUTE_US, US, ceil_minute, floor_minute, iso

log = logging.getLogger(__name__)

SERIES_COLUMNS = ["exchange", "symbol", "data_type", "minute", "source", "missing"] + list(SERIES_VALUES) + [
    "levels", "seq", "revision"]
STATUS_COLUMNS = ["exchange", "symbol", "data_type", "window_start", "window_end", "minutes_replay", "minutes_live",
                  "minutes_missing", "compared", "disagreements", "max_difference", "worst_minute", "worst_column",
                  "rebuilt_at", "error"]
COMPARE_COLUMNS = ["exchange", "symbol", "data_type", "minute", "differs", "difference", "column"]


@dataclass
class StreamResult:
    """One stream after a pass: minutes by source over the window, the comparison, or the error."""

    minutes: dict = field(default_factory=dict)
    comparison: Comparison = field(default_factory=Comparison)
    published: int = 0
    events: int = 0  # minutes published new or changed (each took a publish sequence number)
    error: str = None


@dataclass
class RebuildReport:
    """Result of one publishing pass."""

    streams: dict = field(default_factory=dict)  # {(exchange, symbol, data_type): StreamResult}
    seconds: float = 0.0
    published_seq: int = None  # the database's publish sequence after the pass (see gapless.sequence)

    @property
    def comparisons(self):
        """``{(symbol, data_type): Comparison}`` (the exchange left out when there is only one)."""
        return {_short(self.streams, key): r.comparison for key, r in self.streams.items()}

    @property
    def missing(self):
        """Missing minutes over every stream's window."""
        return sum(r.minutes.get("missing", 0) for r in self.streams.values())

    @property
    def gapless(self):
        """True when no minute of any stream is missing and every stream was published."""
        return self.missing == 0 and not any(r.error for r in self.streams.values())


def _short(streams, key):
    return key[1:] if len({k[0] for k in streams}) == 1 else key


def publish(storage, streams, start, end, now_us=None, full=False, errors=None):
    """Publish ``streams`` (``[(exchange, symbol, data_type)]``) over the window ``[start, end)``.

    Only what changed is recomputed (``full`` recomputes the whole window). ``errors``: streams whose minute
    store could not be refreshed (they keep what was published, marked with the error). Returns a
    RebuildReport.

    The whole pass is ONE write transaction, read from its own consistent view (the recorder keeps writing
    meanwhile: a claim must never be read without the rows it claims), so a reader sees every stream
    before the pass or every stream after it. Each stream is a savepoint inside it: a stream that fails
    is rolled back alone, reported, and the others are published. Work goes in chunks of at most
    :data:`CHUNK_US`, so memory does not grow with the window.
    """
    began = time.monotonic()
    start, end = floor_minute(start), ceil_minute(end)
    now_us = now_us or int(time.time() * US)
    streams = [tuple(s) for s in streams]
    report = RebuildReport()
    try:
        with storage.publish_transaction(), Reader(storage, streams) as reader:
            sequence = PublishSequence(storage)
            for key in streams:
                error = (errors or {}).get(key)
                if error is None:
                    mark = sequence.mark()
                    try:
                        with storage.db.atomic():  # a savepoint: this stream alone is undone if it fails
                            report.streams[key] = _publish_stream(storage, reader, key, start, end, now_us, full,
                                                                  sequence)
                        continue
                    except Exception as exc:  # one stream's failure must not keep the others from being published
                        log.exception("publishing %s %s %s failed", *key)
                        error = "%s: %s" % (exc.__class__.__name__, exc)
                        sequence.undo(mark)
                report.streams[key] = _failed(error, start, end)
                with storage.db.atomic():
                    _record_error(storage, key, start, end, now_us, error)
            sequence.finish()
            report.published_seq = sequence.value
    except Exception as exc:  # the pass as a whole failed (e.g. its commit): nothing of it was published
        log.exception("publishing the pass failed")
        error = "%s: %s" % (exc.__class__.__name__, exc)
        for key in streams:
            report.streams[key] = _failed(error, start, end)
            try:
                with storage.write_transaction():
                    _record_error(storage, key, start, end, now_us, error)
            except Exception:
                log.exception("could not record the publishing error of %s", key)
    report.seconds = time.monotonic() - began
    return report


class _Statements:
    """The publisher's statements on one stream, as parameterised SQL built once per database kind (building
    them with the ORM on every pass cost more than running them, with many streams)."""

    _cache = {}

    def __new__(cls, storage):
        kind = "sqlite" if storage.is_sqlite else "postgresql"
        if kind not in cls._cache:
            cls._cache[kind] = super().__new__(cls)
            cls._cache[kind]._build(storage.mark)
        return cls._cache[kind]

    def _build(self, m):
        stream = '"exchange" = {m} AND "symbol" = {m} AND "data_type" = {m}'.format(m=m)
        inside = stream + ' AND "minute" >= {m} AND "minute" < {m}'.format(m=m)
        outside = stream + ' AND ("minute" < {m} OR "minute" >= {m})'.format(m=m)
        self.status = ('SELECT "window_start", "window_end", "minutes_replay", "minutes_live", "minutes_missing", '
                       '"compared", "disagreements", "max_difference", "worst_minute", "worst_column" '
                       'FROM "stream_status" WHERE ' + stream)
        self.marks = 'SELECT "id", "lo", "hi" FROM "dirty_series" WHERE ' + stream
        self.sources = {part: 'SELECT "source", COUNT(*) FROM "minute_series" WHERE %s GROUP BY "source"' % where
                        for part, where in (("inside", inside), ("outside", outside), ("all", stream))}
        self.compared = {part: 'SELECT COUNT(*), SUM(CASE WHEN "differs" THEN 1 ELSE 0 END) FROM "minute_compare" '
                               'WHERE ' + where for part, where in (("inside", inside), ("outside", outside))}
        self.delete = {(table, part): 'DELETE FROM "%s" WHERE %s' % (table, where)
                       for table in ("minute_series", "minute_compare")
                       for part, where in (("inside", inside), ("outside", outside))}
        self.worst = ('SELECT "minute", "difference", "column" FROM "minute_compare" WHERE ' + stream +
                      ' AND "differs" ORDER BY "difference" DESC, "minute" LIMIT 1')
        self.upsert = ('INSERT INTO "stream_status" (%s) VALUES (%s) ON CONFLICT ("exchange", "symbol", "data_type") '
                       'DO UPDATE SET %s' % (", ".join('"%s"' % c for c in STATUS_COLUMNS),
                                             ", ".join([m] * len(STATUS_COLUMNS)),
                                             ", ".join('"%s" = excluded."%s"' % (c, c) for c in STATUS_COLUMNS[3:])))
        self.mark = m

    def consume(self, n):
        """DELETE of ``n`` dirty marks by id."""
        return 'DELETE FROM "dirty_series" WHERE "id" IN (%s)' % ", ".join([self.mark] * n)


def _failed(error, start, end):
    """The result of a stream that could not be published: every minute of the window counts as missing (what
    was published before is stale; nothing may be claimed from it)."""
    return StreamResult(error=error, minutes={"replay": 0, "live": 0, "missing": (end - start) // MINUTE_US})


def _publish_stream(storage, reader, key, start, end, now_us, full, sequence):
    """Recompute and write one stream's changed minutes, its comparison and status; consume its dirty marks.

    The status counts are kept incrementally (the previous counts, minus what was deleted, plus what was
    written), so a pass costs what changed, not the window; a pass over the whole window counts afresh.
    Each new or changed minute takes the next publish sequence number (``sequence``).
    """
    exchange, symbol, name = key
    data_type = parse_data_type(name)
    sql, run = _Statements(storage), storage.db.execute_sql
    previous = run(sql.status, key).fetchone()
    end = _stream_end(reader, key, end, previous[1] if previous else None, now_us)
    start, end = clip_to_life(exchange, symbol, start, end)  # an option's minutes end at its expiration
    marks = run(sql.marks, key).fetchall()
    if full or previous is None or previous[1] <= start or previous[0] >= end:
        ranges = [(start, end)]
    else:
        ranges = [(lo, hi) for _, lo, hi in marks]
        if start < previous[0]:
            ranges.append((start, previous[0]))
        if end > previous[1]:
            ranges.append((previous[1], end))
        ranges = [_carry_extent(reader, key, data_type, lo, hi, end) for lo, hi in ranges]
    ranges = merge([(max(lo, start), min(hi, end)) for lo, hi in ranges])
    whole = ranges == [(start, end)]
    counts = dict.fromkeys(("replay", "live", "missing"), 0)
    compared = [0, 0]
    worst = None  # (difference, minute, column) of the worst disagreement kept
    if not whole:
        counts.update(zip(("replay", "live", "missing"), previous[2:5]))
        compared = [previous[5], previous[6]]
        if previous[8] is not None:
            worst = (previous[7], previous[8], previous[9])
    old = {}  # the published minutes about to be replaced: unchanged ones keep their seq and revision
    for lo, hi in ranges:
        old.update(sequence.old_rows(key, lo, hi))
    gone = [("outside", (start, end))] + [("inside", r) for r in ranges]
    for part, (lo, hi) in gone:
        if not whole:
            for source, n in run(sql.sources[part], key + (lo, hi)).fetchall():
                counts[source] -= n
            n, bad = run(sql.compared[part], key + (lo, hi)).fetchone()
            compared[0] -= n or 0
            compared[1] -= bad or 0
            if worst and (lo <= worst[1] < hi) == (part == "inside"):
                worst = False  # the worst minute was replaced: look it up again below
        run(sql.delete[("minute_series", part)], key + (lo, hi))
        run(sql.delete[("minute_compare", part)], key + (lo, hi))
    published = changed = 0
    for lo, hi in ranges:
        for a in range(lo, hi, CHUNK_US):
            stitched = stitch_values(reader, exchange, symbol, data_type, a, min(hi, a + CHUNK_US))
            rows, events = sequence.stamp(_series_rows(exchange, symbol, name, stitched), old)
            storage.bulk_insert(storage.models["minute_series"], SERIES_COLUMNS, rows)
            replay, live = stitched.known["replay"], stitched.known["live"]
            counts["replay"] += int(replay.sum())
            counts["live"] += int((live & ~replay).sum())
            counts["missing"] += int((~(replay | live)).sum())
            n = len(stitched.compared)
            differences = list(zip([exchange] * n, [symbol] * n, [name] * n,
                                   stitched.minutes[stitched.compared].tolist(), stitched.differs.tolist(),
                                   stitched.difference.tolist(), stitched.column.tolist()))
            storage.bulk_insert(storage.models["minute_compare"], COMPARE_COLUMNS, differences)
            compared[0] += len(differences)
            for row in differences:
                if row[4]:
                    compared[1] += 1
                    if worst is not False and (worst is None or (-row[5], row[3]) < (-worst[0], worst[1])):
                        worst = (row[5], row[3], row[6])
            published += len(rows)
            changed += events
    if whole:  # counted afresh: everything of the stream was just written
        worst = worst or None
    elif worst is False:
        found = run(sql.worst, key).fetchone()
        worst = (found[1], found[0], found[2]) if found else None
    comparison = Comparison(compared=compared[0], disagreements=compared[1])
    if worst and compared[1]:
        comparison.max_difference = float(worst[0])
        comparison.worst_minute = pd.Timestamp(worst[1] * 1000, tz="UTC")
        comparison.worst_column = worst[2]
    result = StreamResult(minutes=counts, comparison=comparison, published=published, events=changed)
    _upsert_status(storage, key, start, end, now_us, result)
    ids = [m[0] for m in marks]
    for i in range(0, len(ids), ID_CHUNK):
        chunk = ids[i:i + ID_CHUNK]
        run(sql.consume(len(chunk)), chunk)
    return result


def _stream_end(reader, key, end, previous_end, now_us):
    """Where one stream's published minutes end: the window's end, or later up to the last whole minute its
    coverage already claims.

    A minute that replay or live covers whole is final at once. It is published then, not when the window
    (which waits for the latency margin of every stream) reaches it: followers get it within seconds of
    its end. A minute already published is never taken back, so the end never moves back while the clock
    moves forward.
    """
    last = floor_minute(now_us)
    claimed = max((b for source in ("replay", "live") for _, b in reader.covered(*key, source)), default=end)
    stream_end = max(end, min(floor_minute(claimed), last))
    if previous_end is not None and end <= previous_end <= last:
        stream_end = max(stream_end, previous_end)
    return stream_end


def _carry_extent(reader, key, data_type, lo, hi, end):
    """``[lo, hi)`` widened to every minute whose carried state may depend on it.

    A quiet minute carries the state of the last minute with data of its own, and only inside one coverage
    interval of its source. So a change reaches, in each source, up to that source's next minute with data
    of its own, and never past the end of the source's interval that holds ``hi``. A ticker minute carries
    every field it did not change itself: a ticker change may reach the end of that interval.
    """
    reach = hi
    if data_type.family == "liquidation":
        return lo, min(reach, end)  # nothing carries from one liquidation minute to the next
    for source in ("replay", "live"):
        holding = [b for a, b in reader.covered(key[0], key[1], key[2], source) if a <= hi < b]
        if not holding:
            continue  # no interval of this source goes on past the change: nothing carries from it
        block_end = min(ceil_minute(holding[0]), end)
        following = None if data_type.family == "derivative_ticker" else \
            reader.store.first_at_or_after((key[0], key[1], key[2], source), hi, block_end)
        reach = max(reach, following + MINUTE_US if following is not None else block_end)
    return lo, min(reach, end)


def _series_rows(exchange, symbol, name, stitched):
    """Row tuples of ``minute_series`` (without seq and revision) from a stream's stitched values."""
    n = len(stitched.values)
    columns = stitched.columns
    by_column = stitched.values.T.tolist()
    values = []
    for column in SERIES_VALUES:
        if column in columns:
            values.append([None if v != v else v for v in by_column[columns.index(column)]])
        else:
            values.append([None] * n)
    deeper = [i for i, c in enumerate(columns) if c.startswith(("bids_", "asks_"))]
    levels = [None] * n
    if deeper:
        import orjson
        levels = [orjson.dumps([None if v != v else v for v in row]).decode()
                  for row in stitched.values[:, deeper].tolist()]
    return list(zip([exchange] * n, [symbol] * n, [name] * n, stitched.minutes.tolist(), stitched.source.tolist(),
                    stitched.missing.tolist(), *values, levels))


def _upsert_status(storage, key, start, end, now_us, result, error=None):
    c = result.comparison
    worst = int(c.worst_minute.value // 1000) if c.worst_minute is not None else None
    values = tuple(key) + (start, end, result.minutes.get("replay", 0), result.minutes.get("live", 0),
                           result.minutes.get("missing", 0), c.compared, c.disagreements, c.max_difference, worst,
                           c.worst_column, now_us, error)
    # an upsert both SQLite and PostgreSQL understand (REPLACE is SQLite only), as SQL text built once
    storage.db.execute_sql(_Statements(storage).upsert, values)


def _record_error(storage, key, start, end, now_us, error):
    """Mark a stream's status with its error, keeping the last good counts (the error says they are stale).
    Runs inside the caller's transaction."""
    status = storage.models["stream_status"]
    previous = status.get_or_none((status.exchange == key[0]) & (status.symbol == key[1])
                                  & (status.data_type == key[2]))
    result = StreamResult(error=error)
    if previous is not None:
        result.minutes = {"replay": previous.minutes_replay, "live": previous.minutes_live,
                          "missing": previous.minutes_missing}
    _upsert_status(storage, key, start, end, now_us, result, error=error)


def rebuild(storage, streams, start, end, export=None, now_us=None, full=False):
    """Refresh the minute store, publish the streams' series over ``[start, end)``, and export it if asked.

    ``streams``: stream groups (:class:`~gapless.streams.StreamGroup`, ``"exchange:symbols:types;..."`` text
    or ``(exchange, symbols, data_types)`` triples), or ``[(exchange, symbol, data_type)]`` streams.
    """
    from .minutes import MinuteStore
    streams = _stream_list(streams)
    with storage.publisher_lock():  # services sharing a PostgreSQL database publish in turn
        refreshed = MinuteStore(storage).refresh(streams)
        report = publish(storage, streams, start, end, now_us=now_us, full=full, errors=refreshed.errors)
    if export:
        export_frames(published_frames(storage, streams, floor_minute(start), ceil_minute(end)),
                      streams[0][0] if streams else None, export)
    for key, result in report.streams.items():
        c = result.comparison
        if c.disagreements:
            log.warning("%s %s %s: replay and live disagree on %d of %d minute(s); largest difference %.10g "
                        "(%s at %s)", *key, c.disagreements, c.compared, c.max_difference, c.worst_column,
                        iso(int(c.worst_minute.value // 1000)) if c.worst_minute is not None else "-")
    return report


def _stream_list(streams):
    """``[(exchange, symbol, data_type name)]`` from groups or streams (see :func:`rebuild`)."""
    from .streams import StreamGroup, parse_streams
    grouped = lambda s: (isinstance(s, StreamGroup) or not isinstance(s[1], str)  # noqa: E731
                         or not isinstance(s[2], str) or "," in s[1] + s[2])
    if isinstance(streams, (str, StreamGroup)) or any(grouped(s) for s in streams):
        return [s for g in parse_streams(streams, "streams") for s in g.streams]
    return [(exchange, symbol, parse_data_type(d).name if isinstance(d, str) else d.name)
            for exchange, symbol, d in streams]
