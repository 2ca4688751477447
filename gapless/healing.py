"""What history a healing pass asks for: the rule that keeps book-derived types cheap and gaps short.

Trades, bars and tickers are asked for everything replay lacks up to the history horizon, every pass:
their requests start where coverage ends, so each pass downloads only what is new.

Book-derived types (quotes, snapshots) can only be asked from 00:00 of the day (the day's initial book
snapshot), so every request downloads the day so far again. Per stream and day, a pass asks for them
only when it is worth it:

1. **cold**: nothing was asked for that day yet in this run of the service: everything history can
   deliver now (today's history at once);
2. **gap reached**: a missing run that has ended (live data or replay after it) lies wholly before the
   horizon: one request heals it; a gap still running at the horizon is asked at most every
   :data:`FRONTIER_REFRESH_US` (no live recording covers the present);
3. **upgrade**: minutes that only live data covers are upgraded to replay at most every
   :data:`UPGRADE_INTERVAL_US` (they are already served; this only makes them history);
4. **day over**: once the day is over, its remaining minutes once more;
5. **cached empty**: tardis-machine's cache was found holding minutes of the day empty for the stream's
   filter set (see :mod:`gapless.silence`): once, at once, with a fresh filter set.

So a cold start costs two from-00:00 requests per day (now, and when history reaches the live
recording), a steady state one an hour and one when the day is over. What the replay ledger holds back
(history outages, proven-empty tails) is not asked again without new evidence.
"""
import logging

from .datatypes import parse_data_type
from .intervals import mask_runs, subtract
from .timeutil import DAY_US, MINUTE_US, floor_day, iso

log = logging.getLogger(__name__)

UPGRADE_INTERVAL_US = 60 * MINUTE_US
FRONTIER_REFRESH_US = 15 * MINUTE_US


def _runs(sources, start, keep):
    """Maximal runs of minutes whose source is in ``keep``: ``[(start, end)]``."""
    return mask_runs([source in keep for source in sources], start, MINUTE_US)


class HealingPlanner:
    """Decides, pass by pass, what history to ask for (remembers when book days were last asked)."""

    def __init__(self, upgrade_interval_us=UPGRADE_INTERVAL_US, frontier_refresh_us=FRONTIER_REFRESH_US):
        self.upgrade_interval = upgrade_interval_us
        self.frontier_refresh = frontier_refresh_us
        self.asked = {}  # {(exchange, symbol, data_type, day): when a from-00:00 request was last planned}
        self.counts = {}  # {(exchange, symbol, data_type, day): from-00:00 requests planned}

    def wanted(self, sources_of, exchange, symbols, data_types, start, limit, now_us, held_of=None, end=None,
               cached_of=None):
        """``{(symbol, DataType): [(start, end)]}`` to download this pass.

        ``sources_of(symbol, data_type, a, b)`` gives the per-minute sources ('replay', 'live', 'missing')
        of ``[a, b)`` as the series decides them; ``held_of(symbol, data_type)`` the ranges the replay
        ledger holds back now (a history outage is a gap that asking again does not heal); ``end`` is the
        series window's end (what lies between the history horizon and it tells whether a gap has ended).
        ``cached_of(symbol, data_type)``: ``[(start, end, found at)]`` that tardis-machine's cache holds empty for
        the stream's filter set (the replay ledger's ``history_cached_empty``).
        """
        self._held_of = held_of or (lambda symbol, data_type: [])
        self._cached_of = cached_of or (lambda symbol, data_type: [])
        end = max(limit, end or limit)
        wanted = {}
        for symbol in symbols:
            for name in data_types:
                data_type = parse_data_type(name)
                if limit <= start:
                    continue
                if not data_type.book_derived:
                    wanted[(symbol, data_type)] = [(start, limit)]
                    continue
                ranges = []
                for day in range(floor_day(start), limit, DAY_US):
                    ranges += self._book_day(sources_of, exchange, symbol, data_type, day, start, limit, end,
                                             now_us)
                if ranges:
                    wanted[(symbol, data_type)] = ranges
        return wanted

    def next_reach(self, sources_of, symbols, data_types, start, limit, end, held_of=None):
        """The claim limit at which history will reach the next gap that has ended (None if no such gap).

        A pass planned for when the claim limit gets there heals it at once (e.g. the stretch between a
        cold start's history and the live recording).
        """
        held_of = held_of or (lambda symbol, data_type: [])
        reach = None
        for symbol in symbols:
            for name in data_types:
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
        key = (exchange, symbol, data_type.name, day)
        last = self.asked.get(key)
        missing = subtract(_runs(sources, a, ("missing",)), held)
        # a gap that has ended (something covers the minute after it) and that history reaches whole
        ended = [(x, y) for x, y in missing if x < b and y <= b and y < c]
        running = [(x, y) for x, y in missing if x < b and (y > b or y >= c)]
        found = [t for x, y, t in self._cached_of(symbol, data_type.name) if x < b and y > a]
        if b == day + DAY_US:
            why = "the day is over"
        elif last is None:
            why = "first pass: everything history has now"
        elif found and last <= max(found):
            why = "tardis-machine's cache holds minutes of it empty: asking with a fresh filter set"
        elif ended:
            why = "history reaches a whole gap"  # heal it, and upgrade the rest on the way
        elif running and now_us - last >= self.frontier_refresh:
            why = "a gap runs past the history horizon"
        elif now_us - last >= self.upgrade_interval:
            why = "upgrading live minutes to replay"
        else:
            return []
        self.asked[key] = now_us
        self.counts[key] = self.counts.get(key, 0) + 1
        log.info("%s %s %s: asking history from %s (%s)", exchange, symbol, data_type.name, iso(day), why)
        return not_replay
