"""The replay ledger: history that was asked for and did not come back covered, why, and when to ask again.

After every complete replay run, what it asked for and did not claim is recorded per stream (see
:meth:`gapless.claims.ClaimTracker.unclaimed`). The planner does not ask for a recorded range again until
its entry is due, so no range is downloaded over and over without new evidence:

* ``history_outage``: tardis' own recording has a hole (a ``disconnect`` in the replay); asked once more
  after the day is over (a later upload may fill it), with a fresh filter set (a minute the stream's filter set
  holds empty just after the hole's end looks like more hole), then not again for :data:`OUTAGE_GIVE_UP_US`;
* ``unproven_start``: nothing proved the history recorder up at the range's start (no line in the
  look-behind); asked again at once when the history before it becomes covered (the start is then
  anchored), else with exponential backoff;
* ``quiet_tail``: a sampled stream's last interval(s) could not be proven complete (the sample comes with
  the next event); at the frontier of history, asked again as soon as a request can reach past where
  the last one ended (the next pass), else with backoff, each time reaching further past its end;
* ``no_data``: the stream sent nothing at all (an unknown symbol or a silent market); backoff;
* ``history_cached_empty``: the run sent nothing in a minute that a fresh filter set has data for
  (tardis-machine's cache holds the minute empty for the stream's filter set, see :mod:`gapless.silence`):
  never held back; whatever request asks its range again gets a filter set of its own
  (``ReplayRequest.fresh``); for a book-derived stream the entry reaches the end of the day (its book is
  wrong after the minute in that filter set), so the day is asked fresh until replay covers all of it;
* ``unverified_quiet``: a silent minute that could not be checked; backoff.

Backoff doubles from :data:`BACKOFF_BASE_US` up to :data:`BACKOFF_CAP_US`. An entry counts the attempts
of the entries of the same stream and reason it overlaps or touches (a window that slides on would
otherwise start every range afresh and ask a silent stream's whole lookback every few minutes). An entry is
dropped once replay covers its range.

:class:`RequestMemory` is the last guard: the service never sends the very same replay request again sooner
than the backoff allows, whatever the reason it was planned.
"""
import logging

import orjson

from .intervals import merge, subtract
from .timeutil import DAY_US, MINUTE_US, ceil_minute, floor_day, floor_minute, iso

log = logging.getLogger(__name__)

BACKOFF_BASE_US = 2 * MINUTE_US
BACKOFF_CAP_US = 6 * 60 * MINUTE_US
OUTAGE_GRACE_US = 60 * MINUTE_US  # after the day is over, before asking for a history outage once more
OUTAGE_GIVE_UP_US = 30 * DAY_US
TAIL_REACH_US = 15 * MINUTE_US  # the first retry of a quiet tail reaches this far past it, then doubles
REASONS = ("history_outage", "unproven_start", "quiet_tail", "no_data", "history_cached_empty", "unverified_quiet")


def backoff(attempts):
    """The wait after ``attempts`` unsuccessful asks."""
    return min(BACKOFF_CAP_US, BACKOFF_BASE_US * 2 ** max(0, attempts - 1))


def next_ask(reason, attempts, start, now_us):
    """When to ask for an entry's range again."""
    if reason == "history_outage":
        day_over = floor_day(start) + DAY_US + OUTAGE_GRACE_US
        if attempts <= 1 and now_us < day_over:
            return day_over
        return now_us + OUTAGE_GIVE_UP_US
    if reason == "history_cached_empty":
        # the stream's filter set holds it empty for good: asked again at once, with a fresh one
        return now_us if attempts <= 1 else now_us + backoff(attempts - 1)
    return now_us + backoff(attempts)


def tail_reach(attempts):
    """How far past a quiet tail's end its retry asks (doubling with every attempt)."""
    return TAIL_REACH_US * 2 ** max(0, attempts - 1)


def entries(storage, exchange, symbol=None, data_type=None):
    """Ledger entries (dicts) of an exchange, optionally of one stream."""
    if not storage.has_table("replay_ledger"):
        return []
    model = storage.models["replay_ledger"]
    query = model.select().where(model.exchange == exchange)
    if symbol is not None:
        query = query.where(model.symbol == symbol)
    if data_type is not None:
        query = query.where(model.data_type == data_type)
    return list(query.order_by(model.start).dicts())


def entries_by_stream(storage, exchange):
    """The ledger entries of an exchange, ``{(symbol, data_type): [entry, ...]}`` (ordered by start), in one read."""
    by_stream = {}
    for e in entries(storage, exchange):
        by_stream.setdefault((e["symbol"], e["data_type"]), []).append(e)
    return by_stream


def record(storage, exchange, unclaimed, now_us, asked_end, anchored=False):
    """Record what a complete run did not claim: ``[(symbol, data_type, start, end, reason)]``.

    ``asked_end`` is the end the run could have claimed (its claim end).

    An entry counts one more attempt than the entries of the same stream and reason it overlaps or touches
    (entries recorded earlier in the same call included). One read and one batch of writes however many entries:
    a chain of 500 options leaves 500 quiet tails every pass.
    """
    if not unclaimed:
        return
    model = storage.models["replay_ledger"]
    streams = {(symbol, data_type) for symbol, data_type, *_ in unclaimed}
    with storage.write_transaction():
        # (symbol, data_type) -> {start: entry}: what the database holds, updated as we go
        known = {stream: {e["start"]: e for e in stream_entries}
                 for stream, stream_entries in entries_by_stream(storage, exchange).items() if stream in streams}
        stored = {(s, d, a) for (s, d), by_start in known.items() for a in by_start}
        written = {}
        for symbol, data_type, start, end, reason in unclaimed:
            by_start = known.setdefault((symbol, data_type), {})
            old = by_start.get(start)
            # a history outage is its own hole (asked again once after its day); the backoff reasons count the
            # attempts of what they overlap
            if reason in ("history_outage", "history_cached_empty"):
                before = [e["attempts"] for e in by_start.values() if e["reason"] == reason and e["start"] == start]
            else:
                before = [e["attempts"] for e in by_start.values()
                          if e["reason"] == reason and e["start"] <= end and e["end"] >= start]
            attempts = max(before) + 1 if before else (old["attempts"] + 1 if old is not None else 1)
            entry = dict(exchange=exchange, symbol=symbol, data_type=data_type, start=start, end=end, reason=reason,
                         attempts=attempts, asked_at=now_us, asked_end=asked_end,
                         retry_at=next_ask(reason, attempts, start, now_us), anchored=bool(anchored))
            by_start[start] = written[(symbol, data_type, start)] = entry
            log.debug("%s %s %s [%s, %s) came back unclaimed (%s, attempt %d)", exchange, symbol, data_type,
                      iso(start), iso(end), reason, attempts)
        for key, entry in written.items():
            if key in stored:
                symbol, data_type, start = key
                model.update(**{k: v for k, v in entry.items() if k not in ("exchange", "symbol", "data_type",
                                                                            "start")}).where(
                    (model.exchange == exchange) & (model.symbol == symbol) & (model.data_type == data_type)
                    & (model.start == start)).execute()
        fresh = [entry for key, entry in written.items() if key not in stored]
        for i in range(0, len(fresh), 100):
            model.insert_many(fresh[i:i + 100]).execute()
    _log_recorded(exchange, list(written.values()))


def _log_recorded(exchange, recorded):
    """One line per reason, whatever the number of streams (each entry is logged at DEBUG)."""
    by_reason = {}
    for e in recorded:
        by_reason.setdefault(e["reason"], []).append(e)
    for reason, group in by_reason.items():
        first = group[0]
        retry = min(e["retry_at"] for e in group)
        log.info("%s: %d range(s) came back unclaimed (%s), e.g. %s %s [%s, %s) attempt %d; asking again after %s",
                 exchange, len(group), reason, first["symbol"], first["data_type"], iso(first["start"]),
                 iso(first["end"]), first["attempts"], iso(retry) if retry < 2 ** 62 else "never")


def forget_covered(storage, exchange, streams, covered):
    """Drop the entries of ``streams`` (``{(symbol, data_type)}``) whose range replay now covers; ``covered(symbol,
    data_type)`` gives a stream's replay coverage (asked only of streams with entries). One read of the
    exchange's ledger, one transaction."""
    model = storage.models["replay_ledger"]
    stale = [e for (symbol, data_type), stream_entries in entries_by_stream(storage, exchange).items()
             if (symbol, data_type) in streams for e in _covered_entries(stream_entries, covered(symbol, data_type))]
    if stale:
        with storage.write_transaction():
            for e in stale:
                model.delete().where((model.exchange == exchange) & (model.symbol == e["symbol"])
                                     & (model.data_type == e["data_type"]) & (model.start == e["start"])).execute()



def _covered_entries(stream_entries, covered):
    return [e for e in stream_entries if not subtract([(e["start"], e["end"])], covered)]


def held_back(stream_entries, now_us, anchored_at, reach):
    """Ranges of a stream not to ask for now, and the quiet tails due (``[(start, end, attempts)]``).

    ``reach`` is how far a request for the stream can claim now (the end of what is wanted); a request
    never crosses a UTC day, so a tail at the end of a finished day cannot reach further by waiting.
    """
    held, tails = [], []
    for e in stream_entries:
        if e["reason"] == "history_cached_empty":
            continue  # never held: its range is asked with a fresh filter set (see gapless.plan)
        if e["retry_at"] > now_us:
            if e["reason"] == "unproven_start" and not e["anchored"] and anchored_at(e["start"]):
                continue  # new evidence: the history before it is covered now
            if e["reason"] == "quiet_tail" and e["end"] >= e["asked_end"] and \
                    min(reach, floor_day(e["start"]) + DAY_US) > e["asked_end"]:
                continue  # a tail at the frontier: a request now reaches past where the last one ended
            held.append((e["start"], e["end"]))
        elif e["reason"] == "quiet_tail":
            tails.append((e["start"], e["end"], e["attempts"]))
    # a minute that a held range touches cannot be covered whole by asking again either
    return merge((floor_minute(a), ceil_minute(b)) for a, b in held), tails


class RequestMemory:
    """Replay requests the service made, so that the very same one is not made again sooner than the backoff.

    ``admit(request, now_us)`` is False when the same request (exchange, streams, from, to) was made
    ``k`` times already and the last time less than ``backoff(k)`` ago. Entries older than the backoff cap
    are forgotten.
    """

    def __init__(self):
        self._asked = {}  # key -> (times asked, last asked)

    @classmethod
    def restored(cls, storage, exchange):
        """The memory the last run of ``exchange`` kept in ``storage`` (a restart is no new evidence)."""
        memory = cls()
        text = storage.meta_value(cls._meta_key(exchange))
        try:
            rows = orjson.loads(text) if text is not None else []
        except orjson.JSONDecodeError:
            log.warning("%s: the remembered replay requests are unreadable; starting without them", exchange)
            rows = []
        for row in rows if isinstance(rows, list) else ():
            try:
                e, s, d, a, b, times, last = row
                memory._asked[(str(e), tuple(s), tuple(d), int(a), int(b))] = (int(times), int(last))
            except (TypeError, ValueError):
                continue  # a malformed row is forgotten, never fatal
        return memory

    def save(self, storage, exchange):
        """Keep the memory in ``storage`` for the next run (see :meth:`restored`)."""
        rows = [[e, list(s), list(d), a, b, times, last] for (e, s, d, a, b), (times, last) in self._asked.items()]
        storage.put_meta(self._meta_key(exchange), orjson.dumps(rows).decode())

    @staticmethod
    def _meta_key(exchange):
        return "replay_asked:%s" % exchange

    def admit(self, request, now_us):
        """True (and remembered) when the request may be made now."""
        for key, (_, last) in list(self._asked.items()):
            if now_us - last > BACKOFF_CAP_US:
                del self._asked[key]
        fresh = ("fresh",) if getattr(request, "fresh", False) else ()
        key = (request.exchange, tuple(request.symbols), tuple(request.data_types) + fresh, request.start,
               request.request_end)
        times, last = self._asked.get(key, (0, None))
        if last is not None and now_us - last < backoff(times):
            log.info("not asking again for %s: the same request was made %d time(s), last at %s (next after %s)",
                     request.describe(), times, iso(last), iso(last + backoff(times)))
            return False
        self._asked[key] = (times + 1, now_us)
        return True
