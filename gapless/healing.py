"""What history a healing pass asks for: the rule that keeps book-derived types cheap and gaps short.

Trades, bars and tickers are asked for everything replay lacks up to the history horizon, every pass:
their requests start where coverage ends, so each pass downloads only what is new.

Book-derived types (quotes, snapshots; raw ``quote`` and sampled ``quote_1m``, ``book_snapshot_5_1s`` ...) can
only be asked from 00:00 of the day (the day's initial book snapshot), so every request downloads the day so far
again, and tardis-machine rebuilds the book from 00:00 on its side for it. Per stream and day, a pass asks for
them only when it is worth it, first rule that applies:

1. **day over**: once the day is over, its live minutes once; if minutes are still not replay after that (a run
   that failed or is still in flight elsewhere; a sampled stream's last minute, whose sample comes with the next
   day's first event: the ledger's quiet tail), again only after waits that double from the day's end, at least
   :data:`DAY_OVER_RETRY_US`, or at once for minutes found cached empty (rule 3);
2. **cold**: nothing was ever asked for that day (the first start): everything history can deliver now;
3. **cached empty**: tardis-machine's cache was found holding minutes of the day empty for the stream's
   filter set (see :mod:`gapless.silence`): once, at once, with a fresh filter set;
4. **gap reached**: a missing run that has ended (live data or replay after it) lies wholly before the
   horizon, and the day's last request did not reach its end: one request heals it (and upgrades the live
   minutes before it on the way); if it is still missing :data:`FRONTIER_REFRESH_US` after a request that
   reached it (a failed run), once more;
5. **frontier**: a gap still running at the horizon (no live recording covers the present), once history
   can fill at least a whole minute of it, at most every :data:`FRONTIER_REFRESH_US`;
6. **hourly upgrade**: minutes that only live data covers are upgraded to replay at most every
   :data:`UPGRADE_INTERVAL_US` — only with ``upgrade="hourly"`` (``GAPLESS_UPGRADE``), or for a stream whose
   replay and live minutes were found to disagree (``stream_status.disagreements`` > 0: evidence that its live
   minutes need history soon). By default (``daily``) live minutes are upgraded once, when the day is over
   (rule 1): they are already served, and proven equal to replay wherever both exist.

Sampled types (``quote_1m``, ``book_snapshot_5_1s`` ...) follow the same rules, with no hourly exemption. Their
lines are cheap (an hourly upgrade at hour h downloads 60·h lines of ``quote_1m`` per symbol), but the shape is the
same. Measured on the test double (``tests/bench/bench_upgrade.py``, a simulated day, a pass every 5 minutes):
hourly upgrades of ``quote_1m`` downloaded 18,961 lines against the day's 1,440 (13.2×; daily: 1,481, 1.03×), the
same ratio as raw ``quote`` (1,668,500 against 125,771; daily 129,299). And every from-00:00 request makes
tardis-machine rebuild the book from the day's raw changes whatever the sampling, so the server's side of an hourly
``quote_1m`` upgrade costs about what a raw quote's does, 24 times a day per symbol, for the default streams too.
``GAPLESS_UPGRADE=hourly`` or a reported disagreement brings the hourly cadence back.

So a day costs, per book-derived stream, one from-00:00 request when the service starts (and one more if its
history did not reach the live recording yet) and one when the day is over: about 1× the day's lines, against
about 13× with hourly upgrades (gaps aside: healing a real gap needs its own request). Each decision is kept in
the database (:mod:`gapless.healing_state`): a restart, a new ``Gapless`` object or a ``get_data_without_gap``
call beside a running service continues the same schedule instead of starting cold. What the replay ledger holds
back (history outages, proven-empty tails) is not asked again without new evidence.
"""
import logging

from .contract import clip_to_life
from .datatypes import parse_data_type
from .healing_state import HealingMemory
from .intervals import mask_runs, subtract
from .timeutil import DAY_US, MINUTE_US, floor_day, floor_minute, iso

log = logging.getLogger(__name__)

UPGRADE_MODES = ("daily", "hourly")  # GAPLESS_UPGRADE
UPGRADE_INTERVAL_US = 60 * MINUTE_US
FRONTIER_REFRESH_US = 15 * MINUTE_US
DAY_OVER_RETRY_US = 2 * MINUTE_US  # the replay ledger's first backoff (gapless.ledger.BACKOFF_BASE_US)


def _runs(sources, start, keep):
    """Maximal runs of minutes whose source is in ``keep``: ``[(start, end)]``."""
    return mask_runs([source in keep for source in sources], start, MINUTE_US)


class HealingPlanner:
    """Decides, pass by pass, what history to ask for; remembers when book days were last asked in ``memory``
    (a :class:`~gapless.healing_state.HealingMemory`: the database's, or one of the process)."""

    def __init__(self, memory=None, upgrade="daily", upgrade_interval_us=UPGRADE_INTERVAL_US,
                 frontier_refresh_us=FRONTIER_REFRESH_US):
        if upgrade not in UPGRADE_MODES:
            raise ValueError("upgrade must be one of %s, not %r" % (", ".join(UPGRADE_MODES), upgrade))
        self.memory = memory if memory is not None else HealingMemory()
        self.upgrade = upgrade
        self.upgrade_interval = upgrade_interval_us
        self.frontier_refresh = frontier_refresh_us

    def wanted(self, sources_of, exchange, symbols, data_types, start, limit, now_us, held_of=None, end=None,
               cached_of=None, disagrees=None, pairs=None):
        """``{(symbol, DataType): [(start, end)]}`` to download this pass.

        ``sources_of(symbol, data_type, a, b)`` gives the per-minute sources ('replay', 'live', 'missing')
        of ``[a, b)`` as the series decides them; ``held_of(symbol, data_type)`` the ranges the replay
        ledger holds back now (a history outage is a gap that asking again does not heal); ``end`` is the
        series window's end (what lies between the history horizon and it tells whether a gap has ended).
        ``cached_of(symbol, data_type)``: ``[(start, end, found at)]`` that tardis-machine's cache holds empty for
        the stream's filter set (the replay ledger's ``history_cached_empty``). ``disagrees(symbol, data_type)``:
        True when replay and live minutes of the stream were reported to disagree (rule 6). ``pairs``: exactly these
        ``(symbol, data_type)`` instead of every symbol x data type.
        """
        self._held_of = held_of or (lambda symbol, data_type: [])
        self._cached_of = cached_of or (lambda symbol, data_type: [])
        self._disagrees = disagrees or (lambda symbol, data_type: False)
        end = max(limit, end or limit)
        wanted = {}
        window_limit = limit
        for symbol, name in pairs or [(s, d) for s in symbols for d in data_types]:
            data_type = parse_data_type(name)
            _, limit = clip_to_life(exchange, symbol, start, window_limit)  # nothing after an option's expiration
            if limit <= start:
                continue
            if not data_type.book_derived:
                wanted[(symbol, data_type)] = [(start, limit)]
                continue
            ranges = []
            for day in range(floor_day(start), limit, DAY_US):
                ranges += self._book_day(sources_of, exchange, symbol, data_type, day, start, limit, end, now_us)
            if ranges:
                wanted[(symbol, data_type)] = ranges
        return wanted

    def next_reach(self, sources_of, symbols, data_types, start, limit, end, held_of=None, pairs=None):
        """The claim limit at which history will reach the next gap that has ended (None if no such gap).

        A pass planned for when the claim limit gets there heals it at once (e.g. the stretch between a
        cold start's history and the live recording).
        """
        held_of = held_of or (lambda symbol, data_type: [])
        reach = None
        for symbol, name in pairs or [(s, d) for s in symbols for d in data_types]:
            if end <= start:
                continue
            sources = sources_of(symbol, name, start, end)
            for x, y in subtract(_runs(sources, start, ("missing",)), held_of(symbol, name)):
                if limit < y < end:  # ended (something covers the minute after it), not reached yet
                    reach = y if reach is None else min(reach, y)
        return reach

    def _book_day(self, sources_of, exchange, symbol, data_type, day, start, limit, end, now_us):
        a, b = max(start, day), min(limit, day + DAY_US)
        if b <= a:
            return []
        c = min(end, day + DAY_US)
        sources = sources_of(symbol, data_type.name, a, c)
        held = self._held_of(symbol, data_type.name)
        not_replay = subtract(_runs(sources[:(b - a) // MINUTE_US], a, ("live", "missing")), held)
        if not not_replay:
            return []
        missing = subtract(_runs(sources, a, ("missing",)), held)
        found = [t for x, y, t in self._cached_of(symbol, data_type.name) if x < b and y > a]
        evidence = b < day + DAY_US and self.upgrade != "hourly" and self._disagrees(symbol, data_type.name)
        key = (exchange, symbol, data_type.name, day)
        # one short transaction: read when the day was last asked (by any process healing this database), decide,
        # write the decision; see HealingMemory.deciding for two processes deciding at the same moment
        with self.memory.deciding():
            last = self.memory.get(key)
            why = self._why(last, day, a, b, c, missing, found, evidence, now_us)
            if why is None:
                return []
            self.memory.asked(key, now_us, why, b)
        log.info("%s %s %s: asking history from %s (%s)", exchange, symbol, data_type.name, iso(day), _TEXT[why])
        return not_replay

    def _why(self, last, day, a, b, c, missing, found, evidence, now_us):
        """The reason (see :data:`gapless.healing_state.REASONS`) to ask the day from 00:00 now, or None."""
        since = None if last is None else now_us - last.asked_at
        day_end = day + DAY_US
        if b == day_end:
            if last is None or last.asked_at < day_end:
                return "day_over"
            if found and last.asked_at <= max(found):
                return "cached_empty"
            # asked since the day ended and minutes are still not replay (a run that failed or is still in flight
            # in another process, a quiet tail the ledger lets ask again past the day's end): again only after waits
            # doubling from the day's end, at least DAY_OVER_RETRY_US
            if since >= max(DAY_OVER_RETRY_US, last.asked_at - day_end):
                return "day_over"
            return None
        if last is None:
            return "cold"
        if found and last.asked_at <= max(found):
            return "cached_empty"
        # a gap that has ended (something covers the minute after it) and that history reaches whole: asked once
        # history reaches past it; again only after FRONTIER_REFRESH_US if the request that reached it did not heal
        # it (still in flight in another process, or failed)
        ended = [y for x, y in missing if x < b and y <= b and y < c]
        if any(y > last.asked_until for y in ended) or (ended and since >= self.frontier_refresh):
            return "gap_reached"
        # a gap running past the horizon, of which history can now fill at least a whole minute (a request that
        # reaches only into its first minute heals nothing: e.g. the newest minute of a quiet live stream)
        running = [(x, y) for x, y in missing if x < b and (y > b or y >= c)]
        if any(floor_minute(min(y, b)) - x >= MINUTE_US for x, y in running) and since >= self.frontier_refresh:
            return "frontier"
        if since >= self.upgrade_interval:
            if self.upgrade == "hourly":
                return "upgrade"
            if evidence:
                return "disagreement"
        return None


_TEXT = {"day_over": "the day is over", "cold": "first pass: everything history has now",
         "cached_empty": "tardis-machine's cache holds minutes of it empty: asking with a fresh filter set",
         "gap_reached": "history reaches a whole gap", "frontier": "a gap runs past the history horizon",
         "upgrade": "hourly upgrade of live minutes to replay",
         "disagreement": "replay and live disagree: upgrading its live minutes hourly"}
